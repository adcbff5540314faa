"""Turning user images into RGB uint8 arrays: layouts, bit depths, and (for bytes) safe decoding with limits."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np

from segany.errors import ImageTooLargeError, InvalidImageError


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any common array layout -> (H, W, 3) uint8 RGB, C-contiguous.

    Accepts (H, W) grayscale, (H, W, 1), (H, W, 3) RGB and (H, W, 4) RGBA (alpha dropped), in uint8, uint16
    (scaled by 1/257) or float in [0, 1]. Raises :class:`InvalidImageError` for anything else.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InvalidImageError(
            f"image must be HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), got shape {tuple(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"image has zero size: {tuple(image.shape)}")
    if image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        if not np.isfinite(image).all():
            raise InvalidImageError("float image contains NaN or infinite values")
        low, high = float(image.min()), float(image.max())
        if low < -0.5 or high > 1.5:  # 0..255 floats would all turn white; a resize's overshoot is clipped
            raise InvalidImageError(f"a float image must hold values in [0, 1], got {low:.4g}..{high:.4g}; pass "
                                    "0-255 values as uint8 (image.astype(np.uint8))")
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise InvalidImageError(f"image dtype must be uint8, uint16 or float in [0, 1], got {image.dtype}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


# ------------------------------------------------------------------------------------------------ bytes -> pixels

#: Container formats accepted from bytes (Pillow's format names; MPO is the multi-picture JPEG some cameras write).
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP")


@dataclass(frozen=True)
class ImageLimits:
    """What an uploaded image may be; checked from the header before any pixel is decoded.

    Attributes:
        max_bytes: size of the encoded file.
        max_pixels: width x height (the decompression-bomb guard: a 1 KB PNG can claim 100000 x 100000).
        max_side: longest side in pixels.
    """

    max_bytes: int = 48 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_side: int = 20_000


DEFAULT_LIMITS = ImageLimits()


def decode_image(data: bytes | bytearray | memoryview, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode image file bytes into (H, W, 3) uint8 RGB, upright, refusing what exceeds ``limits``.

    Order matters for safety: the byte size, then the dimensions from the header (Pillow opens lazily), are
    checked before the pixels are decoded, so a decompression bomb never allocates. EXIF orientation is applied,
    so (H, W) and every coordinate refer to the image as a viewer shows it. Grayscale, palette, RGBA/LA
    (alpha dropped), CMYK and 16-bit images are converted. Multi-frame files (TIFF, MPO) give their first frame.

    Raises:
        ImageTooLargeError: over ``limits``.
        InvalidImageError: empty, not an accepted format, truncated or corrupt, zero-sized.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    size = len(data)
    if size == 0:
        raise InvalidImageError("image is empty (0 bytes); send the file bytes of a JPEG, PNG, WebP, TIFF or BMP")
    if size > limits.max_bytes:
        raise ImageTooLargeError(f"image file is {size} bytes; at most {limits.max_bytes} bytes are accepted")
    try:
        image = Image.open(io.BytesIO(bytes(data)))
    except UnidentifiedImageError:
        dims = _png_header_size(data)
        if dims is not None and 0 in dims:  # Pillow refuses to identify these; say what is actually wrong
            raise InvalidImageError(f"image has zero size: {dims[0]}x{dims[1]} pixels (PNG header)") from None
        raise InvalidImageError(
            f"cannot identify the image format ({size} bytes, starting {bytes(data[:8])!r}); "
            f"accepted: {', '.join(ACCEPTED_FORMATS)}"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image dimensions refused before decoding: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InvalidImageError(f"image header is corrupt: {exc}") from None
    with image:
        if image.format not in ACCEPTED_FORMATS:
            raise InvalidImageError(
                f"image format {image.format} is not accepted; accepted: {', '.join(ACCEPTED_FORMATS)}"
            )
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImageError(f"image has zero size: {width}x{height} pixels")
        if width * height > limits.max_pixels or max(width, height) > limits.max_side:
            raise ImageTooLargeError(
                f"image is {width}x{height} = {width * height} pixels; at most {limits.max_pixels} pixels and "
                f"{limits.max_side} pixels per side are accepted (refused before decoding)"
            )
        try:
            image.load()
            upright = ImageOps.exif_transpose(image) or image
            return _pil_to_rgb(upright)
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
            raise InvalidImageError(f"{image.format} image data is truncated or corrupt: {exc}") from None


def _png_header_size(data) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, or None when ``data`` does not start like a PNG."""
    head = bytes(data[:24])
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def _pil_to_rgb(image) -> np.ndarray:
    """A loaded Pillow image of any mode -> (H, W, 3) uint8 RGB."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PNG/TIFF) opens as I;16 or I (int32): scale 0..65535 to 0..255.
        array = np.asarray(image)
        return as_rgb_uint8(np.clip(array, 0, 65535).astype(np.uint16))
    if mode == "F":
        array = np.asarray(image, dtype=np.float32)
        top = float(array.max()) if array.size else 1.0
        scale = 1.0 if top <= 1.0 else (255.0 if top <= 255.0 else 65535.0)
        return as_rgb_uint8(np.nan_to_num(array / scale, nan=0.0, posinf=1.0, neginf=0.0))
    if mode != "RGB":
        image = image.convert("RGBA" if mode in ("P", "PA") else "RGB").convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
