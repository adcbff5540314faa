"""Automatic mask generation ("segment everything"): :class:`AutomaticMaskGenerator` in ``generator.py``, its
geometry and mask helpers (grids, crops, NMS, cleanup, RLE) in ``ops.py``. See ``generator.py`` for what differs
from the public generator and why the records are the same."""

from segany.everything.generator import (
    DECODER_CHUNK,
    OUTPUT_MODES,
    UPSCALE_BUDGET_BYTES,
    AutomaticMaskGenerator,
    CropEmbeddings,
    EverythingSettings,
    decode_in_chunks,
)
from segany.everything.ops import (
    CROP_EDGE_ATOL,
    box_nms,
    build_all_layer_point_grids,
    build_point_grid,
    generate_crop_boxes,
    near_crop_edge,
    remove_small_regions,
    stability_score,
    uncompressed_rle,
)

__all__ = [
    "CROP_EDGE_ATOL",
    "DECODER_CHUNK",
    "OUTPUT_MODES",
    "UPSCALE_BUDGET_BYTES",
    "AutomaticMaskGenerator",
    "CropEmbeddings",
    "EverythingSettings",
    "box_nms",
    "build_all_layer_point_grids",
    "build_point_grid",
    "decode_in_chunks",
    "generate_crop_boxes",
    "near_crop_edge",
    "remove_small_regions",
    "stability_score",
    "uncompressed_rle",
]
