"""Transport and admission security for the gateway: TLS credentials from files, bearer-token
authentication, a per-client rate limit and a per-request deadline, as one server interceptor.

Health checks and server reflection are exempt from tokens and rate limits (probes carry no
credentials; a load balancer must always be able to ask). Every other call, unary or streamed,
goes through the same checks, in this order: the peer's failed-authentication budget (token
guessing is rate limited), the token (writes need one marked for writes), the rate limit of the
client (its verified token, else its address: a made-up token is no identity), the server-side
deadline. Everything refused is refused with a status code a client can act on:
UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED (with the retry delay in the
``retry-after-ms`` trailer) or DEADLINE_EXCEEDED.
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


@dataclass(frozen=True)
class Token:
    secret: bytes
    can_write: bool = False


WRITE_PREFIX = "write:"
# The catalog changes: a caller needs a token marked for writes (with tokens configured).
WRITE_METHODS = frozenset({"/visrec.v1.Recommender/UpsertItems",
                           "/visrec.v1.Recommender/DeleteItems"})


def load_tokens(tokens: str, token_file: str) -> tuple[Token, ...]:
    """Accepted tokens: comma-separated in ``tokens`` and one per line in ``token_file``
    (blank lines and # comments ignored); ``write:<token>`` marks one allowed to change the
    catalog. Several at once let a token be rotated."""
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
    out = []
    for t in found:
        can_write = t.startswith(WRITE_PREFIX)
        secret = t.removeprefix(WRITE_PREFIX).strip()
        if len(secret) < 16:
            raise SecurityConfigError("every auth token must be at least 16 characters")
        out.append(Token(secret.encode(), can_write))
    return tuple(out)


class TokenBuckets:
    """One token bucket per client key (``rate`` per second, ``burst`` deep), the least
    recently seen forgotten beyond ``max_clients`` so memory stays bounded."""

    def __init__(self, rate: float, burst: float, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._max = rate, burst, max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str) -> tuple[float, float]:
        now = self._clock()
        level, last = self._buckets.pop(key, (self.burst, now))
        return min(self.burst, level + (now - last) * self.rate), now

    def _store(self, key: str, level: float, now: float) -> None:
        self._buckets[key] = (level, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)

    def take(self, key: str) -> float:
        """0 when the call may proceed, else the seconds until it would."""
        level, now = self._level(key)
        wait = 0.0
        if level >= 1.0:
            level -= 1.0
        else:
            wait = (1.0 - level) / self.rate
        self._store(key, level, now)
        return wait

    def wait(self, key: str) -> float:
        """Like ``take`` but takes nothing: the seconds until ``key`` has a token."""
        level, now = self._level(key)
        self._store(key, level, now)
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate


@dataclass(frozen=True)
class Admission:
    tokens: Sequence[Token] = ()
    rate_limit_rps: float = 0.0  # 0: no limit
    rate_limit_burst: float = 0.0  # 0: one second's worth
    request_timeout_s: float = 0.0  # 0: the client's deadline only
    auth_failures_per_minute: float = 10.0  # per peer address, with tokens configured

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


def _peer(context: grpc.aio.ServicerContext) -> str:
    """The client's address without its port (ipv4:1.2.3.4, ipv6:[::1])."""
    return context.peer().rsplit(":", 1)[0]


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float = 0.0):
        super().__init__(message)
        self.code, self.message, self.retry_after_s = code, message, retry_after_s


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, admission: Admission) -> None:
        self._a = admission
        self._buckets = (TokenBuckets(admission.rate_limit_rps,
                                      admission.rate_limit_burst or admission.rate_limit_rps)
                         if admission.rate_limit_rps else None)
        self._failures = (TokenBuckets(admission.auth_failures_per_minute / 60.0,
                                       max(1.0, admission.auth_failures_per_minute))
                          if admission.tokens and admission.auth_failures_per_minute else None)

    def _token(self, presented: bytes | None) -> Token | None:
        if presented is None:
            return None
        found = None
        for accepted in self._a.tokens:  # every token compared: no early exit to time
            if hmac.compare_digest(presented, accepted.secret):
                found = accepted
        return found

    def _admit(self, method: str, presented: bytes | None,
               context: grpc.aio.ServicerContext) -> None:
        """Raise Refused unless the call may proceed (see the module docstring's order)."""
        peer = _peer(context)
        token: Token | None = None
        if self._a.tokens:
            if self._failures is not None:
                wait = self._failures.wait("peer:" + peer)
                if wait > 0:
                    raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  "too many failed authentications from this address; retry "
                                  f"in {wait:.0f} s", wait)
            token = self._token(presented)
            if token is None:
                if self._failures is not None:
                    self._failures.take("peer:" + peer)
                raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                              "missing bearer token: send metadata 'authorization: Bearer "
                              "<token>'" if presented is None else
                              "the bearer token is not valid")
            if method in WRITE_METHODS and not token.can_write:
                raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                              "changing the catalog needs a token marked for writes "
                              "(write:<token> in VISREC_AUTH_TOKENS)")
        if self._buckets is not None:
            # A client is its verified token, else its address: a made-up token is no one.
            key = ("token:" + hmac.new(b"visrec", token.secret, "sha256").hexdigest()
                   if token is not None else "peer:" + peer)
            wait = self._buckets.take(key)
            if wait > 0:
                raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"rate limit of {self._a.rate_limit_rps:g} requests/s exceeded; "
                              f"retry in {wait * 1000:.0f} ms", wait)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        presented = _bearer(details.invocation_metadata)
        method = details.method

        def guard(behavior: Handler) -> Handler:
            async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    self._admit(method, presented, context)
                except Refused as r:
                    if r.retry_after_s:
                        context.set_trailing_metadata(
                            (("retry-after-ms", str(int(r.retry_after_s * 1000) + 1)),))
                    await context.abort(r.code, r.message)
                return await behavior(request, context)

            if self._a.request_timeout_s:
                return _bounded(call, self._a.request_timeout_s)
            return call

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                guard(handler.unary_unary), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                guard(handler.stream_unary), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        raise ValueError(f"{method}: streaming responses are not served by this gateway")


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
