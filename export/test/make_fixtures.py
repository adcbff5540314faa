"""Write the fixtures the Node tests check the JS decoder against (run by export/test/decoder.test.mjs).

Usage: ``python export/test/make_fixtures.py OUT_DIR``. Writes into OUT_DIR:

- ``decoder_multi.onnx`` / ``decoder_single.onnx``: the public-interface exports of the random ``test-tiny`` model;
- per image size ``HxW``: ``HxW.f32.seganye`` and ``HxW.f16.seganye`` embedding containers, and for every prompt
  ``HxW.<prompt>.multi.u8`` (3*H*W uint8, the Python predictor's multimask masks), ``HxW.<prompt>.single.u8``
  (H*W, what the single-mask export's rule picks from the predictor's outputs), ``HxW.mask_input.f32`` (the
  256*256 logits the ``mask`` prompt feeds back);
- ``rle.json`` + ``rle.u8``: a mask and its pycocotools RLE (to check the JS encoder byte for byte);
- ``manifest.json``: sizes, prompts (original pixels), scores, file names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

SIZES = [(480, 640), (750, 1125), (300, 2000), (777, 500)]  # 750x1125: the 1500x2250 ratio, smaller files


def _image(h: int, w: int, seed: int) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _prompts(h: int, w: int) -> dict[str, dict]:
    box = [w * 0.1, h * 0.2, w * 0.7, h * 0.9]
    return {
        "click": dict(points=[[w * 0.3, h * 0.4]], labels=[1]),
        "clicks": dict(points=[[w * 0.3, h * 0.4], [w * 0.62, h * 0.55]], labels=[1, 0]),
        "three": dict(points=[[w * 0.3, h * 0.4], [w * 0.62, h * 0.55], [w * 0.5, h * 0.2]], labels=[1, 0, 1]),
        "box": dict(box=box),
        "box_click": dict(points=[[w * 0.3, h * 0.4]], labels=[1], box=box),
        "mask": dict(points=[[w * 0.3, h * 0.4]], labels=[1], mask_input=True),
        "mask_only": dict(mask_input=True),
    }


def main(out: Path) -> None:
    import segany
    from segany.masks import encode_rle
    from segany.onnx import export_decoder, public_feeds
    from segany.optimize import configure

    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    model = segany.build_model("test-tiny", seed=0)
    export_decoder(model, out / "decoder_multi.onnx", multimask=True)
    export_decoder(model, out / "decoder_single.onnx", multimask=False)
    configure(model, "exact")
    predictor = segany.Predictor(model, precision="exact")
    manifest: dict = {"sizes": [], "fingerprint": predictor.fingerprint}
    for h, w in SIZES:
        name = f"{h}x{w}"
        emb = predictor.encode(_image(h, w, seed=h))
        (out / f"{name}.f32.seganye").write_bytes(emb.to_bytes("float32"))
        (out / f"{name}.f16.seganye").write_bytes(emb.to_bytes("float16"))
        low = predictor.predict(emb, points=[[w / 2, h / 2]], labels=[1])
        mask_input = low.low_res_logits[low.best].astype(np.float32)
        (out / f"{name}.mask_input.f32").write_bytes(mask_input.tobytes())
        entry: dict = {"name": name, "size": [h, w], "input_size": list(emb.input_size), "prompts": {}}
        for key, kw in _prompts(h, w).items():
            kw = dict(kw)
            if kw.pop("mask_input", False):
                kw["mask_input"] = mask_input
            multi = predictor.predict(emb, multimask=True, **kw)
            (out / f"{name}.{key}.multi.u8").write_bytes(multi.masks.astype(np.uint8).tobytes())
            # the single-mask export: best of tokens 1..3 when <= 2 points (a box counts two, points without a box
            # add the padding point, a mask-only prompt has none), else token 0
            n_points = len(kw.get("points", [])) + (2 if "box" in kw else 1 if kw.get("points") else 0)
            token0 = predictor.predict(emb, multimask=False, **kw)
            single = multi.masks[multi.best] if n_points <= 2 else token0.masks[0]
            (out / f"{name}.{key}.single.u8").write_bytes(single.astype(np.uint8).tobytes())
            (out / f"{name}.{key}.token0.u8").write_bytes(token0.masks[0].astype(np.uint8).tobytes())
            feeds = public_feeds(emb.image_embeddings.numpy(), (h, w), **kw)
            entry["prompts"][key] = {
                # what the JS must build bit for bit (float32 values, exact as JSON doubles)
                "feeds": {name: feeds[name].ravel().tolist() for name in ("point_coords", "point_labels")},
                "points": kw.get("points"),
                "labels": kw.get("labels"),
                "box": kw.get("box"),
                "mask_input": "mask_input" in kw,
                "scores": [float(s) for s in multi.scores],
                "token0_score": float(token0.scores[0]),
            }
        manifest["sizes"].append(entry)
    rng = np.random.default_rng(1)
    blob = rng.random((37, 53)) < 0.4
    blob[5:30, 10:40] = True
    (out / "rle.u8").write_bytes(blob.astype(np.uint8).tobytes())
    (out / "rle.json").write_text(json.dumps(encode_rle(blob)))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python export/test/make_fixtures.py OUT_DIR")
    main(Path(sys.argv[1]))
