"""SAM's prompt encoder: points, boxes and a previous mask into sparse and dense embeddings.

Written with ``torch.where`` and arithmetic masks instead of in-place boolean indexing, so the same code traces to
ONNX (no second copy for export).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from segany.modeling.common import LayerNorm2d

#: Point labels understood by the encoder. Box corners are points with labels 2 (top-left) and 3 (bottom-right).
LABEL_PAD, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_BOX_TL, LABEL_BOX_BR = -1, 0, 1, 2, 3


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates."""

    def __init__(self, num_pos_feats: int = 128, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) coordinates in [0, 1] -> (..., 2 * num_pos_feats)."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of a (h, w) grid at cell centres -> (C, h, w)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return self.encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(B, N, 2) pixel coordinates (x, y) in an image of ``image_size`` (h, w) -> (B, N, C)."""
        scale = torch.tensor([1.0 / image_size[1], 1.0 / image_size[0]], dtype=coords.dtype, device=coords.device)
        return self.encode(coords * scale)


class PromptEncoder(nn.Module):
    """Encodes prompts for the mask decoder.

    Attributes ``input_image_size`` (h, w) and ``image_embedding_size`` (h, w) are plain values: the Fourier encoding
    normalises by them, so the same weights serve another resolution when both are changed together.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # negative, positive, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid: (1, C, h, w)."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sparse embeddings of labelled points.

        Args:
            coords: (B, N, 2) float (x, y) in the input frame (the resized image, before padding), pixel units.
            labels: (B, N) -1 padding, 0 negative, 1 positive, 2 box top-left, 3 box bottom-right.
        Returns:
            (B, N, C). Padding points carry only ``not_a_point_embed``.
        """
        emb = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)  # +0.5: pixel centres
        labels = labels.unsqueeze(-1)
        emb = torch.where(labels == LABEL_PAD, self.not_a_point_embed.weight.to(emb.dtype), emb)
        for i, table in enumerate(self.point_embeddings):
            emb = emb + torch.where(labels == i, table.weight.to(emb.dtype), torch.zeros_like(emb[..., :1]))
        return emb

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, 4h, 4w) mask logits -> (B, C, h, w)."""
        return self.mask_downscaling(masks)

    def no_mask_dense(self, batch: int) -> torch.Tensor:
        h, w = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed any combination of prompts.

        Args:
            points: (coords (B, N, 2), labels (B, N)) in the input frame, or None.
            boxes: (B, 4) x0, y0, x1, y1 in the input frame, or None. Without a box a padding point is appended to
                the points, as the released models expect.
            masks: (B, 1, 4h, 4w) low-res mask logits from an earlier prediction, or None.
        Returns:
            sparse (B, K, C) in the order points (+ padding), box corners; dense (B, C, h, w).
        """
        batch = _batch_size(points, boxes, masks)
        device = self.no_mask_embed.weight.device
        coords_parts: list[torch.Tensor] = []
        label_parts: list[torch.Tensor] = []
        if points is not None:
            coords, labels = points
            coords_parts.append(coords)
            label_parts.append(labels)
            if boxes is None:
                coords_parts.append(torch.zeros((batch, 1, 2), dtype=coords.dtype, device=coords.device))
                label_parts.append(torch.full((batch, 1), LABEL_PAD, dtype=labels.dtype, device=labels.device))
        if boxes is not None:
            coords_parts.append(boxes.reshape(-1, 2, 2))
            corner_labels = torch.tensor([LABEL_BOX_TL, LABEL_BOX_BR], device=boxes.device)
            label_parts.append(corner_labels.expand(boxes.shape[0], 2))
        if coords_parts:
            sparse = self.embed_points(torch.cat(coords_parts, dim=1), torch.cat(label_parts, dim=1))
        else:
            sparse = torch.empty((batch, 0, self.embed_dim), device=device)
        dense = self.embed_masks(masks) if masks is not None else self.no_mask_dense(batch)
        return sparse, dense


def _batch_size(
    points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None, masks: torch.Tensor | None
) -> int:
    if points is not None:
        return points[0].shape[0]
    if boxes is not None:
        return boxes.shape[0]
    if masks is not None:
        return masks.shape[0]
    return 1
