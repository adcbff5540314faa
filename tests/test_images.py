"""decode_image: limits checked before decoding, EXIF orientation, mode conversions, precise errors."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from segany.errors import ImageTooLargeError, InvalidImageError
from segany.images import ImageLimits, decode_image


def encode(array_or_image, fmt: str = "PNG", **kwargs) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int, rows: int = 1) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (8-bit gray) but that carries only ``rows`` rows of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (rows * (width + 1)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


RGB = (np.arange(24 * 32 * 3) % 251).astype(np.uint8).reshape(24, 32, 3)


def test_rgb_png_round_trips_exactly():
    out = decode_image(encode(RGB))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF", "BMP"])
def test_accepted_formats(fmt):
    out = decode_image(encode(RGB, fmt))
    assert out.shape == (24, 32, 3)
    assert np.abs(out.astype(int) - RGB).mean() < 20  # lossy formats: close, not equal


@pytest.mark.parametrize("orientation, upright", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
                                                   (8, lambda a: np.rot90(a, 1)), (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(orientation, upright):
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(encode(RGB, "PNG", exif=exif.tobytes()))
    np.testing.assert_array_equal(out, upright(RGB))


def test_exif_rotated_jpeg_is_upright():
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(RGB, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape == (32, 24, 3)


def test_grayscale_and_palette_and_rgba():
    gray = RGB[..., 0]
    np.testing.assert_array_equal(decode_image(encode(gray)), np.repeat(gray[..., None], 3, axis=2))
    rgba = np.concatenate([RGB, np.full((24, 32, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(decode_image(encode(rgba)), RGB)  # alpha dropped, colour kept
    palette = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert decode_image(encode(palette)).shape == (24, 32, 3)
    la = Image.fromarray(gray).convert("LA")
    assert decode_image(encode(la)).shape == (24, 32, 3)


def test_16_bit_grayscale_is_scaled():
    deep = (np.linspace(0, 65535, 20 * 30)).astype(np.uint16).reshape(20, 30)
    out = decode_image(encode(deep))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    np.testing.assert_allclose(out[..., 0], deep / 257.0, atol=1)


def test_cmyk_jpeg_is_converted():
    cmyk = Image.fromarray(RGB).convert("CMYK")
    out = decode_image(encode(cmyk, "JPEG", quality=95))
    assert out.shape == (24, 32, 3)
    assert np.abs(out.astype(int) - RGB).mean() < 25


def test_empty_bytes():
    with pytest.raises(InvalidImageError, match=r"image is empty \(0 bytes\)"):
        decode_image(b"")


def test_zero_width_header():
    with pytest.raises(InvalidImageError, match=r"image has zero size: 0x10 pixels"):
        decode_image(png_header_only(0, 10))


def test_not_an_image():
    with pytest.raises(InvalidImageError, match="cannot identify the image format.*accepted: JPEG"):
        decode_image(b"hello, this is not an image at all")


def test_unaccepted_format():
    with pytest.raises(InvalidImageError, match="format GIF is not accepted"):
        decode_image(encode(RGB, "GIF"))


def test_truncated_png_and_jpeg():
    for fmt in ("PNG", "JPEG"):
        data = encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), fmt)
        with pytest.raises(InvalidImageError, match="truncated or corrupt"):
            decode_image(data[: len(data) // 2])


def test_corrupt_png_data():
    data = bytearray(encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    data[60:80] = b"\xff" * 20  # inside IDAT
    with pytest.raises(InvalidImageError):
        decode_image(bytes(data))


def test_decompression_bomb_refused_before_decoding():
    bomb = png_header_only(50_000, 50_000)  # a few hundred bytes claiming 2.5 gigapixels
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLargeError):
        decode_image(bomb)
    limits = ImageLimits(max_bytes=1 << 20, max_pixels=1_000_000, max_side=4000)
    with pytest.raises(ImageTooLargeError, match=r"2000x2000 = 4000000 pixels; at most 1000000 pixels"):
        decode_image(png_header_only(2000, 2000), limits)
    with pytest.raises(ImageTooLargeError, match="5000x10 = 50000 pixels; at most 1000000 pixels and 4000 pixels per"):
        decode_image(png_header_only(5000, 10), limits)


def test_byte_limit():
    data = encode(RGB)
    with pytest.raises(ImageTooLargeError, match=f"image file is {len(data)} bytes; at most 100 bytes"):
        decode_image(data, ImageLimits(max_bytes=100))
