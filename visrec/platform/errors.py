"""Domain errors. What each means to a gRPC caller is decided in one table at the API edge
(``visrec.gateway.api.status``); the core knows nothing of gRPC."""

from __future__ import annotations


class VisrecError(Exception):
    """Base of every error the service reports to a caller."""


class InvalidArgument(VisrecError):
    """The caller's mistake: bad k, bad filter, undecodable image, oversize input."""


class NotFound(VisrecError):
    """An item (or user) the request names does not exist."""


class FailedPrecondition(VisrecError):
    """The system is not in a state to answer (e.g. no index has been built yet)."""


class PermissionDenied(VisrecError):
    """The caller is known but not allowed to do this (e.g. a write with a read token)."""


class BackendUnavailable(VisrecError):
    """Triton or Milvus is down or refused the call; retrying later may work."""


class VersionNotServed(BackendUnavailable):
    """The inference server does not serve that model version now (a replica that has not
    loaded a rolled-out version yet, or a version unloaded after a killed rollout)."""


class BackendTimeout(VisrecError):
    """An outbound call ran past its deadline."""
