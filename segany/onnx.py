"""ONNX export of the prompt encoder + mask decoder (and optionally the image encoder), checked against torch.

Two decoder graphs, built from the same torch modules the predictor runs (no second copy of the model logic):

- ``PublicDecoder``: the interface of the public SAM ONNX decoder that browser demos and annotation tools already
  use (names, dtypes, shapes and semantics as in ``shared/reference/SAM_FACTS.md``). Inputs ``image_embeddings``
  [1,256,64,64], ``point_coords`` [1,N,2] (input frame), ``point_labels`` [1,N] (-1 pad, 0, 1, 2, 3 box corners),
  ``mask_input`` [1,1,256,256], ``has_mask_input`` [1], ``orig_im_size`` [2] (H, W). Outputs ``masks`` (logits at
  the original size), ``iou_predictions``, ``low_res_masks``. The caller appends the (0,0)/-1 padding point when
  there is no box. Multimask returns all four tokens; single-mask picks the best of tokens 1..3 when N <= 2,
  else token 0.
- ``BatchedDecoder``: a prompt-batch axis B: ``point_coords`` [B,N,2], ``point_labels`` [B,N], ``mask_input``
  [B,1,256,256] and ``has_mask_input`` [B], or [1,1,256,256] and [1] for one mask input (or none) shared by all
  prompts: then the first layer's image-side work is shared too, the fast form when no prompt has a mask input;
  outputs ``iou_predictions`` [B,M], ``low_res_masks`` [B,M,256,256] and, when exported with ``upsample=True``,
  ``masks`` [B,M,H,W] (then ``orig_im_size`` is an input; the low-res-only graph has no ``orig_im_size``). M is 3
  (multimask) or 1 (token 0, as the predictor).

The crop to the resized image size is tensor slicing computed in the graph from ``orig_im_size``, so one export
serves every aspect ratio. The dense positional encoding is computed in the graph (about a millisecond) rather
than stored: a stored copy would add 4 MiB to every file a browser downloads.

``fast=True`` (the default) builds the graphs from :func:`segany.modeling.fast_decoder.fast_mask_decoder`, the
value-preserving rewrite of the decoder that the predictor's fast path also runs (projections moved to the prompt
side of the cross-attentions, upscaling on channels-last tokens with the mask planes in pixel-major order until the
wanted ones are picked); the plain path stays for comparison, and ``tests/test_onnx.py`` checks both against torch.
In the graph, one more rewrite: the low-res logits are cropped to the rows/columns that the 4x upsample of the
resized image reads (plus one for the bilinear neighbour) before upsampling: bilinear x4 with half-pixel centres
reads source rows <= ceil(h / 4) for output rows < h, so the crop changes no value and skips a third of the
1024x1024 upsample for a 2:3 image.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling import Sam
from segany.modeling.fast_decoder import fast_mask_decoder, pixel_major_to_raster

OPSET = 17


class _DecoderBase(nn.Module):
    def __init__(self, model: Sam, fast: bool = True) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = fast_mask_decoder(model.mask_decoder) if fast else model.mask_decoder
        self.pixel_major = bool(getattr(self.mask_decoder, "pixel_major_output", False))
        self.embedding_size = tuple(model.prompt_encoder.image_embedding_size)
        self.image_size = model.image_size
        self.fast = fast

    def _raster(self, low_res: torch.Tensor) -> torch.Tensor:
        return pixel_major_to_raster(low_res, *self.embedding_size) if self.pixel_major else low_res

    def _dense(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        has = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has * self.prompt_encoder.embed_masks(mask_input) + (1 - has) * no_mask

    def _upscale(self, low_res: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """Logits (B, M, 256, 256) -> (B, M, H, W): the predictor's post-processing, with a data-dependent crop."""
        s = self.image_size
        input_size = graph_input_size(orig_im_size, s)
        batch, planes = low_res.shape[:2]
        # All planes as the channels of one image: onnxruntime's Resize splits an image's channels over its threads
        # but not a batch's images (16 planes to 1500x2250, 2 threads: 171 ms as (16, 1), 83 ms as (1, 16)).
        low_res = low_res.reshape(1, batch * planes, *low_res.shape[2:])
        if self.fast:
            # keep the low-res rows/cols the x4 upsample reads for the first input_size outputs (see module doc)
            factor = s // low_res.shape[-1]
            keep = torch.clamp(
                torch.div(input_size + factor - 1, factor, rounding_mode="floor") + 1, max=low_res.shape[-1]
            )
            x = low_res[..., : keep[0], : keep[1]]
            x = F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(low_res, (s, s), mode="bilinear", align_corners=False)
        x = x[..., : input_size[0], : input_size[1]]
        size = orig_im_size.to(torch.int64)
        x = F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)
        return x.reshape(batch, planes, x.shape[2], x.shape[3])


def graph_input_size(orig_im_size: torch.Tensor, image_size: int) -> torch.Tensor:
    """(H, W) float tensor -> the resized size (h, w), int64, in graph ops: :func:`segany.transforms.input_size_for`.

    In float64: in float32 some sizes (e.g. 6730x7101) give a side of k + 0.49999 that the + 0.5 rounds up, and the
    crop would take a row too many.
    """
    orig = orig_im_size.to(torch.float64)
    return torch.floor(orig * (image_size / torch.max(orig)) + 0.5).to(torch.int64)


class PublicDecoder(_DecoderBase):
    """The public SAM ONNX decoder interface (see module docstring)."""

    def __init__(self, model: Sam, multimask: bool, fast: bool = True) -> None:
        super().__init__(model, fast)
        self.multimask = multimask

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels)
        dense = self._dense(mask_input, has_mask_input)
        low_res, scores = self.mask_decoder.predict_masks(
            image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense
        )
        if not self.multimask:
            # token 0 for 3+ points (a box counts two), else the best of the three multimask tokens
            reweight = torch.tensor([[1000.0, 0.0, 0.0, 0.0]], device=scores.device)
            pick = torch.argmax(scores + (point_coords.shape[1] - 2.5) * reweight, dim=1)
            low_res = low_res[torch.arange(low_res.shape[0]), pick].unsqueeze(1)
            scores = scores[torch.arange(scores.shape[0]), pick].unsqueeze(1)
        low_res = self._raster(low_res)  # after the selection: one plane to reorder, not four
        return self._upscale(low_res, orig_im_size), scores, low_res


class BatchedDecoder(_DecoderBase):
    """B prompts on one image in one run (see module docstring)."""

    def __init__(self, model: Sam, multimask: bool, upsample: bool, fast: bool = True) -> None:
        super().__init__(model, fast)
        self.multimask = multimask
        self.upsample = upsample

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor | None = None,
    ):
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels)
        dense = self._dense(mask_input, has_mask_input)
        low_res, scores = self.mask_decoder.predict_masks(
            image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense
        )
        low_res, scores = (low_res[:, 1:], scores[:, 1:]) if self.multimask else (low_res[:, :1], scores[:, :1])
        low_res = self._raster(low_res)
        if self.upsample:
            return scores, low_res, self._upscale(low_res, orig_im_size)
        return scores, low_res


class EncoderGraph(nn.Module):
    """Image encoder on a normalised, padded (1, 3, S, S) input -> (1, 256, S/16, S/16)."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


@dataclass(frozen=True)
class ExportReport:
    path: Path
    bytes: int
    max_abs_diff: float | None = None
    mask_iou: float | None = None


def _prepare(model: Sam) -> None:
    from segany.optimize import configure

    configure(model, "exact")  # plain attention traces to plain ONNX ops
    model.eval()


def _example_feeds(model: Sam, batch: int | None, points: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    b = batch or 1
    grid = model.prompt_encoder.image_embedding_size
    return {
        "image_embeddings": rng.standard_normal((1, 256, *grid)).astype(np.float32),
        "point_coords": rng.uniform(0, model.image_size, (b, points, 2)).astype(np.float32),
        "point_labels": rng.integers(0, 2, (b, points)).astype(np.float32),
        "mask_input": rng.standard_normal((b, 1, 4 * grid[0], 4 * grid[1])).astype(np.float32),
        "has_mask_input": np.ones((b,), np.float32) if batch else np.ones((1,), np.float32),
        "orig_im_size": np.array([1500, 2250], np.float32),
    }


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    # The tracer warns about every shape it records as a constant; the graphs are built so that those are fixed (the
    # embedding grid, the model's input size), and tests/test_onnx.py runs them at other batch sizes, point counts
    # and image sizes. The warnings would only be noise to someone running `segany export`.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the single-mask pick indexes with arange/argmax, never with negative indices
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        torch.onnx.export(
            module,
            args,
            buffer,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # the dynamo exporter fails on the single-mask selection with torch 2.13
        )
    path.write_bytes(buffer.getvalue())


DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]


def export_decoder(
    model: Sam,
    path: str | Path,
    multimask: bool = False,
    batched: bool = False,
    upsample: bool = True,
    quantize: bool = False,
    fast: bool = True,
) -> ExportReport:
    """Write the decoder graph to ``path``; ``quantize`` writes a dynamic-int8 version (weights only).

    ``batched=False`` gives the public interface; ``batched=True`` the prompt-batch variant. ``fast=False``
    exports the plain graph, without the exact rewrites of the module docstring (for comparison).
    """
    path = Path(path)
    _prepare(model)
    feeds = _example_feeds(model, 2 if batched else None)
    inputs = DECODER_INPUTS if upsample or not batched else DECODER_INPUTS[:-1]  # low-res only: no orig_im_size
    args = tuple(torch.from_numpy(feeds[name]) for name in inputs)
    if batched:
        module = BatchedDecoder(model, multimask, upsample, fast).eval()
        outputs = ["iou_predictions", "low_res_masks"] + (["masks"] if upsample else [])
        dynamic = {
            "point_coords": {0: "num_prompts", 1: "num_points"},
            "point_labels": {0: "num_prompts", 1: "num_points"},
            "mask_input": {0: "num_mask_inputs"},  # num_prompts, or 1: one mask input (or none) for all
            "has_mask_input": {0: "num_mask_inputs"},
            "iou_predictions": {0: "num_prompts"},
            "low_res_masks": {0: "num_prompts"},
            "masks": {0: "num_prompts", 2: "height", 3: "width"},
        }
        dynamic = {k: v for k, v in dynamic.items() if k in inputs or k in outputs}
    else:
        module = PublicDecoder(model, multimask, fast).eval()
        outputs = ["masks", "iou_predictions", "low_res_masks"]
        dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    target = path.with_name(path.stem + ".fp32.onnx") if quantize else path
    _export(module, args, target, inputs, outputs, dynamic)
    if quantize:
        # Only the token MLPs (half of the weights) go to int8. On the shipped model and the demo image, 42 masks
        # against fp32: token MLPs only 0.998 mean IoU (min 0.986), 9.8 MiB; every MatMul/Gemm 0.952 (min 0.46),
        # 5.2 MiB; the transformer's attention products are what int8 hurts, the MLPs hardly matter.
        quantize_int8(target, path, only=("/mlp/",))
        target.unlink()
    return ExportReport(path, path.stat().st_size)


def export_encoder(model: Sam, path: str | Path, quantize: bool = False) -> ExportReport:
    """Write the image encoder graph (input ``image`` [1,3,S,S] normalised and padded; output ``image_embeddings``)."""
    path = Path(path)
    _prepare(model)
    example = torch.zeros(1, 3, model.image_size, model.image_size)
    target = path.with_name(path.stem + ".fp32.onnx") if quantize else path
    _export(EncoderGraph(model).eval(), (example,), target, ["image"], ["image_embeddings"], None)
    if quantize:
        quantize_int8(target, path)
        target.unlink()
    return ExportReport(path, path.stat().st_size)


def quantize_int8(source: Path, dest: Path, only: tuple[str, ...] = ()) -> None:
    """Dynamic int8 quantisation of MatMul/Gemm nodes (int8 weights; activations quantised on the fly at run time);
    with ``only``, just the nodes whose name contains one of those strings."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    chosen = [n.name for n in onnx.load(str(source)).graph.node if any(k in n.name for k in only)] if only else None
    if only and not chosen:
        raise ValueError(f"no node of {source} matches {only}")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic warns on the root logger to run its pre-processing; not needed here
    try:
        quantize_dynamic(
            str(source), str(dest), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_quantize=chosen,
        )
    finally:
        root.setLevel(level)


def session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with full graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def public_feeds(
    embedding: np.ndarray,
    original_size: tuple[int, int],
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
    image_size: int = 1024,
) -> dict[str, np.ndarray]:
    """Feeds for the public-interface decoder from a prompt in original pixels (what a front end does)."""
    from segany.transforms import boxes_to_input, coords_to_input

    coords, labs = [], []
    if points is not None and len(points):
        coords.append(coords_to_input(np.asarray(points, np.float64), original_size, image_size))
        labs.append(np.asarray(labels, np.float64))
    if box is not None:
        coords.append(boxes_to_input(np.asarray(box, np.float64), original_size, image_size).reshape(2, 2))
        labs.append(np.array([2.0, 3.0]))
    elif coords:  # points without a box carry SAM's padding point; a mask-only prompt has no point at all (N = 0)
        coords.append(np.zeros((1, 2)))
        labs.append(np.array([-1.0]))
    else:
        coords.append(np.zeros((0, 2)))
        labs.append(np.zeros(0))
    has_mask = mask_input is not None
    return {
        "image_embeddings": np.asarray(embedding, np.float32).reshape(1, 256, 64, 64),
        "point_coords": np.concatenate(coords)[None].astype(np.float32),
        "point_labels": np.concatenate(labs)[None].astype(np.float32),
        "mask_input": (
            np.asarray(mask_input, np.float32).reshape(1, 1, 256, 256)
            if has_mask
            else np.zeros((1, 1, 256, 256), np.float32)
        ),
        "has_mask_input": np.array([1.0 if has_mask else 0.0], np.float32),
        "orig_im_size": np.array(original_size, np.float32),
    }


def verify_decoder(model: Sam, path: str | Path, multimask: bool, size: tuple[int, int] = (600, 900)) -> ExportReport:
    """Run a public-interface decoder file against the torch predictor on a synthetic image and a few prompts.

    Returns the largest low-res logit difference and the mean mask IoU (what a quantised export reports).
    """
    from segany.predictor import Predictor

    h, w = size
    rng = np.random.default_rng(0)
    blocks = (rng.random((h // 8 + 1, w // 8 + 1, 3)) * 255).astype(np.uint8)
    image = np.ascontiguousarray(blocks.repeat(8, 0).repeat(8, 1)[:h, :w])
    predictor = Predictor(model, precision="exact")
    emb = predictor.encode(image)
    sess = session(path)
    prompts = [
        dict(points=[[w * 0.3, h * 0.4]], labels=[1]),
        dict(box=[w * 0.1, h * 0.2, w * 0.7, h * 0.9]),
        dict(points=[[w * 0.5, h * 0.5]], labels=[1], box=[w * 0.2, h * 0.2, w * 0.8, h * 0.8]),
    ]
    diffs, ious = [], []
    for kw in prompts:
        ref = predictor.predict(emb, multimask=True, **kw)
        masks, _, low = sess.run(None, public_feeds(emb.image_embeddings.numpy(), size, **kw))
        if multimask:
            pairs = list(zip(masks[0, 1:] > 0, ref.masks))
            diffs.append(float(np.abs(low[0, 1:] - ref.low_res_logits).max()))
        else:
            n_points = len(kw.get("points", [])) + (2 if "box" in kw else 1)
            ref_one = ref if n_points <= 2 else predictor.predict(emb, multimask=False, **kw)
            i = int(np.argmax(ref_one.scores))
            pairs = [(masks[0, 0] > 0, ref_one.masks[i])]
            diffs.append(float(np.abs(low[0, 0] - ref_one.low_res_logits[i]).max()))
        for a, b in pairs:
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
    return ExportReport(Path(path), Path(path).stat().st_size, max(diffs), float(np.mean(ious)))
