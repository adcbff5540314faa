"""Cache keys: what identifies an embedding, hashed into one hex string.

An embedding is determined by the image bytes, the weights that encoded them, the preprocessing and, for
crop-level encodes, the crop rectangle. The server computes the key from those parts; a client never picks
one, so two different images cannot share a key unless sha256 collides.
"""

from __future__ import annotations

import hashlib
import operator
import re

from segany.errors import InvalidInputError

#: Bumped when the key encoding changes, so old disk and Redis entries are simply never hit again.
KEY_VERSION = b"segany-embedding-key-v1"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Lowercase hex sha256 of ``data`` (64 characters)."""
    return hashlib.sha256(data).hexdigest()


def cache_key(
    image_sha256: str,
    model_fingerprint: str,
    preprocess: str,
    crop: tuple[int, int, int, int] | None = None,
) -> str:
    """Key of the embedding of one image (or one crop of it) under one model and preprocessing.

    Args:
        image_sha256: hex sha256 of the image file bytes as uploaded (:func:`sha256_bytes`); case-insensitive.
        model_fingerprint: identifies variant and weights (``models.fingerprint``).
        preprocess: preprocessing version (``embedding.PREPROCESS_VERSION``).
        crop: ``(x0, y0, x1, y1)`` in original image pixels, exclusive ``x1``/``y1``, or ``None`` for the
            whole image.

    Returns:
        Lowercase hex sha256 (64 characters) over a length-prefixed encoding of every part, so no two
        different tuples of parts encode alike (``("ab", "c")`` vs ``("a", "bc")``, crop vs no crop).
    """
    if not isinstance(image_sha256, str) or not _SHA256_HEX.fullmatch(image_sha256.lower()):
        raise InvalidInputError(f"image_sha256 must be 64 hex characters, got {image_sha256!r}")
    for name, value in (("model_fingerprint", model_fingerprint), ("preprocess", preprocess)):
        if not isinstance(value, str) or not value:
            raise InvalidInputError(f"{name} must be a non-empty string, got {value!r}")
    if crop is None:
        crop_part = b"full"
    else:
        try:
            x0, y0, x1, y1 = (operator.index(v) for v in crop)
        except (TypeError, ValueError):
            raise InvalidInputError(f"crop must be four integers (x0, y0, x1, y1), got {crop!r}") from None
        if not 0 <= x0 < x1 or not 0 <= y0 < y1:
            raise InvalidInputError(f"crop must satisfy 0 <= x0 < x1 and 0 <= y0 < y1, got {(x0, y0, x1, y1)}")
        crop_part = f"crop:{x0},{y0},{x1},{y1}".encode()
    digest = hashlib.sha256(KEY_VERSION)
    for part in (image_sha256.lower().encode(), model_fingerprint.encode(), preprocess.encode(), crop_part):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()
