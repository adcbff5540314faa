"""Evaluate a model on a held-out set of generated scenes, through the public Predictor (what users get).

    python -m segany.training.evaluate --weights segany/weights/segany-lite.pt --n 200 --seed 12345

The held-out scenes use ``EVAL_SETTINGS`` (other sizes, aspect ratios, shape mix and degradations than training, and
their own seed stream). From each of ``--n`` scenes, ``--per-image`` objects are drawn at random. Masks are compared
with the ground truth at the original image size. Protocols, all deterministic:

  1 click       one positive click at the object's centre-most pixel (farthest from its border); multimask output,
                the highest-scoring mask is kept.
  3 clicks      the 1-click result, then two corrective clicks, each at the centre-most pixel of the largest error
                region (positive on a miss, negative on a false alarm), with the previous low-res logits fed back
                as ``mask_input``; single-mask output.
  box           the object's tight box; single-mask output.
  box + 1 click the box result, then one corrective click as above with the box kept and the logits fed back.

IoU calibration: Pearson correlation between the predicted IoU (score) and the true IoU over every mask returned
(all three candidates of the multimask call and each single-mask output).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from segany.training.prompts import corrective_click, mask_box
from segany.training.synthetic import EVAL_SETTINGS, generate_scene


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two bool masks of the same shape (1.0 when both are empty)."""
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


def centre_click(mask: np.ndarray) -> tuple[float, float]:
    """The pixel of a bool mask farthest from its border, as (x, y)."""
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def evaluate_object(predictor, emb, gt: np.ndarray) -> tuple[dict[str, float], list[tuple[float, float]]]:
    """Run the four protocols on one object; returns ({protocol: IoU}, [(score, true IoU) of every mask])."""
    pairs: list[tuple[float, float]] = []
    out: dict[str, float] = {}

    def record(res) -> None:
        for k in range(len(res.scores)):
            pairs.append((float(res.scores[k]), iou(res.masks[k], gt)))

    # 1 click, then 2 corrective clicks.
    pts = [centre_click(gt)]
    lab = [1]
    res = predictor.predict(emb, points=np.array(pts), labels=np.array(lab), multimask=True)
    record(res)
    best = res.best
    pred, logits = res.masks[best], res.low_res_logits[best]
    out["1 click"] = iou(pred, gt)
    for _ in range(2):
        click = corrective_click(None, pred, gt)
        if click is None:
            break
        pts.append(click[0])
        lab.append(click[1])
        res = predictor.predict(
            emb, points=np.array(pts), labels=np.array(lab), mask_input=logits[None], multimask=False
        )
        record(res)
        pred, logits = res.masks[0], res.low_res_logits[0]
    out["3 clicks"] = iou(pred, gt)

    # Box, then box + 1 corrective click.
    box = np.array(mask_box(gt), np.float32)
    res = predictor.predict(emb, box=box, multimask=False)
    record(res)
    pred, logits = res.masks[0], res.low_res_logits[0]
    out["box"] = iou(pred, gt)
    click = corrective_click(None, pred, gt)
    if click is not None:
        res = predictor.predict(
            emb, points=np.array([click[0]]), labels=np.array([click[1]]), box=box, mask_input=logits[None],
            multimask=False,
        )
        record(res)
        pred = res.masks[0]
    out["box + 1 click"] = iou(pred, gt)
    return out, pairs


PROTOCOLS = ("1 click", "3 clicks", "box", "box + 1 click")


def held_out_objects(n: int, seed: int, per_image: int):
    """The evaluation's scenes and picks: yields (scene, indices of its ``per_image`` randomly drawn objects)."""
    for i in range(n):
        scene = generate_scene(EVAL_SETTINGS, seed, i)
        rng = np.random.default_rng([seed, i, 99])
        yield scene, rng.choice(len(scene.masks), min(per_image, len(scene.masks)), replace=False)


def run(weights: str | None, n: int, seed: int, per_image: int, precision: str) -> dict[str, float]:
    """Evaluate; returns {protocol: mIoU, "iou_corr": Pearson r, "objects": count, "seconds": wall time}."""
    from segany.models import load_model
    from segany.predictor import Predictor

    model = load_model(weights)
    predictor = Predictor(model, precision=precision)
    scores: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
    pairs: list[tuple[float, float]] = []
    t0 = time.time()
    for scene, picks in held_out_objects(n, seed, per_image):
        emb = predictor.encode(scene.image)
        for j in picks:
            result, p = evaluate_object(predictor, emb, scene.masks[j])
            for k, v in result.items():
                scores[k].append(v)
            pairs.extend(p)
    arr = np.asarray(pairs, np.float64)
    summary: dict[str, float] = {k: float(np.mean(v)) for k, v in scores.items()}
    summary["iou_corr"] = float(np.corrcoef(arr[:, 0], arr[:, 1])[0, 1])
    summary["objects"] = float(len(scores["box"]))
    summary["seconds"] = time.time() - t0
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="segany evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="checkpoint path or zoo name (default: the shipped model)")
    ap.add_argument("--n", type=int, default=200, help="number of held-out scenes")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--per-image", type=int, default=1, help="objects evaluated per scene")
    ap.add_argument("--precision", default="fast", choices=["fast", "exact"], help="Predictor precision")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    s = run(args.weights, args.n, args.seed, args.per_image, args.precision)
    print(f"held-out set: {args.n} scenes x {args.per_image} objects = {int(s['objects'])} objects, seed {args.seed}")
    for p in PROTOCOLS:
        print(f"  mIoU {p:<14} {s[p]:.4f}")
    print(f"  IoU-score correlation (Pearson) {s['iou_corr']:.4f}")
    print(f"  wall time {s['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
