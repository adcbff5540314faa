"""Turning user images into RGB uint8 arrays: layouts, bit depths, and (for bytes) safe decoding with limits."""

from __future__ import annotations

import numpy as np

from segany.errors import InvalidImageError


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
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise InvalidImageError(f"image dtype must be uint8, uint16 or float in [0, 1], got {image.dtype}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)
