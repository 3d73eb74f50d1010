"""TritonEmbedder: image bytes -> embeddings through Triton's image_embedding model (gRPC).

Every request names the model version it must be embedded by (the version of the active index):
image_embedding version N runs image_encoder version N, so embedding spaces never mix, during a
rollout included. Every call carries a client-side deadline. Triton's status codes are
translated here: an image the model could not decode is the caller's mistake (InvalidArgument);
everything else means the inference server is unavailable, slow or without that version.

Behind several replicas (gRPC round_robin over a headless Service's addresses, or an
``ipv4:a:p,b:p`` list), a replica that does not serve the version (yet) or whose connection
breaks is not the caller's problem: the request is sent again, to the next replica, within the
same deadline, up to ``attempts`` times. Readiness and model-config reads have their own, short
deadline (``probe_timeout_s``). Errors are mapped by gRPC status code, never by message text.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from visrec.platform.errors import (
    BackendTimeout,
    BackendUnavailable,
    InvalidArgument,
    VersionNotServed,
)

log = logging.getLogger(__name__)

INPUT, OUTPUT = "IMAGE", "EMBEDDING"
# gRPC keeps one long-lived HTTP/2 connection: with a headless Kubernetes Service and a
# "dns:///triton:8001" URL, round_robin spreads requests over every Triton pod instead of
# pinning this gateway to one.
CHANNEL_ARGS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")


class TritonEmbedder:
    def __init__(self, url: str, model: str = "image_embedding", timeout_s: float = 10.0,
                 version_check_s: float = 1.0, attempts: int = 3,
                 probe_timeout_s: float = 2.0) -> None:
        self.url = url
        self.model = model
        self._timeout = timeout_s
        self._attempts = attempts
        self._probe_timeout = probe_timeout_s
        self._client: Any = None
        self._version_check_s = version_check_s
        self._served: tuple[float, str | None] = (0.0, None)
        self._limits: dict[str, dict[str, str]] = {}

    def _grpc(self) -> Any:
        if self._client is None:  # created inside the running event loop
            from tritonclient.grpc.aio import InferenceServerClient

            self._client = InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def ready(self) -> bool:
        try:
            async with asyncio.timeout(self._probe_timeout):
                return bool(await self._grpc().is_model_ready(self.model))
        except Exception:
            return False

    async def image_limits(self, model_version: str) -> dict[str, str] | None:
        """The image limits of ``model_version``'s config (parameters written by export), read
        once per version; None while Triton does not answer (the caller has defaults)."""
        if model_version not in self._limits:
            try:
                async with asyncio.timeout(self._probe_timeout):
                    config = await self._grpc().get_model_config(
                        self.model, model_version, as_json=True)
            except Exception as e:
                log.info("image limits of %s version %s not read: %s", self.model,
                         model_version, e)
                return None
            params = config.get("config", {}).get("parameters", {})
            self._limits[model_version] = {k: str(v.get("string_value", ""))
                                           for k, v in params.items()}
        return self._limits[model_version]

    async def served_version(self) -> str | None:
        """The newest ready version of the image_embedding model (for metrics and ingest).
        Asked through model metadata: the repository API is the rollout's alone."""
        checked_at, version = self._served
        if time.monotonic() - checked_at < self._version_check_s:
            return version
        try:
            async with asyncio.timeout(self._timeout):
                meta = await self._grpc().get_model_metadata(self.model, as_json=True)
        except Exception as e:
            if _status(e) == "NOT_FOUND":  # "unknown model": no version of it is ready
                self._served = (time.monotonic(), None)
                return None
            raise _translate(e, self.url) from e
        ready = [int(v) for v in meta.get("versions", []) if str(v).isdigit()]
        version = str(max(ready)) if ready else None
        self._served = (time.monotonic(), version)
        return version

    async def embed(self, images: Sequence[bytes], *, model_version: str) -> np.ndarray:
        from tritonclient.grpc import InferInput, InferRequestedOutput

        batch = np.empty((len(images), 1), dtype=object)
        for i, data in enumerate(images):
            batch[i, 0] = data
        inp = InferInput(INPUT, list(batch.shape), "BYTES")
        inp.set_data_from_numpy(batch)
        what = f"{self.model} version {model_version}"
        deadline = time.monotonic() + self._timeout
        for attempt in range(1, self._attempts + 1):
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                result = await self._grpc().infer(
                    self.model, [inp], model_version=model_version,
                    outputs=[InferRequestedOutput(OUTPUT)], client_timeout=left,
                )
                break
            except Exception as e:
                error = _translate(e, self.url, what)
                if attempt == self._attempts or not _another_replica_may_serve(e, error):
                    raise error from e
                log.info("Triton attempt %d for %s failed (%s); trying the next replica",
                         attempt, what, error)
        out = result.as_numpy(OUTPUT)
        if out is None:
            raise BackendUnavailable(f"Triton ({self.url}) returned no {OUTPUT} tensor")
        return np.asarray(out, dtype=np.float32)


def _another_replica_may_serve(error: Exception, translated: Exception) -> bool:
    """A replica without the version (not loaded yet, or already unloaded) or a broken
    connection: worth the next replica. A bad image or a spent deadline is not."""
    return isinstance(translated, BackendUnavailable) and not isinstance(error, TimeoutError)


def _status(error: Exception) -> str | None:
    """The gRPC status code name of a tritonclient error (``"NOT_FOUND"``), else None."""
    from tritonclient.utils import InferenceServerException

    if not isinstance(error, InferenceServerException):
        return None
    status = str(error.status() or "")  # "StatusCode.NOT_FOUND"
    return status.rsplit(".", 1)[-1] or None


def _translate(error: Exception, url: str, what: str = "") -> Exception:
    """The service's error for a tritonclient error, by type and status code."""
    if isinstance(error, TimeoutError):
        return BackendTimeout(f"Triton ({url}) did not answer in time")
    status = _status(error)
    if status is None:
        return BackendUnavailable(f"Triton ({url}): {type(error).__name__}: {error}")
    message = str(error.message() or "")  # type: ignore[attr-defined]
    if status == "INVALID_ARGUMENT":
        # Strip Triton's "in ensemble 'image_embedding', " prefix: the caller sent the image.
        return InvalidArgument(f"image rejected: {re.sub(ENSEMBLE_PREFIX, '', message)}")
    if status == "DEADLINE_EXCEEDED":
        return BackendTimeout(f"Triton ({url}) did not answer in time")
    if status == "NOT_FOUND":  # a replica without the version (not loaded yet, or unloaded)
        return VersionNotServed(f"Triton ({url}) does not serve {what or 'the model'} now: "
                                f"{message}")
    return BackendUnavailable(f"Triton ({url}) unavailable: {message or status}")
