"""TinyViT-5M image encoder of MobileSAM (``vit_t``).

A conv stem (two stride-2 conv+BN) brings a (B, 3, 1024, 1024) image to a 256x256 grid; one stage of
MBConv blocks follows, then three stages of windowed-attention blocks at 128x128, 64x64 and 64x64 (the last
downsample keeps the resolution so the output matches SAM's 64x64 embedding grid), and a SAM-style neck maps
the channels to 256.

The state_dict matches the ``image_encoder.*`` keys of the released ``mobile_sam.pt`` without the unused
classifier (``norm_head.*``, ``head.*``), which this module deliberately does not have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segany.modeling.common import LayerNorm2d


class ConvBN(nn.Module):
    """Bias-free conv followed by BatchNorm; (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.c = nn.Conv2d(
            in_chans, out_chans, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.c(x))


class PatchEmbed(nn.Module):
    """Conv stem: two stride-2 3x3 conv+BN with a GELU between; (B, C_in, H, W) -> (B, dim, H / 4, W / 4)."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, dim // 2, kernel_size=3, stride=2),
            nn.GELU(),
            ConvBN(dim // 2, dim, kernel_size=3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project); (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, kernel_size=3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        # The activation comes after the residual sum here, unlike in most inverted-residual blocks.
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """Channel change plus depthwise downsample; (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, kernel_size=3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one square window, with a learned bias per head and |offset|.

    ``attention_biases`` (heads, window_size**2) is the learned table; the non-persistent buffer
    ``attention_bias_idxs`` (N, N), N = window_size**2, maps each query/key pair to its table column.
    The bias is gathered from the live table on every call rather than cached: the gather is a few hundred
    thousand elements against tens of GFLOPs of attention, and a cache is exactly what goes stale after a
    checkpoint load (the ~0.7 output error MobileSAM shows when its cached ``ab`` is not recomputed).

    Set ``use_sdpa = True`` to route through ``F.scaled_dot_product_attention`` with the bias as an additive
    mask; the plain path is the reference.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = window_size
        self.use_sdpa = False
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer("attention_bias_idxs", self._bias_index(window_size), persistent=False)

    @staticmethod
    def _bias_index(window_size: int, device: torch.device | None = None) -> torch.Tensor:
        """(N, N) int64 column of the bias table for every (query, key) pair of a window.

        Offsets are symmetric (|dy|, |dx|), so the window_size**2 distinct ones are numbered dy * ws + dx, the
        order in which the released checkpoint's table was laid out.
        """
        pos = torch.arange(window_size, device=device)
        rows = pos.repeat_interleave(window_size)  # (N,) row of each token in the window
        cols = pos.repeat(window_size)  # (N,) column of each token
        dy = (rows[:, None] - rows[None, :]).abs()
        dx = (cols[:, None] - cols[None, :]).abs()
        return dy * window_size + dx

    @torch.no_grad()
    def refresh_attention_biases(self) -> None:
        """Rebuild the index buffer on the table's device.

        The buffer is not in the state_dict, so a model built on the meta device and loaded with
        ``assign=True`` would otherwise keep a meta index.
        """
        self.attention_bias_idxs = self._bias_index(self.window_size, self.attention_biases.device)

    def attention_bias(self) -> torch.Tensor:
        """(heads, N, N) additive bias gathered from the current table."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B * windows, N, C) tokens of each window, N = window_size**2 -> same shape."""
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x))
        # The checkpoint lays qkv out per head as [q | k | v], not as three blocks of all heads.
        qkv = qkv.view(b, n, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)  # each (B * windows, heads, N, head_dim)
        bias = self.attention_bias()
        if self.use_sdpa:
            # SDPA wants a float mask in the query's dtype (bf16 under autocast).
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.scale + bias
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Pre-norm feed-forward; (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise 3x3 conv+BN, MLP; x: (B, H, W, C) channels-last -> same shape."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.local_conv = ConvBN(dim, dim, kernel_size=local_conv_size, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        # Pad bottom/right with zeros to whole windows. There is no mask: padded tokens take part as keys and
        # values (after the attention's LayerNorm), as in the released model, so parity needs the same.
        pad_h, pad_w = (-h) % ws, (-w) % ws
        windows = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        windows = windows.view(b, hp // ws, ws, wp // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        windows = self.attn(windows)
        attended = windows.view(b, hp // ws, wp // ws, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        x = x + attended[:, :h, :w]

        # No residual around the local conv: the checkpoint was trained without one.
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """MBConv blocks then a downsample; (B, C, H, W) -> (B, C_out, H / 2, W / 2)."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """TinyViT blocks then an optional downsample; (B, C, H, W) -> (B, C_out, H / stride, W / stride)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # blocks work channels-last
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """MobileSAM's TinyViT encoder: (B, in_chans, S, S) -> (B, out_chans, S / 16, S / 16), S = img_size.

    The input is already normalised and zero-padded to a square in the 1024 frame. Each embedding cell covers
    16x16 input pixels. Defaults are the released ``vit_t`` (TinyViT-5M) configuration.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: tuple[int, ...] = (64, 128, 160, 320),
        depths: tuple[int, ...] = (2, 2, 6, 2),
        num_heads: tuple[int, ...] = (2, 4, 5, 10),
        window_sizes: tuple[int, ...] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        n = len(embed_dims)
        if n < 2 or not len(depths) == len(num_heads) == len(window_sizes) == n:
            raise ValueError(
                "embed_dims, depths, num_heads and window_sizes need one entry per stage (at least 2), got "
                f"{len(embed_dims)}, {len(depths)}, {len(num_heads)}, {len(window_sizes)}"
            )
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])

        def downsample(i: int) -> PatchMerging:
            # The last downsample keeps the resolution (stride 1): MobileSAM changed TinyViT's 32x reduction
            # to 16x so the embedding grid is SAM's 64x64.
            stride = 1 if i == n - 2 else 2
            return PatchMerging(embed_dims[i], embed_dims[i + 1], stride)

        self.layers = nn.ModuleList([ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, downsample(0))])
        for i in range(1, n):
            self.layers.append(
                AttentionStage(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    downsample(i) if i < n - 1 else None,
                )
            )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @torch.no_grad()
    def refresh_attention_biases(self) -> None:
        """Re-derive every attention module's non-persistent bias state from the current tables.

        Call after ``load_state_dict`` (the loader does). The bias itself is always gathered from the live
        table, so this only rebuilds the index buffers, which a meta-device build would leave on meta.
        """
        for module in self.modules():
            if isinstance(module, WindowAttention):
                module.refresh_attention_biases()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_chans, H, W) float, H and W multiples of 16 (1024 for SAM) -> (B, out_chans, H/16, W/16).

        Under ``torch.autocast`` the matmuls and convs run in the low dtype; the result may come
        back as float32 because the neck's LayerNorm2d mixes in float32 parameters.
        """
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)
