"""A faster, value-preserving rewrite of SAM's mask decoder, for the predictor's ``fast`` path and the ONNX export.

The rewrite changes no value beyond float rounding (``tests/modeling/test_fast_decoder.py`` compares it with the
plain decoder on random weights):

- the three token -> image and two image -> token cross-attentions move their projections to the small side (the
  prompt tokens) by associativity, so the 4096 image tokens are never projected: about 40% fewer multiply-adds per
  prompt (:class:`FewQueryAttention`, :class:`FewKeyAttention`);
- in eager torch on the CPU, many prompts go through the decoder :data:`PROMPTS_PER_PASS` at a time: the
  image-side work is per prompt and memory-bound (each prompt carries its own (4096, 256) image tokens and
  (65536, 32) upscaled features), and one pass over 16 prompts spent 51-55 ms per prompt against 29-33 ms in
  passes of 2 (2 threads);
- the output upscaling's two ConvTranspose2d (kernel = stride = 2) run as plain matrix products on the image tokens
  kept (B, N, C) channels-last, with the pixels left in pixel-major order (each low-res cell followed by its 2x2 and
  then 2x2 sub-pixels): no col2im scatter of the 8 MiB feature map, no transposed copies, LayerNorm2d as a
  layer norm over the last axis (onnxruntime's fused LayerNormalization, not a chain of ReduceMean and Pow); only
  the few mask planes are put back in raster order (:class:`PixelMajorUpscaling`, :class:`FastMaskDecoder`,
  :func:`pixel_major_to_raster`).

:func:`fast_mask_decoder` returns a rewritten copy that shares the original's parameters; the model is untouched.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.common import LayerNorm2d
from segany.modeling.mask_decoder import MaskDecoder
from segany.modeling.transformer import TwoWayAttentionBlock, TwoWayTransformer

#: Softmax weights below this are set to zero before they meet the values (see :func:`flush_tiny`).
TINY_WEIGHT = 2.0**-100
#: Prompts per pass through :class:`FastMaskDecoder` in eager torch. Measured per prompt on 16 boxes (shipped model,
#: 2 threads, session 6): passes of 1: 37 ms, 2: 29-33, 3: 33-38, 4: 32-46, 6: 41-45, all 16 at once: 51-55.
PROMPTS_PER_PASS = 2


def _exporting() -> bool:
    """True while the module is being traced for the ONNX export (ops must then be exportable)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def flush_tiny(weights: torch.Tensor) -> torch.Tensor:
    """Softmax weights with those below :data:`TINY_WEIGHT` (about 8e-31) set to zero (in place in eager torch).

    A softmax over 4096 image tokens leaves many weights in float32's subnormal range (below 1.2e-38). x86 CPUs
    multiply subnormals in microcode: one (4096, 56) x (56, 256) product of the decoder ran 8x slower on them than on
    normal numbers, and the whole low-res decode 1.35x slower. A dropped weight changes an output by less than 2**-100
    of the largest value, far below the float32 rounding of a sum whose largest weight is at least 1/4096. The ONNX
    export gets the same step, so onnxruntime (native or WebAssembly) gains too.
    """
    if _exporting():
        # Relu(w - TINY): two cheap elementwise ops where onnxruntime's broadcasting Where was slow. A weight above
        # 2**-74 is unchanged (TINY is below half its ulp); a smaller one moves by at most TINY.
        return F.relu(weights - TINY_WEIGHT)
    return torch.threshold_(weights, TINY_WEIGHT, 0.0)


class _MovedProjections(nn.Module):
    """Base of the rewritten cross-attentions: wraps an :class:`Attention` and shares its parameters."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.heads = attn.num_heads
        self.head_dim = attn.internal_dim // attn.num_heads


class FewQueryAttention(_MovedProjections):
    """:class:`Attention` for a few queries over many keys (tokens -> image), with the projections moved.

    Per head h, scores ``(q Wq_h + bq_h)(k Wk_h + bk_h)^T = ((q Wq_h + bq_h) Wk_h^T) k^T + a per-row constant``
    (softmax drops it), and ``softmax(S) (v Wv_h + bv_h) = (softmax(S) v) Wv_h + bv_h`` (rows of softmax sum to
    1). So the 4096 image tokens are never projected: two (heads*Nq, C) x (C, Nk) products instead of two
    (Nk, C) x (C, C/2) ones, less than half the multiply-adds. Shares the wrapped layers' parameters.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a, heads, d = self.attn, self.heads, self.head_dim
        b, n_q, c = q.shape
        qh = a._heads(a.q_proj(q))  # (B, heads, Nq, d)
        q_in_k = qh @ a.k_proj.weight.reshape(heads, d, c)  # (B, heads, Nq, C)
        scores = q_in_k.reshape(b, heads * n_q, c) @ k.transpose(1, 2)  # (B, heads*Nq, Nk)
        weights = flush_tiny((scores / math.sqrt(d)).softmax(dim=-1))
        mixed = (weights @ v).reshape(b, heads, n_q, c)  # softmax-weighted image tokens, per head
        out = mixed @ a.v_proj.weight.reshape(heads, d, c).transpose(1, 2) + a.v_proj.bias.reshape(heads, 1, d)
        return a.out_proj(out.transpose(1, 2).reshape(b, n_q, heads * d))


class FewKeyAttention(_MovedProjections):
    """:class:`Attention` for many queries over a few keys (image -> tokens), with the projections moved.

    Per head h, scores ``(q Wq_h + bq_h) k_h^T = q (Wq_h k_h^T) + bq_h k_h^T`` and the output
    ``sum_h softmax(S_h) (v_h Wo_h) + bo``: the 4096 image tokens meet one (C, heads*Nk) and one (heads*Nk, C)
    matrix instead of the (C, C/2) query and (C/2, C) output projections. Each head's softmax weights sum to 1, so
    ``bo / heads`` is added to each key's value instead of ``bo`` to every output row (a (heads*Nk, C) add, not a
    pass over the image tokens). Shares the wrapped layers' parameters.

    The scores are laid out (B, heads, Nk, Nq), keys on axis 2, and in the exported graph the softmax over the few
    keys is written out (max, exp, sum, divide): onnxruntime's Softmax over a last axis of 7 runs one short row at a
    time. With both, the 16-box batched graph ran 442 instead of 490 ms (shipped weights, 2 threads, session 10).
    The queries ``q`` may be one image's tokens (batch 1) shared by all prompts.
    """

    def _projected(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled scores (B, heads*Nk, Nq) and each key's value through the output projection (B, heads*Nk, C)."""
        a, heads, d = self.attn, self.heads, self.head_dim
        b, n_k, c = k.shape
        kh = a._heads(a.k_proj(k))  # (B, heads, Nk, d)
        vh = a._heads(a.v_proj(v))
        k_to_q = (kh @ a.q_proj.weight.reshape(heads, d, c)).reshape(b, heads * n_k, c)
        bias = (kh @ a.q_proj.bias.reshape(heads, d, 1)).reshape(b, heads * n_k, 1)
        qt = q.transpose(1, 2)
        if _exporting():
            scores = k_to_q @ qt + bias  # a broadcasting MatMul: no copy of shared queries
        else:
            scores = torch.baddbmm(bias, k_to_q, qt.expand(b, -1, -1))
        wo = a.out_proj.weight.reshape(c, heads, d).permute(1, 2, 0)  # (heads, d, C)
        values = (vh @ wo + a.out_proj.bias / heads).reshape(b, heads * n_k, c)
        return scores / math.sqrt(d), values

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n_k = k.shape[:2]
        n_q = q.shape[1]
        scores, values = self._projected(q, k, v)
        scores = scores.reshape(b, self.heads, n_k, n_q)
        if _exporting():
            e = torch.exp(scores - scores.amax(dim=2, keepdim=True))
            weights = e / e.sum(dim=2, keepdim=True)
        else:
            weights = scores.softmax(dim=2)  # along the queries in memory, fast in eager torch
        weights = flush_tiny(weights).reshape(b, self.heads * n_k, n_q)
        return weights.transpose(1, 2) @ values  # the transpose goes to the product as strides, not a copy


class PixelMajorUpscaling(nn.Module):
    """SAM's ``output_upscaling`` (ConvT 2x2/2, LayerNorm2d, GELU, ConvT 2x2/2, GELU) on (B, N, C) tokens.

    A ConvTranspose2d whose kernel equals its stride sends each input pixel to its own 2x2 block: one ``F.linear``
    with output columns (dy, dx, channel), bias included, no col2im scatter. Everything after it is per pixel, so the
    pixels stay in the order (y, x, dy1, dx1, dy2, dx2) and LayerNorm2d becomes ``F.layer_norm`` over the last axis.
    Input (B, h*w, C) in raster order -> (B, 16*h*w, C/8). Shares the wrapped layers' parameters.
    """

    def __init__(self, upscaling: nn.Sequential) -> None:
        super().__init__()
        self.deconv1, self.norm, self.act1, self.deconv2, self.act2 = upscaling

    @staticmethod
    def supports(upscaling: nn.Module) -> bool:
        """True for SAM's layout: two plain ConvTranspose2d with kernel = stride = 2, LayerNorm2d and GELUs."""
        if not isinstance(upscaling, nn.Sequential) or len(upscaling) != 5:
            return False
        d1, norm, a1, d2, a2 = upscaling
        plain = all(
            isinstance(d, nn.ConvTranspose2d)
            and d.kernel_size == (2, 2)
            and d.stride == (2, 2)
            and d.padding == (0, 0)
            and d.output_padding == (0, 0)
            and d.dilation == (1, 1)
            and d.groups == 1
            for d in (d1, d2)
        )
        return plain and isinstance(norm, LayerNorm2d) and isinstance(a1, nn.GELU) and isinstance(a2, nn.GELU)

    @staticmethod
    def _linear(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
        weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * conv.out_channels, conv.in_channels)  # rows (dy, dx, o)
        bias = conv.bias.repeat(4) if conv.bias is not None else None
        b, n, _ = x.shape
        return F.linear(x, weight, bias).reshape(b, 4 * n, conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._linear(x, self.deconv1)
        y = self.act1(F.layer_norm(y, self.norm.weight.shape, self.norm.weight, self.norm.bias, self.norm.eps))
        return self.act2(self._linear(y, self.deconv2))


class FastMaskDecoder(MaskDecoder):
    """The mask decoder with image tokens kept (B, N, C) contiguous end to end (see :func:`fast_mask_decoder`).

    The image embedding is broadcast over the prompts instead of repeated. On the CPU, more than
    ``prompts_per_pass`` prompts (:data:`PROMPTS_PER_PASS`) go through in passes of that many. ``predict_masks``
    returns raster-order logits (B, M, 4h, 4w), or with ``pixel_major_output`` set (the ONNX export) the planes as
    (B, M, 16hw) in pixel-major order, so that only the planes kept after the mask selection are reordered
    (:func:`pixel_major_to_raster`).
    """

    pixel_major_output = False
    prompts_per_pass = PROMPTS_PER_PASS

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, step = sparse_prompt_embeddings.shape[0], self.prompts_per_pass
        # One pass: few prompts, an ONNX graph (any batch in one run), or an accelerator (measured on the CPU only).
        if batch <= step or _exporting() or image_embeddings.device.type != "cpu":
            return self._predict_pass(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        parts = []
        for i in range(0, batch, step):
            part = slice(i, i + step)
            emb = image_embeddings if image_embeddings.shape[0] == 1 else image_embeddings[part]
            dense = dense_prompt_embeddings if dense_prompt_embeddings.shape[0] == 1 else dense_prompt_embeddings[part]
            parts.append(self._predict_pass(emb, image_pe, sparse_prompt_embeddings[part], dense))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _predict_pass(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.prompt_tokens(sparse_prompt_embeddings)
        h, w = image_embeddings.shape[-2:]
        image_tokens = image_embeddings.flatten(2).transpose(1, 2)  # (1 or B, N, C)
        src = (image_tokens + dense_prompt_embeddings.flatten(2).transpose(1, 2)).contiguous()
        pos_src = image_pe.flatten(2).transpose(1, 2).contiguous()  # (1, N, C), broadcast over the prompts
        hs, src = self.transformer(src, pos_src, tokens)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        upscaled = self.output_upscaling(src)  # (B, 16N, C/8), pixels (y, x, dy1, dx1, dy2, dx2)
        hyper_in = self.hypernetwork_weights(hs[:, 1 : 1 + self.num_mask_tokens, :])
        masks = hyper_in @ upscaled.transpose(1, 2)  # (B, M, 16N), same pixel order
        return (masks if self.pixel_major_output else pixel_major_to_raster(masks, h, w)), iou_pred


def pixel_major_to_raster(masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, M, 16hw) planes with pixels (y, x, dy1, dx1, dy2, dx2) -> (B, M, 4h, 4w), rows 4y + 2dy1 + dy2.

    In eager torch the two dx2 neighbours move together as one integer twice the float's width: a 7-D permute of
    pairs ran about 10x faster than the 8-D permute of single floats (1.3 -> 0.1 ms for 4 planes of 256x256 on 2
    threads). Bit-exact either way. A dtype view carries no gradient and does not export, so under autograd and in
    the ONNX export the plain permute runs.
    """
    b, m, _ = masks.shape
    pair = _PAIR_DTYPES.get(masks.element_size())
    if pair is None or _exporting() or (masks.requires_grad and torch.is_grad_enabled()):
        blocks = masks.reshape(b, m, h, w, 2, 2, 2, 2)
        return blocks.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(b, m, 4 * h, 4 * w)
    pairs = masks.contiguous().view(pair).reshape(b, m, h, w, 2, 2, 2)  # (y, x, dy1, dx1, dy2) pairs
    pairs = pairs.permute(0, 1, 2, 4, 6, 3, 5).reshape(b, m, 4 * h, 2 * w)  # (y, dy1, dy2) x (x, dx1)
    return pairs.view(masks.dtype)


#: An integer type as wide as two elements of each float size (bf16/fp16 pairs move as int32, fp32 as int64).
_PAIR_DTYPES = {2: torch.int32, 4: torch.int64}


def fast_mask_decoder(mask_decoder: nn.Module, for_onnx: bool = True) -> nn.Module:
    """A copy of ``mask_decoder`` with the cross-attentions and upscaling rewritten (see the module docstring).

    When the decoder has SAM's layout the copy is a :class:`FastMaskDecoder`. ``for_onnx=True`` (the export): its
    ``pixel_major_output`` is set, so its low-res logits are (B, M, 16hw) planes to pass through
    :func:`pixel_major_to_raster` after picking the wanted ones. ``for_onnx=False`` (eager torch, the predictor):
    logits come out in raster order.

    Modules are copied, parameters shared (the deepcopy memo maps each tensor to itself): the model is untouched.
    """
    tensors = {id(t): t for t in [*mask_decoder.parameters(), *mask_decoder.buffers()]}
    fast = copy.deepcopy(mask_decoder, tensors)
    for module in fast.modules():
        if isinstance(module, TwoWayAttentionBlock):
            module.cross_attn_token_to_image = FewQueryAttention(module.cross_attn_token_to_image)
            module.cross_attn_image_to_token = FewKeyAttention(module.cross_attn_image_to_token)
        elif isinstance(module, TwoWayTransformer):
            module.final_attn_token_to_image = FewQueryAttention(module.final_attn_token_to_image)
    if type(fast) is MaskDecoder and PixelMajorUpscaling.supports(fast.output_upscaling):
        fast.__class__ = FastMaskDecoder
        fast.output_upscaling = PixelMajorUpscaling(fast.output_upscaling)
        fast.pixel_major_output = for_onnx
    return fast
