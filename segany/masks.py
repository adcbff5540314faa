"""Mask encodings: COCO RLE, PNG, polygons with holes, bounding boxes and areas.

Everything here takes and returns numpy arrays and plain Python values; nothing imports torch.

Frames and conventions used throughout:

* A mask is a ``bool`` array of shape ``(H, W)`` (a batch is ``(C, H, W)``), indexed ``mask[y, x]``, in
  the pixel frame of the image it belongs to (original pixels, unless the caller says otherwise). Integer and
  float arrays are accepted as input and read as "nonzero is foreground".
* COCO RLE (``{"size": [H, W], "counts": str}``) runs over the pixels in column-major (Fortran) order,
  starting with a run of background, and compresses the run lengths into the ASCII form of ``pycocotools``;
  ``counts`` is a ``str`` so the dict is JSON-ready. The uncompressed form keeps the run lengths themselves
  (:func:`rle_runs_batch`: ``uint32`` arrays, the wire form for clients that decode to arrays).
* Polygon vertices are ``float32`` ``(x, y)`` in OpenCV's pixel-centre frame: the vertex ``(x, y)`` is the
  centre of pixel ``mask[y, x]``, and a boundary runs through the outermost foreground pixels.
* Boxes follow the public SAM automatic-mask-generator convention: ``x1, y1`` are the inclusive indices of
  the last foreground column/row, so ``w = x1 - x0`` (a full 640x480 mask gives ``[0, 0, 639, 479]``); an
  empty mask gives an all-zero box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from segany.errors import InvalidInputError

__all__ = [
    "Polygon",
    "decode_index_png",
    "decode_png",
    "decode_rle",
    "encode_index_png",
    "encode_png",
    "encode_rle",
    "encode_rle_batch",
    "mask_area",
    "rle_runs_batch",
    "mask_to_bbox_xywh",
    "mask_to_polygons",
    "masks_to_boxes_xyxy",
    "polygons_to_coco",
    "polygons_to_mask",
]

#: zlib level for mask PNGs. 1-bit masks compress ~30% better at 9, but take twice as long to write
#: (75 ms vs 35 ms for a 12 MP mask here) for an output that is already a few KB.
PNG_COMPRESSION = 6


def _as_mask(mask: np.ndarray, ndim: int, what: str = "mask") -> np.ndarray:
    """``mask`` as a bool array of rank ``ndim`` (nonzero is foreground); InvalidInputError otherwise."""
    array = np.asarray(mask)
    if array.ndim != ndim:
        shape = "(H, W)" if ndim == 2 else "(N, H, W)"
        raise InvalidInputError(f"{what} must have shape {shape}, got an array of shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InvalidInputError(f"{what} must be a bool or numeric array, got dtype {array.dtype}")
    return array != 0


# ------------------------------------------------------------------------------------------------- COCO RLE


def encode_rle(mask: np.ndarray) -> dict:
    """Encode one mask as COCO compressed RLE.

    Args:
        mask: ``(H, W)`` bool (or numeric, nonzero = foreground).

    Returns:
        ``{"size": [H, W], "counts": str}``: run lengths in column-major order, first run background,
        compressed with pycocotools' ASCII scheme. Decodable by ``pycocotools.mask.decode`` and
        :func:`decode_rle`.
    """
    return encode_rle_batch(_as_mask(mask, 2)[None])[0]


def encode_rle_batch(masks: np.ndarray) -> list[dict]:
    """Encode ``C`` masks as COCO compressed RLE with one pycocotools call.

    Args:
        masks: ``(C, H, W)`` bool (or numeric, nonzero = foreground).

    Returns:
        ``C`` dicts as from :func:`encode_rle`, in order.
    """
    m = _as_mask(masks, 3, "masks")
    count, height, width = m.shape
    if count == 0:
        return []
    # pycocotools wants (H, W, C) in Fortran order, i.e. each mask transposed, one after another.
    stacked = _column_major(m).transpose(2, 1, 0)  # (H, W, C), Fortran-contiguous: no copy below
    return [
        {"size": [int(height), int(width)], "counts": r["counts"].decode("ascii")} for r in coco_mask.encode(stacked)
    ]


def rle_runs_batch(masks: np.ndarray) -> list[np.ndarray]:
    """The uncompressed COCO RLE of ``C`` masks: their run lengths, without the ASCII compression.

    Args:
        masks: ``(C, H, W)`` bool (or numeric, nonzero = foreground).

    Returns:
        ``C`` ``uint32`` arrays of run lengths, column-major, first run background (``0`` when the first pixel
        is foreground); ``{"size": [H, W], "counts": runs}`` is a valid input of :func:`decode_rle`. Finding
        the runs in numpy beats pycocotools' compressed encoder on noisy masks (2.8 vs 3.9 ms for 270k runs
        in a 1200x1800 mask), and decoding skips the string parse; the runs take 3-4x the bytes of the string.

    Raises:
        InvalidInputError: masks of more than 2**32 - 1 pixels (a run might not fit in uint32).
    """
    m = _as_mask(masks, 3, "masks")
    count, height, width = m.shape
    pixels = height * width
    if pixels > np.iinfo(np.uint32).max:
        raise InvalidInputError(f"masks of {height}x{width} pixels are too large for uint32 run lengths")
    if pixels == 0:
        return [np.zeros(0, np.uint32) for _ in range(count)]
    edges = np.empty(pixels + 1, bool)  # edges[i]: a run starts at pixel i (pixels = the end of the last run)
    edges[-1] = True
    out = []
    for flat in _column_major(m).reshape(count, pixels):
        edges[0] = flat[0] != 0  # a foreground first pixel ends an empty background run at 0
        np.not_equal(flat[1:], flat[:-1], out=edges[1:pixels])
        out.append(np.diff(np.flatnonzero(edges), prepend=0).astype(np.uint32))
    return out


def _column_major(m: np.ndarray) -> np.ndarray:
    """(C, H, W) bool -> (C, W, H) uint8: each mask's pixels in column-major (COCO) order. OpenCV's blocked
    transpose writes this several times faster than numpy's strided copy (np.asfortranarray)."""
    count, height, width = m.shape
    columns = np.empty((count, width, height), np.uint8)
    if height and width:
        for c in range(count):
            cv2.transpose(np.ascontiguousarray(m[c]).view(np.uint8), columns[c])
    return columns


def decode_rle(rle: Mapping) -> np.ndarray:
    """Decode a COCO RLE into a ``(H, W)`` bool mask.

    Accepts the compressed form (``counts`` as ``str`` or ``bytes``) and the uncompressed form (``counts``
    as a list or 1-D integer array of run lengths, column-major, first run background). Runs that do not add
    up to ``H * W`` are rejected with InvalidInputError before anything is decoded.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise InvalidInputError("an RLE must be a mapping with 'size' [H, W] and 'counts'")
    size = rle["size"]
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise InvalidInputError(f"RLE 'size' must be [H, W] with two integers, got {size!r}") from None
    if height < 0 or width < 0:
        raise InvalidInputError(f"RLE 'size' must be non-negative, got {[height, width]}")
    counts = rle["counts"]
    if isinstance(counts, str):
        if not counts.isascii():
            raise InvalidInputError("RLE 'counts' string must be ASCII (pycocotools' compressed form)")
        counts = counts.encode("ascii")
    if isinstance(counts, bytes):
        runs = _rle_string_runs(counts, height * width)
    elif isinstance(counts, np.ndarray) and counts.ndim == 1 and np.issubdtype(counts.dtype, np.integer):
        runs = counts.astype(np.int64)  # checked below, like a list (a uint64 beyond int64 wraps negative)
    elif isinstance(counts, (list, tuple, np.ndarray)):
        try:
            runs = np.array([_whole(c) for c in counts], np.int64)
        except (TypeError, ValueError, OverflowError):
            raise InvalidInputError("uncompressed RLE 'counts' must be a list of integers") from None
    else:
        kind = type(counts).__name__
        raise InvalidInputError(f"RLE 'counts' must be a str, bytes or a list of ints, got {kind}")
    # Untrusted input: the runs must tile the image exactly before anything is laid out.
    if runs.size and (runs.min() < 0 or runs.max() > height * width) or int(runs.sum()) != height * width:
        raise InvalidInputError(
            f"RLE counts must be non-negative run lengths summing to H*W = {height * width}, "
            f"got {runs.size} runs summing to {int(runs.sum())}"
        )
    if height == 0 or width == 0:
        return np.zeros((height, width), dtype=bool)
    # The runs are known and checked: lay them out directly (several times faster than pycocotools' byte loop).
    values = np.zeros(runs.size, np.uint8)
    values[1::2] = 1  # runs alternate background, foreground, ...
    columns = np.repeat(values, runs).reshape(width, height)  # column-major pixels
    return cv2.transpose(columns).view(bool)  # OpenCV's blocked transpose, several times numpy's strided copy


def _whole(value) -> int:
    """``value`` as an int when it is a whole number (3, 3.0, np.int32(3)); ValueError for 1.9, "3" or NaN."""
    whole = int(value)
    if whole != value:
        raise ValueError(f"{value!r} is not a whole number")
    return whole


def _rle_string_runs(raw: bytes, limit: int) -> np.ndarray:
    """Run lengths (int64) of a compressed COCO RLE string, for validation; vectorised.

    Each run is stored as 5-bit groups, least significant first, in characters ``48 + group`` with bit 0x20
    meaning "more groups follow" and bit 0x10 of the last group the sign; from the fourth run on, the value is
    stored as a difference to the run two places earlier. Stored values beyond ``limit`` (the pixel count) in
    magnitude are refused before the differences are summed, so the sums cannot overflow.
    """
    codes = np.frombuffer(raw, np.uint8)
    if codes.size == 0:
        return np.zeros(0, np.int64)
    if codes.min() < 48 or codes.max() >= 112:
        bad = np.flatnonzero((codes < 48) | (codes >= 112))
        raise InvalidInputError(f"RLE counts string holds a character outside '0'..'o': {chr(raw[bad[0]])!r}")
    codes = codes - np.uint8(48)
    ends = np.flatnonzero((codes & 0x20) == 0)  # the last group of each value
    if ends.size == 0 or ends[-1] != codes.size - 1:
        raise InvalidInputError("RLE counts string is truncated in the middle of a run")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    groups = ends - starts + 1
    most = int(groups.max())
    if most > 10:
        raise InvalidInputError("RLE counts string holds a run longer than 50 bits")
    # Group k of every value that has one, k at a time: runs are mostly 1-3 groups, so this touches each
    # character once (with one index array per k) instead of expanding per-character positions.
    values = (codes[starts] & 0x1F).astype(np.int64)
    for k in range(1, most):
        longer = np.flatnonzero(groups > k)
        values[longer] |= (codes[starts[longer] + k] & 0x1F).astype(np.int64) << (5 * k)
    negative = np.flatnonzero(codes[ends] & 0x10)
    values[negative] -= np.left_shift(1, 5 * groups[negative])
    if np.abs(values).max() > limit:
        raise InvalidInputError(f"RLE counts hold a run or difference beyond H*W = {limit}")
    values[1::2] = np.cumsum(values[1::2])  # runs 3, 5, ... add the run two before; so do 4, 6, ...
    values[2::2] = np.cumsum(values[2::2])
    return values


# ------------------------------------------------------------------------------------------------------ PNG


def encode_png(mask: np.ndarray, compression: int = PNG_COMPRESSION) -> bytes:
    """Encode one mask as a 1-bit grayscale PNG (decoders read it as 0/255 8-bit).

    Args:
        mask: ``(H, W)`` bool (or numeric, nonzero = foreground); ``H, W >= 1``.
        compression: zlib level 0-9.
    """
    m = _as_mask(mask, 2)
    if m.size == 0:
        raise InvalidInputError(f"cannot write a PNG of an empty mask of shape {m.shape}")
    params = [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(m).view(np.uint8), params)
    if not ok:  # pragma: no cover - OpenCV only fails on shapes rejected above
        raise InvalidInputError(f"OpenCV could not encode a mask of shape {m.shape} as PNG")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """Decode a mask PNG (any bit depth; colour becomes gray) into ``(H, W)`` bool, nonzero = foreground."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise InvalidInputError(f"not a decodable PNG ({len(data)} bytes)")
    return image != 0


def encode_index_png(
    masks: np.ndarray, order: Sequence[int] | None = None, compression: int = PNG_COMPRESSION
) -> bytes:
    """Paint ``N`` masks into one label image PNG: 0 is background, ``i + 1`` marks object ``i``.

    The image is single-channel grayscale holding the label values directly (8-bit for up to 255 objects,
    16-bit up to 65535), so OpenCV, Pillow and numpy readers get the labels back without a palette lookup.

    Args:
        masks: ``(N, H, W)`` bool (or numeric, nonzero = foreground).
        order: object indices in painting order; a later object paints over an earlier one where they overlap.
            Defaults to ``0 .. N-1``. Objects left out of ``order`` are not painted; an index may appear once.
            A common choice is by decreasing area so small objects stay visible.
        compression: zlib level 0-9.
    """
    m = _as_mask(masks, 3, "masks")
    count, height, width = m.shape
    if height == 0 or width == 0:
        raise InvalidInputError(f"cannot write a PNG of empty masks of shape {m.shape}")
    if count > 65535:
        raise InvalidInputError(f"an index PNG holds at most 65535 objects, got {count}")
    if order is None:
        paint = list(range(count))
    else:
        paint = [int(i) for i in order]
        if any(i < 0 or i >= count for i in paint) or len(set(paint)) != len(paint):
            raise InvalidInputError(f"order must list distinct object indices in [0, {count}), got {list(order)}")
    labels = np.zeros((height, width), dtype=np.uint8 if count <= 255 else np.uint16)
    for i in paint:
        labels[m[i]] = i + 1
    ok, buf = cv2.imencode(".png", labels, [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:  # pragma: no cover
        raise InvalidInputError(f"OpenCV could not encode a label image of shape {labels.shape} as PNG")
    return buf.tobytes()


def decode_index_png(data: bytes) -> np.ndarray:
    """Read a label PNG from :func:`encode_index_png` back into ``(H, W)`` integer labels, 0 = background."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InvalidInputError(f"not a decodable PNG ({len(data)} bytes)")
    if image.ndim != 2:
        raise InvalidInputError(f"a label PNG must be single-channel, got shape {image.shape}")
    return image


# ----------------------------------------------------------------------------------------------------
# polygons


@dataclass(frozen=True)
class Polygon:
    """One connected foreground region: its outer boundary and the boundaries of its holes.

    Attributes:
        exterior: ``(K, 2)`` float32 ``(x, y)`` vertices, pixel-centre frame (see module docstring), closed
            implicitly (the last vertex connects to the first).
        holes: one ``(K_i, 2)`` float32 array per hole, same frame. A hole's ring runs through the foreground
            pixels that border the hole, so those pixels belong to the region.
    """

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)


def _ring(points: np.ndarray, tolerance: float) -> np.ndarray:
    if tolerance > 0 and len(points) > 3:
        points = cv2.approxPolyDP(points, float(tolerance), closed=True)
    return points.reshape(-1, 2).astype(np.float32)


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0) -> list[Polygon]:
    """Trace the regions of a mask as polygons with holes.

    Uses ``cv2.findContours`` with ``RETR_CCOMP``: each outer boundary becomes a :class:`Polygon` and the
    holes directly inside it become its ``holes``. A region inside a hole (an island) is its own Polygon.
    Regions are 8-connected.

    Args:
        mask: ``(H, W)`` bool (or numeric, nonzero = foreground).
        tolerance: simplification in pixels. ``0`` keeps every corner (only collinear runs are merged, which
            loses nothing): :func:`polygons_to_mask` then gives back the mask exactly (the tests check this on
            random masks). ``> 0`` runs Douglas-Peucker (``cv2.approxPolyDP``) on every ring: no vertex of the
            exact ring lies farther than ``tolerance`` pixels from the simplified ring, so pixels change only
            within about that distance of the boundary. For a ring ~160 px across, ``1.0`` keeps a sixth of
            the vertices at an IoU of ~0.99 and ``0.5`` keeps half at ~0.996.

    Returns:
        Polygons in OpenCV's tracing order (top to bottom). Single pixels and one-pixel lines give rings of
        one or two vertices; they are kept so that the round trip is faithful (see :func:`polygons_to_coco`).
    """
    m = _as_mask(mask, 2)
    if tolerance < 0 or not np.isfinite(tolerance):
        raise InvalidInputError(f"tolerance must be a finite number of pixels >= 0, got {tolerance}")
    if m.size == 0 or not m.any():
        return []
    image = np.ascontiguousarray(m).view(np.uint8)
    contours, hierarchy = cv2.findContours(image, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    links = hierarchy[0]  # per contour: [next, previous, first_child, parent]
    polygons = []
    for i, contour in enumerate(contours):
        if links[i][3] != -1:
            continue  # a hole; collected from its parent below
        holes = []
        child = links[i][2]
        while child != -1:
            holes.append(_ring(contours[child], tolerance))
            child = links[child][0]
        polygons.append(Polygon(_ring(contour, tolerance), holes))
    return polygons


def _pixel_ring(points: np.ndarray) -> np.ndarray:
    ring = np.asarray(points, dtype=np.float64)
    if ring.ndim != 2 or ring.shape[1] != 2 or not np.isfinite(ring).all():
        raise InvalidInputError(f"a polygon ring must be a finite (K, 2) array of (x, y), got shape {ring.shape}")
    return np.round(ring).astype(np.int32).reshape(-1, 1, 2)


def polygons_to_mask(polygons: Sequence[Polygon], size: tuple[int, int]) -> np.ndarray:
    """Rasterise polygons with holes into a ``(H, W)`` bool mask.

    The mask is the union over polygons of (exterior filled, boundary included) minus (hole interiors); a
    hole's own ring stays foreground, matching how :func:`mask_to_polygons` traces holes. Vertices are
    rounded to the nearest pixel centre; parts outside the image are clipped.

    Args:
        polygons: as from :func:`mask_to_polygons` (pixel-centre frame).
        size: ``(H, W)`` of the output.
    """
    height, width = (int(s) for s in size)
    if height < 0 or width < 0:
        raise InvalidInputError(f"size must be (H, W) >= 0, got {size}")
    out = np.zeros((height, width), dtype=np.uint8)
    if height == 0 or width == 0:
        return out.astype(bool)
    for polygon in polygons:
        exterior = _pixel_ring(polygon.exterior)
        holes = [_pixel_ring(h) for h in polygon.holes]
        if len(exterior) == 0:
            continue
        # Draw each polygon on its own canvas over its bounding box, then OR it in: carving this polygon's
        # holes must not erase an island (another polygon) that lies inside them.
        x0, y0 = np.maximum(exterior.min(axis=(0, 1)), 0)
        x1, y1 = np.minimum(exterior.max(axis=(0, 1)), [width - 1, height - 1])
        if x0 > x1 or y0 > y1:
            continue
        origin = np.array([x0, y0], dtype=np.int32)
        canvas = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
        cv2.fillPoly(canvas, [exterior - origin], 1)
        cv2.polylines(canvas, [exterior - origin], True, 1)
        if holes:
            local = [h - origin for h in holes if len(h)]
            cv2.fillPoly(canvas, local, 0)
            cv2.polylines(canvas, local, True, 1)
        out[y0 : y1 + 1, x0 : x1 + 1] |= canvas
    return out.astype(bool)


def polygons_to_coco(polygons: Sequence[Polygon]) -> list[list[float]]:
    """Flatten polygons into COCO's ``segmentation`` list: ``[[x0, y0, x1, y1, ...], ...]``.

    COCO polygons have no notion of holes: every exterior and every hole becomes a separate ring, and COCO
    tools (pycocotools ``frPyObjects`` + ``merge``) union them, so holes come back filled. Use RLE where holes
    matter.
    Rings with fewer than 3 vertices (single pixels, one-pixel lines) are dropped because COCO tools misread
    them (pycocotools takes a 4-number list for a box). Coordinates stay in the pixel-centre frame; COCO
    rasterisers put the boundary on pixel edges, so a mask drawn from these rings loses about half a pixel
    along its boundary.
    """
    rings: list[list[float]] = []
    for polygon in polygons:
        for ring in [polygon.exterior, *polygon.holes]:
            points = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
            if len(points) >= 3:
                rings.append([float(v) for v in points.ravel()])
    return rings


# ------------------------------------------------------------------------------------------ boxes and areas


def masks_to_boxes_xyxy(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of ``C`` masks, SAM convention (inclusive last column/row).

    Args:
        masks: ``(C, H, W)`` bool (or numeric, nonzero = foreground).

    Returns:
        ``(C, 4)`` int64 ``[x0, y0, x1, y1]`` in the masks' pixel frame; ``x1``/``y1`` are the indices of the
        last foreground column/row. Empty masks give ``[0, 0, 0, 0]``.
    """
    m = _as_mask(masks, 3, "masks")
    count, height, width = m.shape
    boxes = np.zeros((count, 4), dtype=np.int64)
    if count == 0 or height == 0 or width == 0:
        return boxes
    rows = m.any(axis=2)  # (C, H)
    cols = m.any(axis=1)  # (C, W)
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = width - 1 - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = height - 1 - rows[:, ::-1].argmax(axis=1)
    boxes[~rows.any(axis=1)] = 0
    return boxes


def mask_to_bbox_xywh(mask: np.ndarray) -> list[int]:
    """Tight box of one mask as ``[x, y, w, h]`` with SAM's ``w = x1 - x0`` (inclusive edges).

    A full 640x480 mask gives ``[0, 0, 639, 479]``; a single pixel at (x, y) gives ``[x, y, 0, 0]``; an empty
    mask gives ``[0, 0, 0, 0]``. (COCO's own ``toBbox`` counts pixels instead: ``w = x1 - x0 + 1``.)
    """
    m = _as_mask(mask, 2)
    x0, y0, x1, y1 = (int(v) for v in masks_to_boxes_xyxy(m[None])[0])
    return [x0, y0, x1 - x0, y1 - y0]


def mask_area(mask: np.ndarray) -> int | np.ndarray:
    """Foreground pixel count: an ``int`` for ``(H, W)``, an int64 ``(C,)`` array for ``(C, H, W)``."""
    array = np.asarray(mask)
    if array.ndim not in (2, 3):
        raise InvalidInputError(f"mask must have shape (H, W) or (C, H, W), got {array.shape}")
    m = _as_mask(array, array.ndim)
    if m.ndim == 2:
        return int(np.count_nonzero(m))
    # One whole-array count per mask: numpy's counting with ``axis=`` is a generic reduction, about 6x slower
    # (3.6 vs 0.6 ms for three 1200x1800 masks).
    return np.fromiter((np.count_nonzero(plane) for plane in m), np.int64, len(m))
