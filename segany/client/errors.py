"""Client exceptions: one class per gRPC status code, each also a subclass of the matching segany.errors class."""

from __future__ import annotations

import grpc

from segany import errors


class ServiceError(errors.SeganyError):
    """A call the server refused or could not complete.

    Attributes:
        code: the ``grpc.StatusCode``.
        message: the server's message (what was wrong and what is accepted).
        request_id: the server's request id for this call (find it in the server log), when known.
    """

    def __init__(self, message: str, code: grpc.StatusCode, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidArgument(ServiceError, errors.InvalidInputError):
    grpc_code = "INVALID_ARGUMENT"


class NotFound(ServiceError, errors.NotFoundError):
    grpc_code = "NOT_FOUND"

    def __str__(self) -> str:  # LookupError's KeyError-like quoting does not apply, but be explicit
        return f"{self.code.name}: {self.message}"


class ResourceExhausted(ServiceError, errors.ResourceExhaustedError):
    grpc_code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(ServiceError):
    grpc_code = "FAILED_PRECONDITION"


class Unavailable(ServiceError, errors.UnavailableError):
    grpc_code = "UNAVAILABLE"


class DeadlineExceeded(ServiceError, errors.DeadlineExceededError):
    grpc_code = "DEADLINE_EXCEEDED"


class Cancelled(ServiceError, errors.CancelledError):
    grpc_code = "CANCELLED"


class Unauthenticated(ServiceError, errors.UnauthenticatedError):
    grpc_code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    grpc_code = "PERMISSION_DENIED"


class Unimplemented(ServiceError):
    grpc_code = "UNIMPLEMENTED"


class Internal(ServiceError, errors.InternalError):
    grpc_code = "INTERNAL"


ERROR_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode[cls_.grpc_code]: cls_
    for cls_ in (InvalidArgument, NotFound, ResourceExhausted, FailedPrecondition, Unavailable, DeadlineExceeded,
                 Cancelled, Unauthenticated, PermissionDenied, Unimplemented, Internal)
}


def error_from_rpc(exc: grpc.RpcError) -> ServiceError:
    """The typed error for a failed call (sync or aio)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    message = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    request_id = _request_id(exc, "initial_metadata") or _request_id(exc, "trailing_metadata")
    cls = ERROR_BY_CODE.get(code, Internal)
    return cls(message or code.name, code, request_id)


def _request_id(exc: grpc.RpcError, which: str) -> str | None:
    """The ``x-request-id`` of ``exc``'s initial metadata (``segany serve``) or trailing metadata (behind Ray Serve's
    proxy, which passes only a replica's trailing metadata on). Best effort: absent when the call never reached a
    server."""
    try:
        for key, value in getattr(exc, which)() or ():
            if key == "x-request-id":
                return value
    except Exception:  # noqa: BLE001
        pass
    return None
