"""Wiring: configuration -> adapters -> core -> servicer -> grpc.aio server, health, reflection,
metrics. ``visrec-gateway`` runs it until SIGTERM / SIGINT, then drains and stops."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from visrec.gateway.api.metrics import GatewayMetrics, MetricsInterceptor
from visrec.gateway.api.security import (
    Admission,
    AdmissionInterceptor,
    SecurityConfigError,
    load_tokens,
    server_credentials,
)
from visrec.gateway.api.servicer import RecommenderServicer
from visrec.gateway.config import ConfigError, GatewayConfig
from visrec.gateway.core.active_index import ActiveIndex, stop_task
from visrec.gateway.core.popular import PopularItems
from visrec.gateway.core.recommender import RecommenderCore
from visrec.platform import logs
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc
from visrec.platform.errors import VisrecError
from visrec.platform.milvus import (
    MilvusCatalogChanges,
    MilvusConnection,
    MilvusItemWriter,
    MilvusVectorStore,
)
from visrec.platform.ports import CatalogEditor, ChangeLog, Embedder, VectorStore
from visrec.platform.triton_embedder import TritonEmbedder

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
# SERVING while the process serves at all, even with Milvus away: the liveness probe's service
# (a restart would not bring Milvus back). "" and SERVICE_NAME follow the dependencies.
LIVENESS_SERVICE = "liveness"


@dataclass
class Gateway:
    """A built, not yet started, gateway and the pieces it owns."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    index: ActiveIndex
    embedder: Embedder
    store: VectorStore
    metrics: GatewayMetrics
    grace_s: float
    metrics_port: int | None = None  # None: no /metrics endpoint; 0: any free port
    popular: PopularItems | None = None
    _watch: asyncio.Task[None] | None = field(default=None, init=False)
    _stopping: bool = field(default=False, init=False)
    _metrics_http: Any = field(default=None, init=False)

    async def start(self) -> None:
        for name in ("", SERVICE_NAME):  # until the vector store has answered
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        if self.metrics_port is not None:
            self._metrics_http, _ = start_http_server(self.metrics_port,
                                                      registry=self.metrics.registry)
            self.metrics_port = int(self._metrics_http.server_port)
        await self.server.start()
        self.index.start()
        if self.popular is not None:
            self.popular.start()
        self._watch = asyncio.create_task(self._watch_health(), name="health-watch")

    async def _watch_health(self) -> None:
        """SERVING once the active index answers; follows it afterwards (what the index's own
        poller last found: no Milvus call here). Also probes Triton for the backend gauges
        (Triton down only degrades SearchByImage: still SERVING)."""
        status = None
        while not self._stopping:
            ok = self.index.answering
            if (info := self.index.known) is not None:
                self.metrics.set_active_model(info.model_version, info.collection)
            self.metrics.backend_up.labels("milvus").set(1 if ok else 0)
            await self._probe_triton()
            new = (health_pb2.HealthCheckResponse.SERVING if ok
                   else health_pb2.HealthCheckResponse.NOT_SERVING)
            if new != status:
                status = new
                for name in ("", SERVICE_NAME):
                    await self.health.set(name, new)
            await asyncio.sleep(min(1.0, self.index.refresh_s))

    async def _probe_triton(self) -> None:
        ready = await self.embedder.ready()
        self.metrics.backend_up.labels("triton").set(1 if ready else 0)
        version = None
        if ready:
            try:
                version = await self.embedder.served_version()
            except VisrecError:
                version = None
        self.metrics.triton_encoder_version.set(
            int(version) if version and version.isdigit() else -1)

    async def stop(self) -> None:
        """Flip health to NOT_SERVING, let in-flight calls finish within the grace, close."""
        self._stopping = True
        if self._watch is not None:
            await stop_task(self._watch)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace_s)
        await self.index.stop()
        if self.popular is not None:
            await self.popular.stop()
        await self.embedder.close()
        await self.store.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()


def build_gateway(
    config: GatewayConfig,
    *,
    embedder: Embedder | None = None,
    store: VectorStore | None = None,
    editor: CatalogEditor | None = None,
    changes: ChangeLog | None = None,
    registry: CollectorRegistry | None = None,
    address: str | None = None,
    metrics_port: int | None = None,
) -> Gateway:
    """Create the server bound to ``address`` (default: the configured one; "[::]:0" picks a
    free port) and, when started, /metrics on ``metrics_port`` (default: the configured one;
    0 picks a free port). Adapters may be passed in (tests); otherwise they come from the
    configuration (the store, the catalog editor and the change log over one connection)."""
    embedder = embedder or TritonEmbedder(config.triton_url, config.triton_model,
                                          config.triton_timeout_s,
                                          attempts=config.triton_attempts,
                                          probe_timeout_s=config.triton_probe_timeout_s)
    if store is None:
        connection = MilvusConnection(config.milvus_uri, config.milvus_token,
                                      config.milvus_timeout_s)
        store = MilvusVectorStore(connection)
        editor = editor or MilvusItemWriter(connection)
        changes = changes or MilvusCatalogChanges(connection)
    metrics = GatewayMetrics(registry or CollectorRegistry())
    experiment = config.experiment_config()
    metrics.set_experiment(experiment.name,
                           [(a.name, a.policy.name, a.weight) for a in experiment.arms])
    index = ActiveIndex(store, config.index_refresh_s)
    popular = PopularItems(store, index, config.popular_refresh_s)
    core = RecommenderCore(embedder, store, index, config.limits(), observer=metrics,
                           personalisation=config.personalisation(), popular=popular,
                           editor=editor, changes=changes)
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    try:
        admission = Admission(load_tokens(config.auth_tokens, config.auth_token_file),
                              config.rate_limit_rps, config.rate_limit_burst,
                              config.request_timeout_s, config.auth_failures_per_minute)
        credentials = (server_credentials(config.tls_cert_file, config.tls_key_file,
                                          config.tls_client_ca_file)
                       if config.tls_cert_file else None)
    except SecurityConfigError as e:
        raise ConfigError(str(e)) from None
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics)]
    if admission.active:  # after metrics: refusals are counted with their codes
        interceptors.append(AdmissionInterceptor(admission))
    server = grpc.aio.server(interceptors=interceptors, options=options)
    pb_grpc.add_RecommenderServicer_to_server(RecommenderServicer(core), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    bind = address or config.grpc_address
    port = (server.add_secure_port(bind, credentials) if credentials is not None
            else server.add_insecure_port(bind))
    if port == 0:
        raise ConfigError(f"cannot bind the gRPC server to {address or config.grpc_address}")
    if metrics_port is None and config.metrics_port:
        metrics_port = config.metrics_port
    return Gateway(server, port, health_servicer, index, embedder, store, metrics,
                   config.shutdown_grace_s, metrics_port, popular)


async def serve(config: GatewayConfig) -> None:
    gateway = build_gateway(config)
    await gateway.start()
    log.info("visrec gateway listening on port %d (metrics :%d, Triton %s, Milvus %s)",
             gateway.port, config.metrics_port, config.triton_url, config.milvus_uri)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.0fs", config.shutdown_grace_s)
    await gateway.stop()


def main(argv: list[str] | None = None) -> int:
    import argparse

    from visrec.platform.settings import epilog

    parser = argparse.ArgumentParser(
        prog="visrec-gateway",
        description="Serve visrec.v1.Recommender over gRPC (with grpc.health.v1 and server "
                    "reflection) and Prometheus metrics. Configured only through environment "
                    "variables:",
        epilog=epilog(GatewayConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    try:
        config = GatewayConfig.from_env()
    except ConfigError as e:
        print(f"visrec-gateway: configuration error: {e}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format)
    try:
        asyncio.run(serve(config))
    except ConfigError as e:
        print(f"visrec-gateway: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
