"""Render the shipped model's masks on held-out synthetic scenes for the README.

    python scripts/readme_images.py [--out docs/images/shipped_model.png] [--weights PATH]

Left column of each pair: the scene with the prompts (boxes in white, positive clicks green); right: the masks the
model returned (each object its own colour). Scenes come from the evaluation generator (never seen in training).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180)]


def render(predictor, scene, n_objects: int = 4) -> np.ndarray:
    image = scene.image
    emb = predictor.encode(image)
    prompts_view = image.copy()
    masks_view = (image * 0.35).astype(np.uint8)
    order = np.argsort([-m.sum() for m in scene.masks])[:n_objects]
    for i, idx in enumerate(order):
        gt = scene.masks[idx]
        colour = COLOURS[i % len(COLOURS)]
        if i % 2 == 0:
            ys, xs = np.nonzero(gt)
            box = [xs.min(), ys.min(), xs.max(), ys.max()]
            res = predictor.predict(emb, box=box, multimask=False)
            mask = res.masks[0]
            cv2.rectangle(prompts_view, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), (255, 255, 255), 2)
        else:
            dist = cv2.distanceTransform(gt.astype(np.uint8), cv2.DIST_L2, 5)
            y, x = np.unravel_index(np.argmax(dist), dist.shape)
            res = predictor.predict(emb, points=[[x, y]], labels=[1], multimask=True)
            mask = res.masks[res.best]
            cv2.circle(prompts_view, (int(x), int(y)), 6, (0, 255, 0), -1)
            cv2.circle(prompts_view, (int(x), int(y)), 6, (0, 0, 0), 1)
        masks_view[mask] = (0.45 * masks_view[mask] + 0.55 * np.array(colour)).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(masks_view, contours, -1, colour, 2)
    return np.concatenate([prompts_view, np.full((image.shape[0], 8, 3), 255, np.uint8), masks_view], axis=1)


def main(argv: list[str] | None = None) -> int:
    import torch

    import segany
    from segany.training.synthetic import EVAL_SETTINGS, generate_scene

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/images/shipped_model.png"))
    parser.add_argument("--weights", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--scenes", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    predictor = segany.Predictor(segany.load_model(args.weights))
    rows = []
    for i in range(args.scenes):
        panel = render(predictor, generate_scene(EVAL_SETTINGS, args.seed, i))
        scale = 900 / panel.shape[1]
        rows.append(cv2.resize(panel, (900, int(panel.shape[0] * scale)), interpolation=cv2.INTER_AREA))
        rows.append(np.full((8, 900, 3), 255, np.uint8))
    sheet = np.concatenate(rows[:-1], axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
