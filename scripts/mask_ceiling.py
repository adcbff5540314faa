"""How well SAM's output format can represent the held-out objects at all: the mIoU of a perfect decoder.

    python scripts/mask_ceiling.py [--n 200] [--seed 12345]

SAM's decoder answers with 256x256 low-res logits for the padded 1024x1024 input, which the predictor upsamples
(bilinear, crop, bilinear) and thresholds at 0. For each object of the evaluation (same scenes and picks as
``segany.training.evaluate``) this script makes the best logits such a decoder could give (the ground truth resized
to the input frame, area-downsampled to 256x256, mapped steeply around half coverage) and scores the resulting
mask against the ground truth at the original size. A mIoU far below 1 would mean the held-out set asks for detail
the 256x256 format cannot hold; near 1, any gap to the targets is the model's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segany.training.evaluate import held_out_objects, iou  # noqa: E402
from segany.transforms import input_size_for, upscale_logits  # noqa: E402

AREA_BINS = ((0.0, 0.005), (0.005, 0.02), (0.02, 0.08), (0.08, 1.0))


def best_low_res_logits(gt: np.ndarray, target: int = 1024) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, 1, 256, 256) logits of ``gt`` as the predictor frames it, and the input size (h, w) before padding."""
    ih, iw = input_size_for(gt.shape, target)
    padded = np.zeros((target, target), np.float32)
    padded[:ih, :iw] = cv2.resize(gt.astype(np.float32), (iw, ih), interpolation=cv2.INTER_AREA)
    coverage = cv2.resize(padded, (target // 4, target // 4), interpolation=cv2.INTER_AREA)
    return torch.from_numpy((coverage - 0.5) * 40.0)[None, None], (ih, iw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args(argv)
    ious, areas = [], []
    for scene, picks in held_out_objects(args.n, args.seed, per_image=1):
        gt = scene.masks[int(picks[0])]
        logits, input_size = best_low_res_logits(gt)
        mask = (upscale_logits(logits, input_size, gt.shape) > 0)[0, 0].numpy()
        ious.append(iou(mask, gt))
        areas.append(gt.mean())
    ious_a, areas_a = np.array(ious), np.array(areas)
    print(f"perfect-decoder mIoU on {args.n} held-out objects (seed {args.seed}): {ious_a.mean():.4f} "
          f"(min {ious_a.min():.4f})")
    for lo, hi in AREA_BINS:
        sel = (areas_a >= lo) & (areas_a < hi)
        if sel.any():
            share = f"{lo:.1%}-{hi:.1%}"
            print(f"  object area {share} of the image: {int(sel.sum())} objects, mIoU {ious_a[sel].mean():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
