"""Segment everything through a running segany server: the server encodes and decodes, this process filters.

The server returns each grid click's three low-res logit maps (``low_res_logits``) and scores; upscaling,
thresholds, NMS and crops run here with the same code as the in-process generator. Clicks travel as float32
(the API's type) where the in-process generator keeps float64, so a logit can differ in its last bits; masks
agree except at pixels within rounding of the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from segany.everything import AutomaticMaskGenerator, EverythingSettings
from segany.transforms import input_size_for


@dataclass(frozen=True)
class RemoteCrop:
    """A crop the server holds: its image id and sizes (what the generator reads from an embedding)."""

    id: str
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class RemoteMaskGenerator(AutomaticMaskGenerator):
    """:class:`AutomaticMaskGenerator` with the encoder and decoder on a server (``segany.client.Client``)."""

    def __init__(self, client, settings: EverythingSettings) -> None:
        super().__init__(None, settings)
        self.client = client
        self.image_size = int(client.model_info().image_size or 1024)

    def _encode_crop(self, crop: np.ndarray) -> RemoteCrop:
        embedded = self.client.embed(np.ascontiguousarray(crop))
        size = (embedded.height, embedded.width)
        return RemoteCrop(embedded.id, size, input_size_for(size, self.image_size))

    def _decode_points(self, emb: RemoteCrop, points: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        from segany.client import Outputs

        prompts = [{"points": [[float(x), float(y)]], "labels": [1]} for x, y in points]
        outputs = Outputs(rle=False, low_res_logits=True)
        results = self.client.segment_many(emb.id, prompts, multimask=True, outputs=outputs)
        low_res = torch.from_numpy(np.stack([r.low_res_logits for r in results]).astype(np.float32))
        scores = torch.from_numpy(np.stack([r.scores for r in results]).astype(np.float32))
        return low_res, scores
