"""segany: promptable segmentation in the style of Segment Anything.

Public API::

    import segany
    model = segany.load_model()                  # the shipped model; or a variant name / checkpoint path
    predictor = segany.Predictor(model)
    emb = predictor.encode(image)                # HxWx3 uint8 RGB -> ImageEmbedding
    res = predictor.predict(emb, points=[[x, y]], labels=[1])
"""

from segany.embedding import ImageEmbedding
from segany.errors import SeganyError
from segany.models import VARIANTS, build_model, load_model
from segany.predictor import PredictionResult, Predictor

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "ImageEmbedding",
    "PredictionResult",
    "Predictor",
    "SeganyError",
    "__version__",
    "build_model",
    "load_model",
]
