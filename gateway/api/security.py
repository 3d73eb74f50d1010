"""Transport and admission security for the gateway: TLS credentials from files, bearer-token
authentication, a per-client rate limit and a per-request deadline, as one server interceptor.

Health checks and server reflection are exempt from tokens and rate limits (probes carry no
credentials; a load balancer must always be able to ask). Everything refused is refused with a
status code a client can act on: UNAUTHENTICATED, RESOURCE_EXHAUSTED (with the retry delay in
the ``retry-after-ms`` trailer) or DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class SecurityConfigError(ValueError):
    """TLS files or tokens that cannot be used; the message names what and why."""


def server_credentials(cert_file: str, key_file: str,
                       client_ca_file: str = "") -> grpc.ServerCredentials:
    """TLS from PEM files; with ``client_ca_file``, clients must present a certificate it
    signed (mutual TLS)."""
    def read(path: str, what: str) -> bytes:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise SecurityConfigError(f"cannot read the TLS {what} {path}: {e.strerror}") from e
        if b"-----BEGIN" not in data:
            raise SecurityConfigError(f"the TLS {what} {path} is not PEM")
        return data

    cert, key = read(cert_file, "certificate"), read(key_file, "private key")
    ca = read(client_ca_file, "client CA") if client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)


def load_tokens(tokens: str, token_file: str) -> tuple[bytes, ...]:
    """Accepted tokens: comma-separated in ``tokens`` and one per line in ``token_file``
    (blank lines and # comments ignored). Several at once let a token be rotated."""
    found = [t.strip() for t in tokens.split(",") if t.strip()]
    if token_file:
        try:
            text = Path(token_file).read_text()
        except OSError as e:
            raise SecurityConfigError(f"cannot read the token file {token_file}: "
                                      f"{e.strerror}") from e
        found += [line.strip() for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
        if not found:
            raise SecurityConfigError(f"the token file {token_file} holds no token")
    for t in found:
        if len(t) < 16:
            raise SecurityConfigError("every auth token must be at least 16 characters")
    return tuple(t.encode() for t in found)


class TokenBuckets:
    """One token bucket per client key (``rate`` per second, ``burst`` deep), the least
    recently seen forgotten beyond ``max_clients`` so memory stays bounded."""

    def __init__(self, rate: float, burst: float, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._max = rate, burst, max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 when the call may proceed, else the seconds until it would."""
        now = self._clock()
        level, last = self._buckets.pop(key, (self.burst, now))
        level = min(self.burst, level + (now - last) * self.rate)
        wait = 0.0
        if level >= 1.0:
            level -= 1.0
        else:
            wait = (1.0 - level) / self.rate
        self._buckets[key] = (level, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait


@dataclass(frozen=True)
class Admission:
    tokens: Sequence[bytes] = ()
    rate_limit_rps: float = 0.0  # 0: no limit
    rate_limit_burst: float = 0.0  # 0: one second's worth
    request_timeout_s: float = 0.0  # 0: the client's deadline only

    @property
    def active(self) -> bool:
        return bool(self.tokens or self.rate_limit_rps or self.request_timeout_s)


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            raw = value.encode() if isinstance(value, str) else bytes(value)
            scheme, _, token = raw.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, admission: Admission) -> None:
        self._a = admission
        self._buckets = (TokenBuckets(admission.rate_limit_rps,
                                      admission.rate_limit_burst or admission.rate_limit_rps)
                         if admission.rate_limit_rps else None)

    def _authenticated(self, token: bytes | None) -> bool:
        if token is None:
            return False
        ok = False
        for accepted in self._a.tokens:  # every token compared: no early exit to time
            ok |= hmac.compare_digest(token, accepted)
        return ok

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        if handler.unary_unary is None:
            return handler
        token = _bearer(details.invocation_metadata)
        if self._a.tokens and not self._authenticated(token):
            message = ("missing bearer token: send metadata 'authorization: Bearer <token>'"
                       if token is None else "the bearer token is not valid")
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, message)
        behavior = handler.unary_unary
        if self._a.request_timeout_s:
            behavior = _bounded(behavior, self._a.request_timeout_s)
        if self._buckets is not None:
            behavior = self._limited(behavior, token)
        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def _limited(self, behavior: Handler, token: bytes | None) -> Handler:
        buckets = self._buckets
        assert buckets is not None

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # A client is its token when it has one, else its address (without the port).
            key = ("token:" + hmac.new(b"visrec", token, "sha256").hexdigest() if token
                   else "peer:" + context.peer().rsplit(":", 1)[0])
            wait = buckets.take(key)
            if wait > 0:
                context.set_trailing_metadata((("retry-after-ms", str(int(wait * 1000) + 1)),))
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    f"rate limit of {self._a.rate_limit_rps:g} requests/s "
                                    f"exceeded; retry in {wait * 1000:.0f} ms")
            return await behavior(request, context)

        return call


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
             message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(
        refuse, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)


def _bounded(behavior: Handler, limit_s: float) -> Handler:
    """The call ends with DEADLINE_EXCEEDED after ``limit_s`` or the client's deadline,
    whichever is sooner; the work behind it is cancelled."""
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        remaining = context.time_remaining()
        budget = limit_s if remaining is None else min(limit_s, remaining)
        try:
            async with asyncio.timeout(budget):
                return await behavior(request, context)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"the request did not complete within {budget:.2f}s")

    return call
