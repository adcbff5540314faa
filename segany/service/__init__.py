"""The gRPC service: settings, servicer, server factory, interceptors, metrics.

``from segany.service import create_server, Settings``. Names are imported lazily so that
``segany.service.proto`` (used by the client) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Settings": "segany.service.settings",
    "create_server": "segany.service.server",
    "serve": "segany.service.server",
    "Service": "segany.service.server",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'segany.service' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
