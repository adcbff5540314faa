"""SAM's ViT image encoder (vit_b / vit_l / vit_h), state_dict-compatible with the released checkpoints.

Frames: input is a normalised, zero-padded (B, 3, 1024, 1024) tensor; tokens live channels-last on a 64x64 grid
(patch 16); output is (B, 256, 64, 64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.common import LayerNorm2d, MLPBlock


class ImageEncoderViT(nn.Module):
    """Plain ViT with windowed and global attention blocks, decomposed relative positions and a conv neck."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        global_attn_indexes: tuple[int, ...],
        window_size: int,
        out_chans: int = 256,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised image -> (B, out_chans, S/16, S/16)."""
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patch convolution; returns channels-last tokens (B, H/p, W/p, D)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size`` 0 means global attention over the whole grid."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, D) -> (B, H, W, D)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Attention(nn.Module):
    """Multi-head attention with decomposed relative-position terms added to the logits.

    ``use_sdpa`` switches to ``F.scaled_dot_product_attention`` with the position terms as an additive mask; it is
    set from outside (``segany.optimize``). The plain path is the reference.
    """

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
        self.use_sdpa = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, D) -> (B, H, W, D)."""
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, hd)
        rel_h, rel_w = relative_position_terms(q, self.rel_pos_h, self.rel_pos_w, (h, w))
        if self.use_sdpa:
            out = _sdpa_with_rel_pos(q, k, v, rel_h.to(q.dtype), rel_w.to(q.dtype))
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = attn.view(b, self.num_heads, h, w, h, w) + rel_h[..., :, None] + rel_w[..., None, :]
            attn = attn.view(b, self.num_heads, n, n).softmax(dim=-1)
            out = attn @ v
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


#: Queries per SDPA call in :func:`_sdpa_with_rel_pos`: the additive mask of one call is heads x this x N values.
SDPA_QUERY_CHUNK = 256


def _sdpa_with_rel_pos(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor
) -> torch.Tensor:
    """Scaled-dot-product attention with the decomposed position terms as the additive mask, a few query rows at a time.

    The full mask of a global-attention block is heads x N x N (12 x 4096 x 4096 for vit_b: 400 MB in bf16); building
    it in one piece costs more than the attention itself (two passes over DRAM). Per chunk of query rows it stays in
    cache. Queries are independent in attention, so the chunks give the one-piece result.

    Args:
        q, k, v: (B, heads, H*W, hd); rel_h (B, heads, H, W, H), rel_w (B, heads, H, W, W).
    Returns:
        (B, heads, H*W, hd).
    """
    b, heads, hh, ww, _ = rel_h.shape
    n = hh * ww
    rows = max(1, SDPA_QUERY_CHUNK // ww)
    if rows >= hh:
        mask = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, heads, n, n)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=v.dtype, device=v.device)
    for r0 in range(0, hh, rows):
        r1 = min(hh, r0 + rows)
        part = slice(r0 * ww, r1 * ww)
        mask = (rel_h[:, :, r0:r1, :, :, None] + rel_w[:, :, r0:r1, :, None, :]).reshape(b, heads, (r1 - r0) * ww, n)
        out[:, :, part] = F.scaled_dot_product_attention(q[:, :, part], k, v, attn_mask=mask)
    return out


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Table rows for every (query, key) offset: (q_size, k_size, head_dim).

    The table is resized linearly when a checkpoint was trained at another grid size.
    """
    span = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != span:
        rel_pos = F.interpolate(rel_pos.T[None], size=span, mode="linear")[0].T
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


def relative_position_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decomposed relative-position logits from the unscaled queries.

    Args:
        q: (B, heads, H*W, hd) queries.
    Returns:
        rel_h (B, heads, H, W, H) and rel_w (B, heads, H, W, W); logit[qh, qw, kh, kw] gains
        rel_h[qh, qw, kh] + rel_w[qh, qw, kw].
    """
    h, w = size
    r_h = get_rel_pos(h, h, rel_pos_h).to(q.dtype)
    r_w = get_rel_pos(w, w, rel_pos_w).to(q.dtype)
    r_q = q.reshape(*q.shape[:2], h, w, q.shape[-1])
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)
    return rel_h, rel_w


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, window, window, C), zero-padding bottom/right to a multiple of ``window``.

    Padded tokens are not masked: they take part in attention as keys/values, as in the released models.
    """
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding: -> (B, H, W, C)."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()
