"""One exception hierarchy for segany.

Every error a user can cause is a subclass of :class:`SeganyError`. Each boundary translates it once:
the gRPC service into a status code (see ``GRPC_CODE``), the client back into these classes, the CLI into an
exit code with a one-line reason. Messages say what was wrong and what is accepted.
"""

from __future__ import annotations


class SeganyError(Exception):
    """Base class of every error segany raises on purpose."""

    #: Name of the gRPC status code this error maps to (a ``grpc.StatusCode`` member name).
    grpc_code = "INTERNAL"


class InvalidInputError(SeganyError, ValueError):
    """The request itself is malformed: bad prompt, bad image, bad option."""

    grpc_code = "INVALID_ARGUMENT"


class InvalidPromptError(InvalidInputError):
    """Points, labels, boxes or mask inputs that the model cannot take."""


class InvalidImageError(InvalidInputError):
    """Image bytes that cannot be decoded, or pixels of an unsupported layout."""


class ImageTooLargeError(InvalidImageError):
    """Image bytes, pixel count or a side exceed the configured limits."""

    grpc_code = "INVALID_ARGUMENT"


class CheckpointError(SeganyError):
    """A checkpoint that cannot be loaded: missing or unexpected keys, wrong shapes, unsafe content."""

    grpc_code = "FAILED_PRECONDITION"


class UnknownModelError(SeganyError, KeyError):
    """A model name that is neither a variant in the zoo nor a file on disk."""

    grpc_code = "INVALID_ARGUMENT"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DownloadError(SeganyError):
    """A checkpoint download failed or its checksum did not match."""

    grpc_code = "UNAVAILABLE"


class NotFoundError(SeganyError, LookupError):
    """An image id (or other handle) the server does not know (any more)."""

    grpc_code = "NOT_FOUND"


class ModelMismatchError(SeganyError):
    """An embedding made by one model was given to another."""

    grpc_code = "FAILED_PRECONDITION"


class ResourceExhaustedError(SeganyError):
    """A queue or budget is full; the caller may retry later."""

    grpc_code = "RESOURCE_EXHAUSTED"


class ClosedError(SeganyError):
    """A client used after ``close()``."""

    grpc_code = "FAILED_PRECONDITION"


class UnavailableError(SeganyError):
    """The service is not ready (model loading, shutting down) or unreachable."""

    grpc_code = "UNAVAILABLE"


class DeadlineExceededError(SeganyError):
    """The call ran past its deadline."""

    grpc_code = "DEADLINE_EXCEEDED"


class CancelledError(SeganyError):
    """The call was cancelled by the caller."""

    grpc_code = "CANCELLED"


class UnauthenticatedError(SeganyError):
    """Missing or wrong credentials."""

    grpc_code = "UNAUTHENTICATED"


class InternalError(SeganyError):
    """A bug in segany; the message carries a request id to find it in the logs."""

    grpc_code = "INTERNAL"
