"""Which model versions a fleet of Triton replicas serves, changed only by the rollout.

The set of versions to serve is durable: the version policy of each model's config.pbtxt in the
model repository every replica reads (``visrec.export.repository.set_served_versions``). A
replica that starts at any moment loads exactly that set; the running ones are found (a list of
addresses, or every address a name resolves to: the headless Service's pods) and asked to load
it again, one by one, each verified per model and version. The repository API of every replica
is restricted to callers that present the admin key (Triton's --grpc-restricted-protocol), which
only the rollout holds: gateways can infer, not load.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visrec.export import repository as repo
from visrec.export.errors import ExportError
from visrec.platform.errors import VisrecError

log = logging.getLogger("visrec.rollout")
# The header Triton's restricted repository API checks: named so by --http-restricted-api; over
# gRPC Triton expects it with its own prefix (--grpc-restricted-protocol).
ADMIN_HEADER = "visrec-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"


class RolloutError(VisrecError):
    pass


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RolloutError(f"not a host:port Triton address: {address!r}")
    return host.strip("[]"), int(port)


def resolve(spec: str) -> list[str]:
    """Every Triton replica ``spec`` names: comma-separated ``host:port`` entries (the gateway's
    ``dns:///`` and ``ipv4:`` prefixes allowed), each host resolved to all its addresses, so a
    headless Service's name gives every ready pod."""
    spec = spec.strip()
    for prefix in ("dns:///", "ipv4:", "ipv6:"):
        spec = spec.removeprefix(prefix)
    out: list[str] = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        host, port = _split(entry)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise RolloutError(f"cannot resolve Triton replicas {host!r}: {e}") from e
        for info in infos:
            ip = str(info[4][0])
            address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            if address not in out:
                out.append(address)
    if not out:
        raise RolloutError(f"no Triton replica in {spec!r}")
    return sorted(out)


class TritonFleet:
    """The rollout's handle on every Triton replica and on the durable served set."""

    def __init__(self, replicas: str, repository: Path, *, admin_key: str = "",
                 timeout_s: float = 600.0, call_timeout_s: float = 30.0) -> None:
        self._spec = replicas
        self._repository = repository
        self._headers = {GRPC_ADMIN_HEADER: admin_key} if admin_key else None
        self._load_timeout = timeout_s
        self._timeout = call_timeout_s

    def replicas(self) -> list[str]:
        return resolve(self._spec)

    def durable(self) -> list[str]:
        """The versions the repository says to serve (what a starting replica loads)."""
        return [str(v) for v in repo.served_versions(self._repository)]

    async def _call(self, replica: str, what: str, call: Any, seconds: float) -> Any:
        try:
            async with asyncio.timeout(seconds + 5):
                return await call
        except TimeoutError as e:
            raise RolloutError(f"Triton replica {replica}: {what} did not answer within "
                               f"{seconds:.0f}s") from e
        except Exception as e:
            from tritonclient.utils import InferenceServerException

            if isinstance(e, InferenceServerException):
                raise RolloutError(f"Triton replica {replica}: {what} failed: "
                                   f"{e.message() or e.status()}") from e
            raise RolloutError(f"Triton replica {replica}: {what} failed: "
                               f"{type(e).__name__}: {e}") from e

    async def serving(self, replica: str) -> dict[str, list[str]]:
        """model -> the versions READY on ``replica``."""
        from tritonclient.grpc.aio import InferenceServerClient

        client = InferenceServerClient(replica)
        try:
            index = await self._call(replica, "the repository index",
                                     client.get_model_repository_index(
                                         headers=self._headers, as_json=True,
                                         client_timeout=self._timeout), self._timeout)
        finally:
            await client.close()
        out: dict[str, list[str]] = {m: [] for m in repo.serving_models(self._repository)}
        for m in index.get("models", []):
            if m.get("name") in out and m.get("state") == "READY":
                out[m["name"]].append(str(m["version"]))
        return {m: sorted(v, key=int) for m, v in out.items()}

    async def ready(self) -> list[str]:
        """The image_embedding versions every replica serves (the intersection)."""
        sets = [set((await self.serving(r))["image_embedding"]) for r in self.replicas()]
        return sorted(set.intersection(*sets), key=int) if sets else []

    async def _load(self, replica: str, versions: Sequence[str]) -> None:
        """Reload the models the serving path calls on ``replica`` from the repository, then
        check that exactly ``versions`` are ready (the load call alone can succeed with a
        version missing)."""
        from tritonclient.grpc.aio import InferenceServerClient

        client = InferenceServerClient(replica)
        try:
            for model in repo.serving_models(self._repository):
                await self._call(replica, f"loading {model}", client.load_model(
                    model, headers=self._headers, client_timeout=self._load_timeout),
                    self._load_timeout)
        finally:
            await client.close()
        served = await self.serving(replica)
        wrong = {m: v for m, v in served.items() if set(v) != set(versions)}
        if wrong:
            raise RolloutError(f"Triton replica {replica} serves {wrong} after the load, not "
                               f"versions {sorted(versions, key=int)}")

    async def _load_everywhere(self, versions: Sequence[str]) -> list[str]:
        replicas = self.replicas()
        results = await asyncio.gather(*(self._load(r, versions) for r in replicas),
                                       return_exceptions=True)
        failures = [str(e) for e in results if isinstance(e, BaseException)]
        if failures:
            raise RolloutError("; ".join(failures))
        return replicas

    async def serve(self, versions: Sequence[str]) -> list[str]:
        """Serve exactly ``versions`` on every replica, durably; returns the replicas. If one
        cannot, the previous set is restored everywhere and the error names the replica."""
        wanted = sorted({str(int(v)) for v in versions}, key=int)
        before = self.durable()
        try:
            repo.set_served_versions(self._repository, wanted)
        except ExportError as e:
            raise RolloutError(str(e)) from e
        try:
            replicas = await self._load_everywhere(wanted)
        except RolloutError:
            if before:
                log.warning("restoring versions %s on every replica", before)
                repo.set_served_versions(self._repository, before)
                try:
                    await self._load_everywhere(before)
                except RolloutError as again:
                    log.error("could not restore versions %s: %s", before, again)
            raise
        log.info("%d Triton replica(s) serve versions %s: %s", len(replicas), wanted,
                 ", ".join(replicas))
        return replicas

    async def verify(self, versions: Sequence[str]) -> list[str]:
        """Every replica found now serves ``versions`` (called again right before a switch:
        a replica added since the load read the durable set when it started)."""
        replicas = self.replicas()
        missing = []
        for replica in replicas:
            served = set((await self.serving(replica))["image_embedding"])
            if not set(versions) <= served:
                missing.append(f"{replica} (serves {sorted(served, key=int)})")
        if missing:
            raise RolloutError(f"Triton replica(s) without version(s) {list(versions)}: "
                               + "; ".join(missing))
        return replicas

    async def close(self) -> None:
        pass
