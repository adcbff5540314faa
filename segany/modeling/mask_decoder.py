"""SAM's mask decoder: prompt tokens + image embedding -> low-resolution mask logits and predicted IoU."""

from __future__ import annotations

import torch
from torch import nn

from segany.modeling.common import MLP, LayerNorm2d
from segany.modeling.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts ``num_multimask_outputs + 1`` masks per prompt; token 0 is the single-mask output."""

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks for a batch of prompts.

        Args:
            image_embeddings: (1 or B, C, h, w); batch 1 is shared by all B prompts.
            image_pe: (1, C, h, w) dense positional encoding.
            sparse_prompt_embeddings: (B, K, C).
            dense_prompt_embeddings: (1 or B, C, h, w); batch 1 is shared (e.g. no prompt has a mask input).
            multimask_output: return tokens 1..3 (True) or token 0 (False).
        Returns:
            low_res_logits (B, M, 4h, 4w) and iou_predictions (B, M), M = 3 or 1.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        if multimask_output:
            return masks[:, 1:], iou_pred[:, 1:]
        return masks[:, :1], iou_pred[:, :1]

    def prompt_tokens(self, sparse_prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """IoU token, mask tokens and the prompt's sparse embeddings: (B, K, C) -> (B, 1 + num_mask_tokens + K, C)."""
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1).to(sparse_prompt_embeddings.dtype)
        return torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

    def hypernetwork_weights(self, mask_tokens_out: torch.Tensor) -> torch.Tensor:
        """Per-mask weights over the upscaled channels: (B, num_mask_tokens, C) -> (B, num_mask_tokens, C/8)."""
        return torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` masks: (B, 4, 4h, 4w) logits and (B, 4) IoU predictions."""
        tokens = self.prompt_tokens(sparse_prompt_embeddings)

        if image_embeddings.shape[0] == 1:
            src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
        else:
            src = image_embeddings
        src = src + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = self.hypernetwork_weights(mask_tokens_out)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)
