"""segany: promptable segmentation in the style of Segment Anything.

Public API::

    import segany
    model = segany.load_model()                  # the shipped model; or a variant name / checkpoint path
    predictor = segany.Predictor(model)
    emb = predictor.encode(image)                # HxWx3 uint8 RGB -> ImageEmbedding
    res = predictor.predict(emb, points=[[x, y]], labels=[1])

Names are imported lazily, so ``import segany.client`` (or ``segany.masks``) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ImageEmbedding": "segany.embedding",
    "SeganyError": "segany.errors",
    "VARIANTS": "segany.models",
    "build_model": "segany.models",
    "load_model": "segany.models",
    "PredictionResult": "segany.predictor",
    "Predictor": "segany.predictor",
}

__all__ = [*sorted(_EXPORTS), "__version__"]

if TYPE_CHECKING:
    from segany.embedding import ImageEmbedding  # noqa: F401  (re-exported lazily through __getattr__)
    from segany.errors import SeganyError  # noqa: F401
    from segany.models import VARIANTS, build_model, load_model  # noqa: F401
    from segany.predictor import PredictionResult, Predictor  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'segany' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
