"""Train the shipped ``segany-lite`` model on procedurally generated scenes.

    python -m segany.training.train --out runs/lite --minutes 80 --seed 0 --export segany/weights/segany-lite.pt

What one step does (SAM's interactive recipe, sized for a 2-core CPU):
  * ``batch`` scenes are drawn by a DataLoader worker; each brings ``prompts`` instances: half start from one random
    point inside the object (multimask output, only the lowest-loss mask is backpropagated), half from a jittered
    box (single-mask output).
  * The image is encoded once; every prompt of that image shares the embedding.
  * ``rounds - 1`` corrective rounds follow: a click sampled in the error of the previous prediction (positive on a
    miss, negative on a false alarm) is added and the previous low-res logits are fed back as the mask prompt.
  * Loss per decoder call: 20 x focal + dice on low-res logits against area-downsampled ground truth, + MSE of the
    predicted IoU; averaged over calls.
Most of the run draws the input side per step from 256/384/512 (batch scaled so each step costs about the same);
the last ``hires_frac`` of it runs at 1024, as in use. The prompt
encoder's Fourier encoding normalises by the input size, so the same weights serve both sizes.

The schedule (warmup, then cosine) follows progress = max(step / steps, elapsed / minutes): with ``--minutes`` the run
ends on time on a shared machine; with ``--steps`` it is step-deterministic. The log prints the step count reached.
A checkpoint is written every few minutes and the run resumes from it when restarted with the same ``--out``.
At the end the fp16 state_dict (``image_encoder.`` / ``prompt_encoder.`` / ``mask_decoder.`` keys, as released SAM
checkpoints) is written to ``OUT/segany-lite.pt`` and, with ``--export``, copied there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from segany.modeling import Sam
from segany.modeling.lite_encoder import LiteEncoder
from segany.modeling.sam import PIXEL_MEAN, PIXEL_STD
from segany.models import assemble
from segany.training.losses import sam_loss
from segany.training.prompts import corrective_click, random_point_inside, sam_jittered_box
from segany.training.synthetic import TRAIN_SETTINGS, GeneratorSettings, generate_scene


def build_lite_sam() -> Sam:
    """The segany-lite architecture with random weights: LiteEncoder + SAM's standard prompt encoder and decoder."""
    return assemble(LiteEncoder())


def set_model_resolution(model: Sam, image_size: int) -> None:
    """Make the prompt encoder and the composite agree with an encoder input of ``image_size`` (multiple of 64)."""
    model.image_size = image_size
    model.prompt_encoder.input_image_size = (image_size, image_size)
    model.prompt_encoder.image_embedding_size = (image_size // 16, image_size // 16)


class SceneStream(IterableDataset):
    """Endless stream of training batches; batch k is drawn from scenes ``(start + k) * 64 + j``.

    Each batch has one input side S, drawn per batch from ``sizes``, and ``round(batch * (ref / S) ** 2)`` scenes
    (at least 1) so every step costs about the same: small inputs come in larger batches. Mixing sizes shows the
    encoder objects at many pixel scales. A batch is a dict of tensors:
        image (B, 3, S, S) float, normalised and zero-padded as SAM does;
        gt (B, P, S/4, S/4) float in [0, 1], area-downsampled instance masks of the P prompted objects;
        points (B, P/2, 2) float (x, y) in the input frame, one random point inside each of the first P/2 objects;
        boxes (B, P - P/2, 4) float jittered boxes of the others.
    """

    def __init__(
        self,
        settings: GeneratorSettings,
        seed: int,
        sizes: tuple[int, ...],
        batch: int,
        ref_size: int,
        prompts: int,
        start: int,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.seed = seed
        self.sizes = sizes
        self.batch = batch
        self.ref_size = ref_size
        self.prompts = prompts
        self.start = start

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        k = self.start + worker
        while True:
            yield self.make_batch(k)
            k += workers

    def make_batch(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.settings.seed_offset, self.seed, k, 424242])
        size = int(self.sizes[int(rng.integers(len(self.sizes)))])
        n = max(1, round(self.batch * (self.ref_size / size) ** 2))
        samples = [self.sample(size, k * 64 + j) for j in range(min(n, 64))]
        return {key: torch.stack([smp[key] for smp in samples]) for key in samples[0]}

    def sample(self, s: int, index: int) -> dict[str, torch.Tensor]:
        settings = dataclasses.replace(self.settings, long_side=(s, s))
        scene = generate_scene(settings, self.seed, index)
        rng = np.random.default_rng([self.settings.seed_offset, self.seed, index, 1_000_003])
        h, w = scene.image.shape[:2]
        mean = np.asarray(PIXEL_MEAN, np.float32)
        std = np.asarray(PIXEL_STD, np.float32)
        image = np.zeros((s, s, 3), np.float32)
        image[:h, :w] = (scene.image.astype(np.float32) - mean) / std
        n = len(scene.masks)
        chosen = rng.choice(n, self.prompts, replace=n < self.prompts)
        gt = np.zeros((self.prompts, s // 4, s // 4), np.float32)
        n_points = self.prompts // 2
        points = np.zeros((n_points, 2), np.float32)
        boxes = np.zeros((self.prompts - n_points, 4), np.float32)
        for j, i in enumerate(chosen):
            m = scene.masks[i]
            full = np.zeros((s, s), np.float32)
            full[:h, :w] = m
            gt[j] = cv2.resize(full, (s // 4, s // 4), interpolation=cv2.INTER_AREA)
            if j < n_points:
                points[j] = random_point_inside(rng, m)
            else:
                boxes[j - n_points] = sam_jittered_box(rng, m)  # m is (h, w) with max(h, w) = s
        return {
            "image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
            "gt": torch.from_numpy(gt),
            "points": torch.from_numpy(points),
            "boxes": torch.from_numpy(boxes),
        }


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def make_loader(
    seed: int, sizes: tuple[int, ...], batch: int, ref_size: int, prompts: int, start: int, workers: int
) -> DataLoader:
    stream = SceneStream(TRAIN_SETTINGS, seed, sizes, batch, ref_size, prompts, start)
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_worker_init if workers > 0 else None,
        prefetch_factor=3 if workers > 0 else None,
        persistent_workers=False,
    )


def _next_clicks(
    rng: np.random.Generator, logits: torch.Tensor, gt: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """One corrective click per prompt from low-res logits (N, h, w) and targets (N, h, w); input-frame coords.

    A low-res cell is 4 input pixels wide; the click lands at a random pixel of the cell. Exact predictions get a
    padding point (label -1).
    """
    pred = (logits > 0).cpu().numpy()
    target = (gt > 0.5).cpu().numpy()
    coords = np.zeros((len(pred), 2), np.float32)
    labels = np.full((len(pred),), -1, np.int64)
    for i in range(len(pred)):
        click = corrective_click(rng, pred[i], target[i])
        if click is None:
            continue
        (x, y), label = click
        coords[i] = (4 * x + rng.uniform(0, 4), 4 * y + rng.uniform(0, 4))
        labels[i] = label
    return coords, labels


def train_step(
    model: Sam,
    batch: dict[str, torch.Tensor],
    rounds: int,
    rng: np.random.Generator,
    decoder_bf16: bool,
    loss_weights: tuple[float, float] = (20.0, 1.0),
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward all prompt rounds of one batch; returns (loss, metrics). Gradients are not computed here."""
    images = batch["image"].contiguous(memory_format=torch.channels_last)
    gt = batch["gt"]  # (B, P, h, w)
    device = images.device
    b, p = gt.shape[:2]
    n_pt = batch["points"].shape[1]
    emb = model.image_encoder(images)  # (B, 256, g, g)
    pe = model.prompt_encoder
    dense_pe = pe.get_dense_pe()

    groups = {
        "point": {
            "emb": emb.repeat_interleave(n_pt, 0),
            "gt": gt[:, :n_pt].reshape(-1, 1, *gt.shape[-2:]),
            "coords": batch["points"].reshape(-1, 1, 2),
            "labels": torch.ones((b * n_pt, 1), dtype=torch.long, device=device),
            "box": None,
        },
        "box": {
            "emb": emb.repeat_interleave(p - n_pt, 0),
            "gt": gt[:, n_pt:].reshape(-1, 1, *gt.shape[-2:]),
            "coords": None,
            "labels": None,
            "box": batch["boxes"].reshape(-1, 4),
        },
    }
    losses: list[torch.Tensor] = []
    metrics: dict[str, float] = {}
    for name, g in groups.items():
        mask_input = None
        coords, labels = g["coords"], g["labels"]
        for r in range(rounds):
            multimask = name == "point" and r == 0
            points = (coords, labels) if coords is not None else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=decoder_bf16):
                sparse, dense = pe(points, g["box"], mask_input)
                logits, iou_pred = model.mask_decoder(g["emb"], dense_pe, sparse, dense, multimask)
            loss, sel_iou, _ = sam_loss(logits, iou_pred, g["gt"], *loss_weights)
            losses.append(loss)
            metrics[f"iou_{name}{r}"] = float(sel_iou.mean())
            if r + 1 == rounds:
                break
            # The user sees the mask the model scores highest; the next click corrects that one.
            pick = iou_pred.float().argmax(dim=1)
            prev = logits.float()[torch.arange(len(pick)), pick].detach()  # (N, h, w)
            xy, lab = _next_clicks(rng, prev, g["gt"][:, 0])
            new_c = torch.from_numpy(xy)[:, None].to(device)
            new_l = torch.from_numpy(lab)[:, None].to(device)
            coords = new_c if coords is None else torch.cat([coords, new_c], 1)
            labels = new_l if labels is None else torch.cat([labels, new_l], 1)
            mask_input = prev[:, None]
    total = torch.stack(losses).mean()
    metrics["loss"] = float(total.detach())
    return total, metrics


def export_weights(model: Sam, path: Path) -> None:
    """Write the fp16 state_dict with the released checkpoints' prefixes (BatchNorm counters stay integer)."""
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous().cpu() for k, v in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _lr_factor(progress: float, step: int, warmup: int, final: float) -> float:
    warm = min(1.0, (step + 1) / warmup)
    return warm * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="segany train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="run folder (checkpoint, log, weights)")
    ap.add_argument("--minutes", type=float, default=80.0, help="wall-clock budget; the schedule ends on time")
    ap.add_argument("--steps", type=int, default=0, help="step budget (0 = time only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="256,384,512", help="input sides of the main phase, drawn per step")
    ap.add_argument("--ref-size", type=int, default=512, help="side at which a step holds --batch scenes")
    ap.add_argument("--hires-size", type=int, default=1024, help="input side of the final phase")
    ap.add_argument("--hires-frac", type=float, default=0.1, help="fraction of the run at --hires-size (0 = none)")
    ap.add_argument("--batch", type=int, default=3, help="scenes per step at --ref-size (scaled by area)")
    ap.add_argument("--prompts", type=int, default=4, help="prompted objects per scene (half points, half boxes)")
    ap.add_argument("--rounds", type=int, default=2, help="decoder rounds per prompt (1 + corrective clicks)")
    ap.add_argument("--focal-weight", type=float, default=20.0, help="weight of the focal term (SAM: 20)")
    ap.add_argument("--dice-weight", type=float, default=1.0, help="weight of the dice term (SAM: 1)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers drawing scenes")
    ap.add_argument(
        "--device",
        default="cpu",
        help="torch device to train on, e.g. cuda (then raise --batch and --workers: scenes are drawn on the CPU)",
    )
    ap.add_argument("--no-bf16", action="store_true", help="run the decoder in fp32 instead of bf16 autocast")
    ap.add_argument("--checkpoint-minutes", type=float, default=4.0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--export", type=Path, default=None, help="also copy the final fp16 weights here")
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these weights (e.g. the shipped fp16 segany-lite.pt) instead of random ones; a checkpoint "
        "in --out still wins (resume)",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    budget_s = args.minutes * 60.0 if args.minutes > 0 else float("inf")

    device = torch.device(args.device)
    model = build_lite_sam()
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n.endswith("pos_embed")]
    decay = [p for n, p in model.named_parameters() if not (p.ndim <= 1 or n.endswith("pos_embed"))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.999),
    )
    step, elapsed_before = 0, 0.0
    ckpt_path = out / "checkpoint.pt"
    if args.init is not None and not ckpt_path.exists():
        state = torch.load(args.init, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        print(f"initialised from {args.init}", flush=True)
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
    model.to(device)
    model.image_encoder.to(memory_format=torch.channels_last)
    if ckpt_path.exists():
        opt.load_state_dict(ckpt["optimizer"])  # after the move: the state follows the parameters' device
        step, elapsed_before = int(ckpt["step"]), float(ckpt["elapsed"])
        print(f"resumed from {ckpt_path} at step {step} ({elapsed_before / 60:.1f} min)", flush=True)
    (out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))

    def progress_at(step_: int, elapsed: float) -> float:
        p_time = elapsed / budget_s
        p_step = step_ / args.steps if args.steps > 0 else 0.0
        return max(p_time, p_step)

    model.train()
    t0 = time.time() - elapsed_before
    last_ckpt = time.time()
    phase_size = None
    loader_iter: Iterator[dict[str, torch.Tensor]] | None = None
    loader: DataLoader | None = None
    hist: dict[str, list[float]] = {}
    t_log = time.time()
    while True:
        progress = progress_at(step, time.time() - t0)
        if progress >= 1.0:
            break
        hires = args.hires_frac > 0 and progress >= 1.0 - args.hires_frac
        phase = "hires" if hires else "main"
        if phase != phase_size:
            sizes = (args.hires_size,) if hires else tuple(int(v) for v in args.sizes.split(","))
            # Scene indices never repeat across phases or resumes: a phase starts at a fresh block.
            start = step + (1 << 20 if hires else 0)
            loader = make_loader(args.seed, sizes, args.batch, args.ref_size, args.prompts, start, args.workers)
            loader_iter = iter(loader)
            phase_size = phase
            print(f"step {step}: {phase} phase, input sides {sizes}", flush=True)
        assert loader_iter is not None
        batch = {k: v.to(device, non_blocking=True) for k, v in next(loader_iter).items()}
        set_model_resolution(model, int(batch["image"].shape[-1]))
        lr = args.lr * _lr_factor(progress, step, args.warmup, 0.02)
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([args.seed, step, 77])
        loss, metrics = train_step(
            model, batch, args.rounds, rng, not args.no_bf16, (args.focal_weight, args.dice_weight)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        for k, v in metrics.items():
            hist.setdefault(k, []).append(v)
        if step % args.log_every == 0:
            dt = (time.time() - t_log) / args.log_every
            t_log = time.time()
            avg = " ".join(f"{k}={np.mean(v):.3f}" for k, v in sorted(hist.items()))
            print(
                f"step {step} min {(time.time() - t0) / 60:.1f} prog {progress:.3f} lr {lr:.2e} "
                f"s/step {dt:.2f} {avg}",
                flush=True,
            )
            hist = {}
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            _save_checkpoint(ckpt_path, model, opt, step, time.time() - t0)
            export_weights(model, out / "segany-lite.pt")
            last_ckpt = time.time()
    del loader_iter, loader
    set_model_resolution(model, 1024)
    _save_checkpoint(ckpt_path, model, opt, step, time.time() - t0)
    final = out / "segany-lite.pt"
    export_weights(model, final)
    minutes = (time.time() - t0) / 60
    print(f"done: {step} steps in {minutes:.1f} min; weights {final} ({final.stat().st_size / 1e6:.1f} MB)", flush=True)
    if args.export is not None:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final, args.export)
        print(f"exported to {args.export}", flush=True)
    return 0


def _save_checkpoint(path: Path, model: Sam, opt: torch.optim.Optimizer, step: int, elapsed: float) -> None:
    tmp = path.with_suffix(".tmp")
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    torch.save({"model": state, "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed}, tmp)
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
