"""Batch labelling throughput (issue 5 targets), printed as one table.

1. ``--everything`` at the public defaults (32x32 points, points_per_batch 64, thresholds 0.88 / 0.95): segany's
   generator (exact and fast precision) against the public ``SamAutomaticMaskGenerator`` on the same random weights
   (public SAM ``vit_b`` built by ``tests/oracle/sam_oracle.py``, saved and loaded into segany). Runs alternate
   between implementations image by image; the table gives the median seconds per image, images/hour and the
   ratio to the public generator, and whether the records are identical.
2. Box-prompted labelling through the full ``segany annotate`` pipeline (``--prompts`` JSONL, 10 boxes per image,
   COCO output) with the shipped model (or a randomly initialised ``segany-lite`` when its weights are not
   installed: speed does not depend on weight values): images/hour and the share of busy time in the encoder.

Usage::

    .venv/bin/python benchmarks/bench_annotate.py                     # the full run (slow: minutes per image)
    .venv/bin/python benchmarks/bench_annotate.py --quick             # smoke: tiny ViT, 8x8 points, few images

Needs the oracle extra (segment-anything + torchvision) for part 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from segany.runtime import tune_process  # noqa: E402

tune_process()  # as `segany annotate` (OpenMP wait policy, malloc reuse); before torch; same for every implementation

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    from tests.conftest import random_image

    return random_image(h, w, seed=seed)


def same_records(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for key, value in x.items():
            other = y[key]
            if isinstance(value, np.ndarray):
                if not np.array_equal(value, other):
                    return False
            elif value != other:
                return False
    return True


def bench_everything(args) -> list[tuple]:
    import segany
    from segany.everything import AutomaticMaskGenerator
    from tests.oracle.sam_oracle import public_sam, save_checkpoint

    try:
        from segment_anything import SamAutomaticMaskGenerator
    except ImportError as exc:
        print(f"part 1 skipped: the public segment-anything package is not importable ({exc})", file=sys.stderr)
        return []
    public = public_sam(args.encoder, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(public, Path(tmp) / "sam.pth")
        exact_model, fast_model = segany.load_model(path), segany.load_model(path)  # precision is set per model
    amg = dict(points_per_side=args.points_per_side)
    runners = {
        "public SamAutomaticMaskGenerator": SamAutomaticMaskGenerator(public, **amg).generate,
        "segany exact": AutomaticMaskGenerator(segany.Predictor(exact_model, precision="exact"), **amg).generate,
        "segany fast": AutomaticMaskGenerator(segany.Predictor(fast_model, precision="fast"), **amg).generate,
    }
    h, w = args.size
    images = [smooth_image(h, w, seed) for seed in range(args.warmup + args.amg_images)]
    times: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    outputs: dict[str, list] = {k: [] for k in runners}
    for i, image in enumerate(images):
        for name, run in runners.items():  # alternate implementations image by image
            t0, c0 = time.perf_counter(), time.process_time()
            records = run(image)
            elapsed, cpu_s = time.perf_counter() - t0, time.process_time() - c0
            if i >= args.warmup:
                times[name].append(elapsed)
                cpu[name].append(cpu_s)
                outputs[name].append(records)
            print(f"  image {i} {name}: {elapsed:.1f} s wall, {cpu_s:.1f} s cpu, {len(records)} masks",
                  file=sys.stderr, flush=True)
    base = statistics.median(times["public SamAutomaticMaskGenerator"])
    base_cpu = statistics.median(cpu["public SamAutomaticMaskGenerator"])
    rows = []
    for name in runners:
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        if name.startswith("public"):
            same = "-"
        else:
            same_count = sum(
                same_records(a, b) for a, b in zip(outputs["public SamAutomaticMaskGenerator"], outputs[name])
            )
            same = f"{same_count}/{len(outputs[name])} identical records"
        masks = statistics.median(len(r) for r in outputs[name])
        rows.append((f"everything: {name}", f"{med:.1f}", f"{med_cpu:.1f}", f"{3600 / med:.0f}",
                     f"{base / med:.2f}x (cpu {base_cpu / med_cpu:.2f}x)", f"{masks:.0f}", same))
    return rows


def bench_boxes(args) -> tuple[list[tuple], dict]:
    from PIL import Image

    import segany
    from segany.annotate.backends import LocalBackend
    from segany.annotate.exporters import Exporter
    from segany.annotate.inputs import discover_images
    from segany.annotate.journal import Journal
    from segany.annotate.pipeline import Annotator
    from segany.annotate.sources import load_prompts
    from segany.errors import CheckpointError, DownloadError

    try:
        model = segany.load_model(args.box_model)
        label = args.box_model or "segany-lite (shipped)"
    except (CheckpointError, DownloadError):  # no file here and no network: same architecture, random weights
        model = segany.build_model(args.box_model or "segany-lite", seed=0)
        label = f"{args.box_model or 'segany-lite'} (random weights: no checkpoint here)"
    rng = np.random.default_rng(0)
    h, w = args.size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        lines = []
        for i in range(args.box_images):
            name = f"img{i:04d}.jpg"
            Image.fromarray(smooth_image(h, w, 1000 + i)).save(tmp / "images" / name, quality=90)
            x0 = rng.uniform(0, w * 0.7, 10)
            y0 = rng.uniform(0, h * 0.7, 10)
            boxes = [[float(a), float(b), float(a + rng.uniform(0.05, 0.3) * w), float(b + rng.uniform(0.05, 0.3) * h)]
                     for a, b in zip(x0, y0)]
            lines.append({"image": name, "prompts": [{"box": b, "class": "thing"} for b in boxes]})
        (tmp / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        source = load_prompts(tmp / "p.jsonl")
        out = tmp / "out"
        journal = Journal(out, {"bench": True})
        journal.open()
        annotator = Annotator(
            discover_images(str(tmp / "images")),
            LocalBackend(segany.Predictor(model, precision=args.box_precision)),
            Exporter(out, ("coco",), source.categories),
            journal,
            source,
            workers=2,
            progress=False,
        )
        summary = annotator.run()
    busy = sum(summary.stage_seconds.values())
    per_hour = 3600 * summary.labelled / summary.wall_seconds
    encoder_share = summary.stage_seconds["encode"] / busy
    row = (f"boxes: {label}, {args.box_precision}", f"{summary.wall_seconds / summary.labelled:.2f}", "-",
           f"{per_hour:.0f}", "-", "10 per image", f"encoder {100 * encoder_share:.0f}% of busy time")
    return [row], summary.stage_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoder", default="vit_b", help="public SAM encoder for part 1: vit_b or tiny")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--amg-images", type=int, default=2, help="timed images per implementation in part 1")
    parser.add_argument("--warmup", type=int, default=1, help="untimed images first (part 1)")
    parser.add_argument("--box-images", type=int, default=100)
    parser.add_argument("--box-model", default=None, help="model for part 2 (default: the shipped segany-lite)")
    parser.add_argument("--box-precision", default="fast", choices=("fast", "exact"))
    parser.add_argument("--size", type=int, nargs=2, default=(768, 1024), metavar=("H", "W"))
    parser.add_argument("--skip-everything", action="store_true")
    parser.add_argument("--skip-boxes", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny ViT, 8x8 points, 1+1 images, 4 boxes")
    args = parser.parse_args()
    if args.quick:
        args.encoder, args.points_per_side, args.amg_images, args.box_images = "tiny", 8, 1, 4
        args.size = (240, 320)
    torch.set_num_threads(args.threads)
    rows = []
    started = time.perf_counter()
    if not args.skip_everything:
        rows += bench_everything(args)
        for row in rows:
            print(" | ".join(row), flush=True)  # partial results first: the box part can take a while
    stages = {}
    if not args.skip_boxes:
        box_rows, stages = bench_boxes(args)
        rows += box_rows
    header = ("run", "wall s/image", "cpu s/image", "images/hour", "vs public", "masks", "output")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\nsegany annotate benchmark: {args.threads} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"torch {torch.__version__}, image {args.size[1]}x"
          f"{args.size[0]}, everything: {args.encoder} random weights, {args.points_per_side}x{args.points_per_side} "
          f"points, public defaults; boxes: {args.box_images} images x 10 boxes")
    for r in [header, *rows]:
        print(" | ".join(str(v).ljust(widths[i]) for i, v in enumerate(r)))
    if stages:
        print("box run busy seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
