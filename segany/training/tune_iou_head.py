"""Retrain the mask decoder's IoU head of a trained model on the masks the model really makes.

    segany tune-iou-head --weights segany/weights/segany-lite.pt --scenes 2000 \\
        --out runs/iou_head --export runs/iou_head/segany-lite.pt

(or ``python -m segany.training.tune_iou_head ...``; the shipped model's stage 8 was this command).

The IoU head (a 3-layer MLP on the decoder's IoU token) scores each candidate mask; with a multimask click the
highest score picks the mask a user gets. After the whole-model training the picked 1-click mask is far worse than
the best of the three candidates (held-out: 0.71 against 0.77 mIoU), so the head ranks poorly. Everything else in the
model stays frozen here, so the masks do not change, only their scores:

1. ``collect``: scenes from ``TRAIN_SETTINGS`` (its own seed stream, never the evaluation's) go through the public
   :class:`~segany.predictor.Predictor`; per object a random click inside (multimask), a jittered box, and one
   corrective click after each with the previous logits fed back, as in training. Each decoder call records the IoU
   token (the head's input) and the true IoU, at the original size, of all four mask tokens' masks.
2. ``fit``: the head is trained on those features alone (no image or decoder passes, seconds per epoch) with SAM's
   loss for it, the MSE between predicted and true IoU, on all four tokens. The features are cached in ``--out``
   (keyed by seed, scene count and objects per scene), so a rerun refits without collecting again. The validation
   split it reports is 10% of the calls (scenes overlap with the training calls); the held-out judgement is
   ``segany.training.evaluate``.
3. The model with the new head is written like the shipped weights (fp16 state_dict).

Features are collected with the predictor's ``fast`` precision, as users and the evaluation run it.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segany.training.evaluate import iou
from segany.training.prompts import corrective_click, random_point_inside, sam_jittered_box
from segany.training.synthetic import TRAIN_SETTINGS, generate_scene

#: Seed stream of the scenes used here (training stages used seeds 0-5; the evaluation has its own settings).
DEFAULT_SEED = 8


class _Recorder:
    """Captures, per decoder call, the IoU token (B, C) and the low-res logits of all mask tokens (B, 4, h, w)."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.tokens: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        decoder.iou_prediction_head.register_forward_hook(self._head)
        inner = decoder.predict_masks

        def predict_masks(*args, **kwargs):
            masks, scores = inner(*args, **kwargs)
            self.logits = masks.detach()
            return masks, scores

        decoder.predict_masks = predict_masks

    def _head(self, _module, inputs, _output) -> None:
        self.tokens = inputs[0].detach()


def collect(
    weights: str | None, scenes: int, seed: int, per_scene: int, start: int = 0, log_every: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """IoU tokens (N, C) float32 and true IoUs (N, 4) float32 of every decoder call on ``scenes`` scenes."""
    from segany.models import load_model
    from segany.predictor import MASK_THRESHOLD, Predictor
    from segany.transforms import upscale_masks_fast

    predictor = Predictor(load_model(weights))
    recorder = _Recorder(predictor.mask_decoder)
    tokens: list[np.ndarray] = []
    targets: list[np.ndarray] = []

    def call(emb, gt: np.ndarray, **prompt):
        res = predictor.predict(emb, **prompt)
        low = recorder.logits.float().cpu().numpy()  # (1, 4, 256, 256)
        full = upscale_masks_fast(low, emb.input_size, emb.original_size, predictor.image_size, MASK_THRESHOLD)[0]
        tokens.append(recorder.tokens.float().cpu().numpy()[0])
        targets.append(np.array([iou(m, gt) for m in full], np.float32))
        return res

    t0 = time.time()
    for index in range(start, start + scenes):
        scene = generate_scene(TRAIN_SETTINGS, seed, index)
        rng = np.random.default_rng([seed, index, 4711])
        emb = predictor.encode(scene.image)
        picks = rng.choice(len(scene.masks), min(per_scene, len(scene.masks)), replace=False)
        for j in picks:
            gt = scene.masks[j]
            click = random_point_inside(rng, gt)
            res = call(emb, gt, points=np.array([click]), labels=np.array([1]), multimask=True)
            best = res.best
            fix = corrective_click(rng, res.masks[best], gt)
            if fix is not None:
                call(emb, gt, points=np.array([click, fix[0]]), labels=np.array([1, fix[1]]),
                     mask_input=res.low_res_logits[best][None], multimask=False)
            box = sam_jittered_box(rng, gt)
            res = call(emb, gt, box=box, multimask=False)
            fix = corrective_click(rng, res.masks[0], gt)
            if fix is not None:
                call(emb, gt, box=box, points=np.array([fix[0]]), labels=np.array([fix[1]]),
                     mask_input=res.low_res_logits[0][None], multimask=False)
        done = index - start + 1
        if log_every and done % log_every == 0:
            print(f"collect: {done}/{scenes} scenes, {len(tokens)} calls, {time.time() - t0:.0f} s", flush=True)
    return np.stack(tokens), np.stack(targets)


def selection_iou(head: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean true IoU of the multimask candidate (tokens 1-3) the head scores highest."""
    with torch.no_grad():
        pick = head(tokens)[:, 1:].argmax(dim=1)
    return float(targets[:, 1:].gather(1, pick[:, None]).mean())


def fit(
    head: torch.nn.Module,
    tokens: np.ndarray,
    targets: np.ndarray,
    epochs: int = 60,
    lr: float = 1e-3,
    batch: int = 256,
    seed: int = 0,
    holdout: float = 0.1,
) -> tuple[torch.nn.Module, dict[str, float]]:
    """Train a copy of ``head`` with the MSE to the true IoUs of all four tokens; returns it and validation numbers
    (MSE, Pearson r over all tokens and multimask selection IoU on a held-out ``holdout`` share of the calls,
    before and after)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(tokens).float()
    y = torch.from_numpy(targets).float()
    order = torch.randperm(len(x), generator=gen)
    n_val = max(1, int(len(x) * holdout))
    val, train = order[:n_val], order[n_val:]
    tuned = copy.deepcopy(head).float().train()

    def report(model: torch.nn.Module, tag: str) -> dict[str, float]:
        with torch.no_grad():
            pred = model(x[val])
        flat_p, flat_t = pred.flatten().numpy(), y[val].flatten().numpy()
        return {
            f"{tag}_mse": float(F.mse_loss(pred, y[val])),
            f"{tag}_corr": float(np.corrcoef(flat_p, flat_t)[0, 1]),
            f"{tag}_select": selection_iou(model, x[val], y[val]),
        }

    stats = {**report(tuned.eval(), "before"), "oracle_select": float(y[val][:, 1:].max(dim=1).values.mean())}
    tuned.train()
    batch = max(1, min(batch, len(train)))
    opt = torch.optim.AdamW(tuned.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * max(1, len(train) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(perm) - batch + 1, batch):
            idx = perm[i : i + batch]
            loss = F.mse_loss(tuned(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    tuned.eval()
    stats.update(report(tuned, "after"))
    return tuned, stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="segany tune-iou-head", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="checkpoint path or zoo name (default: the shipped model)")
    ap.add_argument("--scenes", type=int, default=1500)
    ap.add_argument("--per-scene", type=int, default=4, help="objects prompted per scene")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="folder for the feature cache")
    ap.add_argument("--export", type=Path, default=None, help="write the model with the new head here (fp16)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    torch.manual_seed(0)

    cache = args.out / f"features_seed{args.seed}_n{args.scenes}_k{args.per_scene}.npz"
    if cache.exists():
        data = np.load(cache)
        tokens, targets = data["tokens"], data["targets"]
        print(f"features from {cache}: {len(tokens)} decoder calls")
    else:
        tokens, targets = collect(args.weights, args.scenes, args.seed, args.per_scene)
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez(cache, tokens=tokens, targets=targets)
        print(f"features: {len(tokens)} decoder calls -> {cache}")

    from segany.models import load_model
    from segany.training.train import export_weights

    model = load_model(args.weights)
    tuned, stats = fit(model.mask_decoder.iou_prediction_head, tokens, targets, args.epochs, args.lr)
    for key, value in stats.items():
        print(f"  {key:<16} {value:.4f}")
    if args.export is not None:
        model.mask_decoder.iou_prediction_head.load_state_dict(tuned.state_dict())
        export_weights(model, args.export)
        print(f"weights with the new IoU head -> {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
