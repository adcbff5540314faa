"""Model core benchmark: segany against the public implementation, side by side, same random weights and image.

    python -m benchmarks.bench_model [--threads 2] [--repeats 3] [--skip vit_b] [--load-check]

Prints one table: encoder time (vit_b, vit_t: public, segany exact, segany fast), predict time (1 click, multimask,
1500x2250 image), fast-vs-exact mask IoU on vit_b, and (with --load-check) the peak extra memory of loading a
vit_h-sized checkpoint. Medians over repeated runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# The process settings of `segany serve` (segany/runtime.py): sleeping, not spinning, OpenMP workers (on a shared
# 2-core machine spinning threads steal the cores the other contender needs) and malloc reuse of freed blocks. Both
# sides run in this process under the same settings. Applied before torch starts OpenMP.
from segany.runtime import tune_process  # noqa: E402

tune_process()

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import interleaved_medians, ms, print_table  # noqa: E402


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR)).copy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def bench_encoder(name: str, repeats: int, rows: list, tmp: Path) -> None:
    import segany
    from tests.oracle.sam_oracle import public_mobile_sam, public_sam, save_checkpoint

    if name == "vit_t":
        from mobile_sam import SamPredictor

        public = public_mobile_sam(seed=0)
    else:
        from segment_anything import SamPredictor

        public = public_sam(name, seed=0)
    path = save_checkpoint(public, tmp / f"{name}.pth")
    image = smooth_image(768, 1024)
    public_predictor = SamPredictor(public)
    # one model per precision: a model holds one precision at a time (segany.optimize.configure)
    exact = segany.Predictor(segany.load_model(path), precision="exact")
    fast = segany.Predictor(segany.load_model(path), precision="fast")
    t = interleaved_medians(
        {"public": lambda: public_predictor.set_image(image), "exact": lambda: exact.encode(image),
         "fast": lambda: fast.encode(image)},
        repeats,
    )
    t_public, t_exact, t_fast = t["public"], t["exact"], t["fast"]
    emb_exact = exact.encode(image)
    emb_fast = fast.encode(image)
    target = "fast >= 2.5x public; exact not slower" if name == "vit_b" else "fast >= 2x public"
    rows.append([f"{name} encoder (768x1024 image)", ms(t_public), ms(t_exact), ms(t_fast),
                 f"{t_public / t_exact:.2f}x / {t_public / t_fast:.2f}x", target])
    if name == "vit_b":
        h, w = 768, 1024
        prompts = [
            dict(points=[[w * 0.3, h * 0.4]], labels=[1]),
            dict(points=[[w * 0.3, h * 0.4], [w * 0.6, h * 0.5], [w * 0.5, h * 0.2]], labels=[1, 0, 1]),
            dict(box=[w * 0.1, h * 0.2, w * 0.7, h * 0.9]),
            dict(box=[w * 0.1, h * 0.2, w * 0.7, h * 0.9], points=[[w * 0.4, h * 0.5]], labels=[1]),
        ]
        ious = []
        for kw in prompts:
            for multimask in (True, False):
                a = exact.predict(emb_exact, multimask=multimask, **kw).masks
                b = fast.predict(emb_fast, multimask=multimask, **kw).masks
                ious += [iou(x, y) for x, y in zip(a, b)]
        rows.append(["vit_b masks, fast vs exact (mean IoU, 20 masks)", "", "", f"{np.mean(ious):.4f}", "",
                     ">= 0.98"])


def bench_predict(repeats: int, rows: list, tmp: Path) -> None:
    from segment_anything import SamPredictor

    import segany
    from tests.oracle.sam_oracle import public_sam, save_checkpoint

    public = public_sam("tiny", seed=0)  # the decoder is the same in every variant; the encoder does not matter
    path = save_checkpoint(public, tmp / "tiny.pth")
    image = smooth_image(1500, 2250)
    point = dict(point_coords=np.array([[1000.0, 700.0]]), point_labels=np.array([1]))
    public_predictor = SamPredictor(public)
    public_predictor.set_image(image)
    calls = {"public": lambda: public_predictor.predict(multimask_output=True, **point)}
    for precision in ("exact", "fast"):
        predictor = segany.Predictor(segany.load_model(path), precision=precision)
        emb = predictor.encode(image)
        calls[precision] = lambda p=predictor, e=emb: p.predict(e, points=[[1000, 700]], labels=[1], multimask=True)
    results = interleaved_medians(calls, repeats, warmup=3)
    t_public = results["public"]
    rows.append(["predict, 1 click, multimask, 1500x2250", ms(t_public), ms(results["exact"]), ms(results["fast"]),
                 f"{t_public / results['exact']:.2f}x / {t_public / results['fast']:.2f}x", "fast >= 2x public"])


# Peak RSS from VmHWM: unlike ru_maxrss it is not inherited across fork/exec from the (large) parent process.
LOAD_SCRIPT = """
import sys, torch
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
sys.path.insert(0, {root!r})
import segany, segany.models, segany.modeling
base = hwm()
model = segany.load_model({path!r})
print(hwm() - base)
"""


def bench_load(rows: list, tmp: Path) -> None:
    import segany

    path = tmp / "vit_h_random.pth"
    model = segany.build_model("vit_h", seed=0)
    torch.save(model.state_dict(), path)
    del model
    size = path.stat().st_size
    out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT.format(root=str(ROOT), path=str(path))],
                         capture_output=True, text=True, check=True)
    extra = int(out.stdout.strip().splitlines()[-1])
    rows.append(["load vit_h-sized checkpoint: peak extra RSS", f"file {size / 2**30:.2f} GiB", "",
                 f"{extra / 2**30:.2f} GiB", f"{extra / size:.2f}x file", "<= 1.2x file"])
    path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["vit_b", "vit_t", "predict"])
    parser.add_argument("--load-check", action="store_true", help="also measure loading a vit_h-sized checkpoint")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from segany.optimize import cpu_has_bf16

    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        for name in ("vit_b", "vit_t"):
            if name not in args.skip:
                bench_encoder(name, args.repeats, rows, tmp)
        if "predict" not in args.skip:
            bench_predict(max(args.repeats, 10), rows, tmp)
        if args.load_check:
            bench_load(rows, tmp)
    print(f"\nsegany model benchmark: torch {torch.__version__}, {args.threads} threads, bf16 native: "
          f"{cpu_has_bf16()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, medians of {args.repeats}+ runs "
          f"after warm-up, random weights\n")
    print_table(["what", "public", "segany exact", "segany fast", "speed-up exact / fast", "target"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
