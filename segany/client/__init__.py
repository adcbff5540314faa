"""Python client for the segany gRPC service: numpy in, numpy out, typed errors. Never imports torch.

Example::

    from segany.client import Client
    with Client("127.0.0.1:50051") as c:
        img = c.embed(open("photo.jpg", "rb").read())        # or an (H, W, 3) uint8 array
        res = c.segment(img.id, points=[[x, y]], labels=[1], multimask=True)
        res.masks   # (3, H, W) bool
        res.scores  # (3,) float32

:class:`AsyncClient` has the same methods as coroutines. Errors are :class:`ServiceError` subclasses, one per
status code, each also a subclass of the matching :mod:`segany.errors` class (``NotFound`` is a
``NotFoundError``); ``.code`` is the ``grpc.StatusCode`` and ``.message`` the server's message. Only calls
answered UNAVAILABLE are retried (every unary RPC here is idempotent: an image id depends only on content), with
exponential back-off, within the call's timeout.
"""
from __future__ import annotations

from segany.client.clients import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TIMEOUT, AsyncClient, Client
from segany.client.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    error_from_rpc,
)
from segany.client.messages import (
    EmbeddedImage,
    Outputs,
    SegmentResult,
    StreamResult,
    image_source,
    make_prompt,
    parse_result,
    segment_request,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_TIMEOUT", "AsyncClient", "Cancelled", "Client", "DeadlineExceeded",
    "EmbeddedImage", "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "Outputs", "PermissionDenied",
    "ResourceExhausted", "SegmentResult", "ServiceError", "StreamResult", "Unauthenticated", "Unavailable",
    "Unimplemented", "error_from_rpc", "image_source", "make_prompt", "parse_result", "segment_request",
]
