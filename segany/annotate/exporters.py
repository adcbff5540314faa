"""Writers for labelled images: COCO JSON, YOLO-seg txt, PNG masks, overlay previews.

A labelled image is a *record* (plain JSON, see :func:`make_record`): its name, size and objects, each object with a
COCO compressed RLE, a COCO box, an area, a score and its category index. Per-image files are written from the
record (plus the pixels for overlays); the COCO file is assembled from all records.

Conventions:
* COCO ``bbox`` is pycocotools' ``toBbox`` of the mask: [x, y, w, h] with ``w`` counting pixels (the COCO
  convention; SAM's records use inclusive edges instead, see ``segany.everything``).
* ``segmentation`` is always the RLE (exact, keeps holes). ``polygons=True`` adds ``"polygons"``: one entry per
  connected region, ``{"exterior": [x0, y0, ...], "holes": [[...], ...]}`` in pixel-centre coordinates.
* YOLO-seg: ``<class> x1 y1 x2 y2 ...`` normalised by width/height, one line per object; a polygon cannot hold
  holes or several parts, so the largest region's outer boundary is written (holes filled, small parts dropped).
* PNG ``index``: one single-channel PNG per image, 0 background, value i+1 for object i of the record (later objects
  paint over earlier ones; 16-bit above 255 objects). PNG ``objects``: one 1-bit PNG per object.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from segany.annotate.inputs import name_stem
from segany.annotate.journal import atomic_write
from segany.annotate.sources import Category
from segany.masks import decode_rle, encode_index_png, encode_png, mask_to_polygons

FORMATS = ("coco", "yolo", "png")
PNG_MODES = ("index", "objects")
COCO_FILE = "annotations.json"


def make_record(name: str, size: tuple[int, int], objects: list[dict]) -> dict:
    """A record: ``objects`` are dicts with ``segmentation`` (COCO RLE, str counts), ``category`` (index into the
    category list), ``score`` and optional ``extra`` (copied into the COCO annotation)."""
    out = []
    for obj in objects:
        rle = obj["segmentation"]
        compressed = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        entry = {
            "category": int(obj["category"]),
            "segmentation": rle,
            "area": int(coco_mask.area(compressed)),
            "bbox": [float(v) for v in coco_mask.toBbox(compressed)],
            "score": float(obj["score"]),
        }
        if obj.get("extra"):
            entry["extra"] = obj["extra"]
        out.append(entry)
    return {"name": name, "height": int(size[0]), "width": int(size[1]), "objects": out}


class Exporter:
    """Writes the per-image files of the chosen formats and assembles the COCO file.

    Args:
        out_dir: output folder.
        formats: subset of ``FORMATS``.
        categories: the category table (COCO ids and names, YOLO indices).
        png_mode: ``"index"`` or ``"objects"``.
        polygons: add polygons with holes to the COCO annotations.
        overlay: write preview PNGs under ``overlays/``.
    """

    def __init__(
        self,
        out_dir: Path,
        formats: tuple[str, ...],
        categories: list[Category],
        png_mode: str = "index",
        polygons: bool = False,
        overlay: bool = False,
        durable: bool = False,
    ) -> None:
        self.out_dir = out_dir
        self.formats = formats
        self.categories = categories
        self.png_mode = png_mode
        self.polygons = polygons
        self.overlay = overlay
        self.durable = durable

    # ------------------------------------------------------------------------------------------- per image
    def write_image_outputs(self, record: dict, image: np.ndarray | None) -> None:
        """Write the per-image files of ``record`` (everything but the COCO file).

        With ``polygons`` the record's objects gain their polygons here, once, so COCO checkpoints need not trace
        every mask again.
        """
        needs_masks = "yolo" in self.formats or "png" in self.formats or self.overlay or self.polygons
        masks = [decode_rle(o["segmentation"]) for o in record["objects"]] if needs_masks else []
        if self.polygons:
            for obj, mask in zip(record["objects"], masks):
                obj["polygons"] = polygons_with_holes(mask)
        stem = name_stem(record["name"])
        if "yolo" in self.formats:
            lines = [yolo_line(self.categories[o["category"]].yolo_index, m) for o, m in zip(record["objects"], masks)]
            text = "".join(line + "\n" for line in lines if line)
            atomic_write(self.out_dir / "labels" / f"{stem}.txt", text, self.durable)
        if "png" in self.formats:
            size = (record["height"], record["width"])
            if self.png_mode == "index":
                stack = np.stack(masks) if masks else np.zeros((0, *size), dtype=bool)
                data = encode_index_png(stack) if masks else cv2.imencode(".png", np.zeros(size, np.uint8))[1].tobytes()
                atomic_write(self.out_dir / "masks" / f"{stem}.png", data, self.durable)
            else:
                for k, mask in enumerate(masks):
                    atomic_write(self.out_dir / "masks" / stem / f"{k:04d}.png", encode_png(mask), self.durable)
        if self.overlay and image is not None:
            atomic_write(self.out_dir / "overlays" / f"{stem}.png", overlay_png(image, masks), self.durable)

    # ------------------------------------------------------------------------------------------------ COCO
    def coco(self, records: list[dict]) -> dict:
        """The COCO dataset of ``records`` (in the given order: image ids 1.., annotation ids 1..)."""
        images, annotations = [], []
        for image_id, record in enumerate(records, 1):
            images.append(
                {"id": image_id, "file_name": record["name"], "height": record["height"], "width": record["width"]}
            )
            for obj in record["objects"]:
                ann = {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": self.categories[obj["category"]].id,
                    "segmentation": obj["segmentation"],
                    "area": obj["area"],
                    "bbox": obj["bbox"],
                    "iscrowd": 0,
                    "score": obj["score"],
                }
                if self.polygons:
                    polygons = obj.get("polygons")
                    ann["polygons"] = polygons if polygons is not None else polygons_with_holes(
                        decode_rle(obj["segmentation"])
                    )
                ann.update(obj.get("extra", {}))
                annotations.append(ann)
        categories = [{"id": c.id, "name": c.name, "supercategory": ""} for c in self.categories]
        return {
            "info": {"description": "segany annotate", "version": "1.0"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }

    def write_coco(self, records: list[dict]) -> None:
        if "coco" in self.formats:
            text = json.dumps(self.coco(records), separators=(",", ":"))
            atomic_write(self.out_dir / COCO_FILE, text, self.durable)


def polygons_with_holes(mask: np.ndarray) -> list[dict]:
    return [
        {"exterior": [float(v) for v in p.exterior.ravel()], "holes": [[float(v) for v in h.ravel()] for h in p.holes]}
        for p in mask_to_polygons(mask)
    ]


def yolo_line(class_index: int, mask: np.ndarray) -> str:
    """One YOLO-seg line for a mask: the largest region's outer boundary, normalised; '' for an empty mask.

    A region too thin for an outline of three corners with an area (a pixel, a one-pixel line) gets the outline of
    its pixels' box instead, so every object with a pixel keeps its line.
    """
    h, w = mask.shape
    polygons = [p for p in mask_to_polygons(mask) if len(p.exterior) >= 3 and cv2.contourArea(p.exterior) > 0]
    if polygons:
        xy = max(polygons, key=lambda p: cv2.contourArea(p.exterior)).exterior.astype(np.float64)
    else:
        ys, xs = np.nonzero(mask)
        if not len(xs):
            return ""
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1  # pixel edges: an area even for one pixel
        xy = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
    xy = xy / np.array([w, h])
    return f"{class_index} " + " ".join(f"{v:.6f}" for v in xy.ravel())


def yolo_polygon_to_mask(line: str, size: tuple[int, int]) -> np.ndarray:
    """Rasterise one YOLO-seg line back to a (H, W) bool mask (vertices at pixel centres, boundary included)."""
    h, w = size
    values = np.array(line.split()[1:], dtype=np.float64).reshape(-1, 2) * np.array([w, h])
    ring = np.round(values).astype(np.int32).reshape(-1, 1, 2)
    out = np.zeros((h, w), dtype=np.uint8)
    cv2.fillPoly(out, [ring], 1)
    cv2.polylines(out, [ring], True, 1)
    return out.astype(bool)


_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
     [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40]],
    dtype=np.float32,
)


def overlay_png(image: np.ndarray, masks: list[np.ndarray], alpha: float = 0.5) -> bytes:
    """The image with each mask tinted in its own colour and outlined: PNG bytes for a person to look at."""
    canvas = image.astype(np.float32)
    outline = np.zeros(image.shape[:2], dtype=np.uint8)
    colours = np.zeros_like(canvas)
    for k, mask in enumerate(masks):
        colour = _PALETTE[k % len(_PALETTE)]
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * colour
        contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(outline, contours, -1, k + 1, 1)
        colours[outline == k + 1] = colour
    edge = outline > 0
    canvas[edge] = colours[edge]
    bgr = cv2.cvtColor(np.clip(canvas, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    return cv2.imencode(".png", bgr)[1].tobytes()
