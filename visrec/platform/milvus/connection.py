"""One Milvus client shared by the role adapters (serving reads, user state, item writer, index
administration), with the plumbing they all need.

Works the same on Milvus Lite (a local ``*.db`` path) and on a Milvus server
(``http://host:19530``). The serving reads (``read``) go through pymilvus' asyncio client in the
caller's event loop: no hand-off to a thread and back, which measured ~25 % of the gateway's CPU
per SimilarItems. Everything else (``call`` blocking, ``run`` in a worker thread) uses the
synchronous client, which has every administration call. Both share pymilvus' per-collection
write timestamps, so a Session read sees this process's writes whichever client made them.
Each call has one deadline (``visrec.platform.deadlines``): the request's budget where
one is open, else the configured timeout; pymilvus' gRPC deadline and the awaiting task's are that
same instant. Library exceptions are translated here, at the edge, by type and code
(``translate``), into the service's own errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

from visrec.platform import deadlines
from visrec.platform.errors import BackendTimeout, BackendUnavailable, VisrecError

T = TypeVar("T")

with warnings.catch_warnings():
    # milvus-lite 2.5.1 imports the deprecated pkg_resources; import it once, quietly, here.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    import pymilvus  # noqa: F401  (configures its own loggers on import: do it before ours)

    try:
        import milvus_lite  # noqa: F401
    except ImportError:  # a server-only install
        pass


def split_database(uri: str) -> tuple[str, str]:
    """``http://host:19530/shop`` -> (``http://host:19530``, ``shop``): a server URI may name
    its database (pymilvus' MilvusClient ignores a path in the URI and uses "default")."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https", "tcp", "grpc") and parts.path.strip("/"):
        return f"{parts.scheme}://{parts.netloc}", parts.path.strip("/")
    return uri, ""


class MilvusConnection:
    """A lazily opened ``MilvusClient``; ``call`` (blocking) and ``run`` (async) execute one
    function of the client with errors translated; remembers which collections it loaded."""

    def __init__(self, uri: str, token: str = "", timeout_s: float = 5.0) -> None:
        self.uri = uri
        # The database a server URI names ("" = default); requests that carry their own
        # database field need it explicitly (pymilvus leaves it empty).
        self.database = split_database(uri)[1]
        self._timeout = timeout_s
        self._token = token
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None
        self._idle = threading.Condition()
        self._in_flight = 0
        self._loaded: set[str] = set()
        self._created: set[str] = set()
        # Collections seen to exist (reads skip has_collection for them); forgotten with the
        # loaded ones when a restarted server released them.
        self.known: set[str] = set()

    @property
    def timeout(self) -> float:
        """The deadline of the call being made, in seconds from now: the configured timeout,
        or what is left of the request's budget (read in the worker thread: it inherits the
        caller's context)."""
        return deadlines.remaining(self._timeout)

    @property
    def is_lite(self) -> bool:
        """A local file: Milvus Lite, embedded."""
        return not self.uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))

    def _connect(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from pymilvus import MilvusClient

                # pymilvus shares one connection per (uri, credentials) within a process and
                # close() tears it down for every client: each connection gets its own alias.
                uri, database = split_database(self.uri)
                self._client = MilvusClient(uri=uri, token=self._token, db_name=database,
                                            timeout=self._timeout,
                                            alias=f"visrec-{uuid.uuid4().hex}")
            return self._client

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(client, *args, **kwargs)`` in this thread, translating library errors."""
        with self._idle:
            self._in_flight += 1
        try:
            with self._translated():
                return fn(self._opened(self._connect), *args, **kwargs)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _async_client(self) -> Any:
        """The asyncio client of the running loop (made on first use in each loop)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            from pymilvus import AsyncMilvusClient

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
                uri, database = split_database(self.uri)
                client = AsyncMilvusClient(uri=uri, token=self._token, db_name=database,
                                           timeout=self._timeout,
                                           alias=f"visrec-async-{uuid.uuid4().hex}")
            self._async = (loop, client)
        return self._async[1]

    async def read(self, fn: Callable[[Any, float], Awaitable[T]]) -> T:
        """``await fn(async_client, timeout)`` in this event loop, within the call's deadline,
        library errors translated (the serving reads)."""
        timeout = self.timeout
        with self._translated():  # the deadline's TimeoutError too: BackendTimeout
            async with asyncio.timeout(timeout):
                return await fn(self._opened(self._async_client), timeout)

    def _opened(self, connect: Callable[[], Any]) -> Any:
        try:
            return connect()
        except Exception as e:  # whatever opening fails with (Lite: RuntimeError), by where
            raise BackendUnavailable(f"Milvus ({self.uri}) unreachable: {e}") from e

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """Library errors raised inside become the service's (``translate``)."""
        try:
            yield
        except VisrecError:
            raise
        except Exception as e:
            error = translate(e, self.uri)
            if error is None:
                raise
            if isinstance(error, CollectionReleased):
                # A restarted server comes back with its collections released and loads them
                # itself (~25 s on 2.3.5); forget ours so a collection it does not reload is
                # loaded by the next call.
                self.forget_collections()
            raise error from e

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call`` in a worker thread, awaited until the call's deadline (the same instant
        pymilvus' gRPC deadline ends: a thread blocked past it is abandoned, not awaited)."""
        timeout = self.timeout
        work = functools.partial(self.call, fn, *args, **kwargs)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(work)
        except TimeoutError as e:
            raise BackendTimeout(f"Milvus ({self.uri}) did not answer within "
                                 f"{timeout:.1f}s") from e

    # ------------------------------------------------------------------ collections
    def forget_collections(self) -> None:
        self._loaded.clear()
        self._created.clear()
        self.known.clear()

    def ensure_loaded(self, c: Any, collection: str) -> None:
        if collection not in self._loaded:
            c.load_collection(collection, timeout=self.timeout)
            self._loaded.add(collection)

    def ensure(self, c: Any, collection: str, build: Callable[[Any], None]) -> None:
        """Create ``collection`` with ``build`` when it does not exist, and load it."""
        if collection in self._created:
            return
        if not c.has_collection(collection, timeout=self.timeout):
            build(c)
        self.ensure_loaded(c, collection)
        self._created.add(collection)

    def exists(self, c: Any, collection: str) -> bool:
        """Whether ``collection`` exists (cached once this connection made or loaded it)."""
        return collection in self._created or bool(
            c.has_collection(collection, timeout=self.timeout))

    def scan(self, c: Any, collection: str, fields: list[str], batch_size: int = 4096,
             expr: str = "") -> Iterator[dict[str, Any]]:
        """Every row of a loaded collection (matching ``expr``), in query-iterator batches."""
        it = c.query_iterator(collection, batch_size=batch_size, filter=expr,
                              output_fields=fields, timeout=self.timeout)
        try:
            while batch := it.next():
                yield from batch
        finally:
            it.close()

    # ------------------------------------------------------------------ shutdown
    def _wait_idle(self) -> None:
        """Calls abandoned by a cancelled task still run in their thread: let them finish
        (boundedly) before the client is closed under them."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=self.timeout + 1.0)

    def close_sync(self) -> None:
        self._wait_idle()
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        current, self._async = self._async, None
        if current is not None and current[0] is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await current[1].close()
        await asyncio.to_thread(self.close_sync)


class CollectionReleased(BackendUnavailable):
    """A collection is not loaded (a restarted server reloads it); retrying later may work."""


# Milvus' own error codes (merr, Milvus >= 2.3; Milvus Lite 2.5 uses the same): the ones the
# service treats apart. Everything else the server refuses means "unavailable now".
COLLECTION_NOT_LOADED = 101


def translate(error: Exception, uri: str) -> VisrecError | None:
    """The service's error for a library error, by type and code (never by message text);
    None for an exception that is not the library's (a bug: let it through)."""
    import grpc
    from pymilvus.exceptions import MilvusException

    where = f"Milvus ({uri})"
    if isinstance(error, TimeoutError):  # before OSError, of which it is a subclass
        return BackendTimeout(f"{where} did not answer in time")
    cause = error.__cause__
    if isinstance(error, MilvusException) and isinstance(cause, grpc.RpcError):
        error = cause  # pymilvus' retries gave up: the last transport error says why
    if isinstance(error, grpc.RpcError):
        code = error.code() if callable(getattr(error, "code", None)) else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return BackendTimeout(f"{where} did not answer in time")
        return BackendUnavailable(f"{where}: {code.name if code else 'gRPC error'}")
    if isinstance(error, MilvusException):
        message = f"{where}: {error.message}"
        if error.code == COLLECTION_NOT_LOADED:
            return CollectionReleased(message)
        return BackendUnavailable(message)
    if isinstance(error, ConnectionError | OSError):
        return BackendUnavailable(f"{where} unreachable: {error}")
    return None
