"""Pure torch modules of the SAM family. No I/O, no numpy, no logging."""

from segany.modeling.common import MLP, LayerNorm2d, MLPBlock
from segany.modeling.image_encoder import ImageEncoderViT
from segany.modeling.mask_decoder import MaskDecoder
from segany.modeling.prompt_encoder import PromptEncoder
from segany.modeling.sam import Sam
from segany.modeling.transformer import TwoWayTransformer

__all__ = [
    "MLP",
    "ImageEncoderViT",
    "LayerNorm2d",
    "MLPBlock",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "TwoWayTransformer",
]
