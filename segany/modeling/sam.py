"""The Sam composite: receives built parts; holds the normalisation constants as non-persistent buffers."""

from __future__ import annotations

import torch
from torch import nn

from segany.modeling.mask_decoder import MaskDecoder
from segany.modeling.prompt_encoder import PromptEncoder

#: Per-channel RGB mean and std on the 0-255 scale used by the released SAM family.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Image encoder + prompt encoder + mask decoder.

    ``image_size`` is the side of the square encoder input (1024 for the released models).
    The state_dict has exactly the released checkpoints' prefixes: ``image_encoder.``, ``prompt_encoder.``,
    ``mask_decoder.`` (the pixel statistics are not stored).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        image_size: int = 1024,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = image_size
        # Explicit device: derived constants stay real when the model is built on the meta device for loading.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, device="cpu").view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, device="cpu").view(-1, 1, 1), persistent=False)

    def normalize_and_pad(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float RGB on the 0-255 scale, h, w <= image_size -> (B, 3, S, S), zero-padded bottom/right.

        Normalising happens before padding, so the padding is exactly zero in the normalised frame.
        """
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return nn.functional.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
        image_pe: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder for B prompts on one image; coordinates in the input frame.

        ``image_pe`` is ``prompt_encoder.get_dense_pe()``; callers that decode often pass it precomputed.
        Returns low-res logits (B, M, 256, 256) and IoU predictions (B, M).
        """
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.prompt_encoder(points, boxes, mask_input)
        if image_pe is None:
            image_pe = self.prompt_encoder.get_dense_pe()
        return self.mask_decoder(image_embeddings, image_pe, sparse, dense, multimask_output)
