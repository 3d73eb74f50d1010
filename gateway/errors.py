"""Domain errors and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import grpc


class VisrecError(Exception):
    """Base of every error the service reports to a caller."""

    status = grpc.StatusCode.INTERNAL


class InvalidArgument(VisrecError):
    """The caller's mistake: bad k, bad filter, undecodable image, oversize input."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(VisrecError):
    status = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(VisrecError):
    """The system is not in a state to answer (e.g. no index has been built yet)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class BackendUnavailable(VisrecError):
    """Triton or Milvus is down or refused the call; retrying later may work."""

    status = grpc.StatusCode.UNAVAILABLE


class BackendTimeout(VisrecError):
    """An outbound call ran past its deadline."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED


STATUS_BY_ERROR: dict[type[VisrecError], grpc.StatusCode] = {
    cls: cls.status
    for cls in (InvalidArgument, NotFound, FailedPrecondition, BackendUnavailable, BackendTimeout)
}


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """(code, message) for an exception; anything unexpected is INTERNAL with a generic text."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls], str(error)
    return grpc.StatusCode.INTERNAL, "internal error (see the gateway log for the request id)"
