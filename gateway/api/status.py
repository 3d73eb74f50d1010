"""The one table that maps domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from visrec.platform.errors import (
    BackendTimeout,
    BackendUnavailable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    VisrecError,
)

STATUS_BY_ERROR: dict[type[VisrecError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    BackendTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
}
GENERIC_MESSAGE = "internal error (see the gateway log for the request id)"


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) for an exception; anything unexpected is INTERNAL with a generic text."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls], str(error)
    return grpc.StatusCode.INTERNAL, GENERIC_MESSAGE
