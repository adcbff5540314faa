"""LiteEncoder: the small, fully convolutional image encoder of the shipped ``segany-lite`` model.

It produces the same embedding as SAM's ViT encoders, ``(B, 256, S/16, S/16)``, so the standard prompt encoder and
mask decoder (and the ONNX/browser paths built on them) work on it unchanged.

Layout (channels at each stride, input side S):

    stem    conv3x3 s2 -> conv3x3 s2                      S/4   c0
    stage1  inverted-residual blocks (first one s2)       S/8   c1
    stage2  inverted-residual blocks (first one s2)       S/16  c2
    stage3  inverted-residual blocks (first one s2)       S/32  c3
    stage4  inverted-residual blocks (first one s2)       S/64  c4  + one global self-attention block
    top-down fusion: S/64 -> S/32 -> S/16 (upsample + 1x1 lateral, then a depthwise 3x3 mix)
    neck    conv1x1 -> LayerNorm2d -> conv3x3 -> LayerNorm2d  (as SAM's neck)   S/16  256

The S/64 attention gives every output cell a view of the whole image at little cost (16x16 tokens at S=1024),
which SAM-style prompts need: a click must be able to select a large object. Being convolutional, the encoder runs at
any S that is a multiple of 64, so it can be trained at 512 and used at 1024.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.common import LayerNorm2d


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) -> per-image channel norm -> optional ReLU. Padding keeps the size (divided by the stride).

    The norm is ``GroupNorm`` with one channel per group: each image's channels are normalised over its own pixels
    (InstanceNorm with an affine, as GroupNorm has a fast channels-last CPU kernel), so an embedding never depends on
    the other images of a batch or on population statistics. Stages 1-5 of the shipped model were trained with
    BatchNorm on 1-3 images per step, which made the network rely on per-image statistics: with BatchNorm's running
    averages at inference the held-out box mIoU was 0.65, with per-image statistics 0.78 (docs/shipped_model.md).

    ReLU rather than GELU: its backward pass is markedly cheaper on CPU, and training time is the binding budget.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, act: bool) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.GroupNorm(out_ch, out_ch),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MBConv block: 1x1 expand -> depthwise kxk (stride s) -> 1x1 project, residual when shapes match.

    Input (B, in_ch, H, W) -> output (B, out_ch, H/s, W/s).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int, kernel: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.expand = ConvNormAct(in_ch, hidden, 1, 1, 1, act=True)
        self.depthwise = ConvNormAct(hidden, hidden, kernel, stride, hidden, act=True)
        self.project = ConvNormAct(hidden, out_ch, 1, 1, 1, act=False)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.use_residual else y


class GlobalAttentionBlock(nn.Module):
    """Pre-norm transformer block over all cells of a (B, C, H, W) map; output has the same shape.

    A learned positional bias is added to the tokens; it is stored at ``pos_size`` x ``pos_size`` and resized
    bilinearly when the map has another size (training at 512 and inference at 1024 see 8x8 and 16x16 maps).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, pos_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, pos_size, pos_size))
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pos = self.pos_embed
        if pos.shape[-2:] != (h, w):
            pos = F.interpolate(pos, size=(h, w), mode="bilinear", align_corners=False)
        t = (x + pos.to(x.dtype)).flatten(2).transpose(1, 2)  # (B, HW, C)
        y = self.norm1(t)
        qkv = self.qkv(y).reshape(b, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, HW, head_dim)
        t = t + self.proj(y.transpose(1, 2).reshape(b, h * w, c))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class LiteEncoder(nn.Module):
    """Small convolutional image encoder with SAM's output contract.

    Args:
        channels: widths of the stem and the four stages (strides 4, 8, 16, 32, 64).
        depths: number of inverted-residual blocks in stages 1-4.
        expand: expansion ratio of the inverted-residual blocks.
        kernel: depthwise kernel size in the stages.
        fpn_dim: width of the top-down fusion path.
        out_chans: embedding channels (256 for the SAM decoder).
        attn_heads: heads of the global attention block at stride 64.
        attn_pos_size: side of the stored positional bias of that block (16 = a 1024 input).

    Input: float (B, 3, S, S), normalised as SAM does, S a multiple of 64 (1024 in use).
    Output: float (B, out_chans, S/16, S/16).
    """

    def __init__(
        self,
        channels: tuple[int, int, int, int, int] = (32, 64, 128, 192, 256),
        depths: tuple[int, int, int, int] = (2, 3, 4, 2),
        expand: int = 3,
        kernel: int = 5,
        fpn_dim: int = 192,
        out_chans: int = 256,
        attn_heads: int = 8,
        attn_pos_size: int = 16,
    ) -> None:
        super().__init__()
        c0, c1, c2, c3, c4 = channels
        self.stem = nn.Sequential(
            ConvNormAct(3, c0 // 2, 3, 2, 1, act=True),
            ConvNormAct(c0 // 2, c0, 3, 2, 1, act=True),
        )
        self.stages = nn.ModuleList()
        in_ch = c0
        for out_ch, depth in zip((c1, c2, c3, c4), depths):
            blocks = [InvertedResidual(in_ch, out_ch, 2, expand, kernel)]
            blocks += [InvertedResidual(out_ch, out_ch, 1, expand, kernel) for _ in range(depth - 1)]
            self.stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.attn = GlobalAttentionBlock(c4, attn_heads, 2, attn_pos_size)
        # Top-down fusion: laterals from strides 16, 32 and 64.
        self.lateral16 = nn.Conv2d(c2, fpn_dim, 1)
        self.lateral32 = nn.Conv2d(c3, fpn_dim, 1)
        self.lateral64 = nn.Conv2d(c4, fpn_dim, 1)
        self.mix32 = ConvNormAct(fpn_dim, fpn_dim, 3, 1, fpn_dim, act=True)
        self.mix16 = ConvNormAct(fpn_dim, fpn_dim, 3, 1, fpn_dim, act=True)
        self.neck = nn.Sequential(
            nn.Conv2d(fpn_dim, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised image -> (B, out_chans, S/16, S/16) embedding."""
        x = self.stem(x)
        x8 = self.stages[0](x)
        x16 = self.stages[1](x8)
        x32 = self.stages[2](x16)
        x64 = self.attn(self.stages[3](x32))
        y = self.lateral64(x64)
        y = self.lateral32(x32) + F.interpolate(y, size=x32.shape[-2:], mode="nearest")
        y = self.mix32(y)
        y = self.lateral16(x16) + F.interpolate(y, size=x16.shape[-2:], mode="bilinear", align_corners=False)
        y = self.mix16(y)
        return self.neck(y)
