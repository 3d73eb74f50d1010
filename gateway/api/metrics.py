"""Prometheus metrics (prefix visrec_) and the server interceptor that records them.

The interceptor wraps the awaited handler, so the status code and duration it records are the
ones the caller saw, aborts included.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "visrec_requests", "gRPC requests handled, by method and status code",
            ["method", "code"], registry=registry)
        self.latency = Histogram(
            "visrec_request_duration_seconds", "gRPC request latency, by method and status code",
            ["method", "code"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge(
            "visrec_requests_in_flight", "gRPC requests being handled", ["method"],
            registry=registry)
        self.stage_latency = Histogram(
            "visrec_stage_duration_seconds",
            "Time spent in each stage of a request (model_config, decode, embed, neighbours, "
            "lookup, ann, popularity, rank, profile, fallback, write)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=registry)
        self.active_model = Gauge(
            "visrec_active_model_info",
            "1 for the model version and collection of the active index",
            ["model_version", "collection"], registry=registry)
        self.degraded = Counter(
            "visrec_degraded_responses", "Responses served by a fallback, by method and reason",
            ["method", "reason"], registry=registry)
        self.backend_errors = Counter(
            "visrec_backend_errors", "Failed calls to Triton or Milvus, by backend and status",
            ["backend", "code"], registry=registry)
        self.backend_up = Gauge(
            "visrec_backend_up", "1 when the backend answers its readiness probe (triton: the "
            "image_embedding ensemble is ready)", ["backend"], registry=registry)
        self.triton_encoder_version = Gauge(
            "visrec_triton_encoder_version",
            "Newest ready image_encoder version in Triton (-1: none)", registry=registry)
        self.index_model_version = Gauge(
            "visrec_index_model_version",
            "Model version of the active index (-1: none or not numeric)", registry=registry)
        self.arm_weight = Gauge(
            "visrec_experiment_arm_weight", "Configured traffic share of each arm, in percent",
            ["experiment", "arm", "policy"], registry=registry)
        arm_labels = ["experiment", "arm", "policy"]
        self.served_count = Counter(
            "visrec_recommendations_served",
            "Recommend responses, by experiment, arm and policy", arm_labels, registry=registry)
        self.served_items = Counter(
            "visrec_recommended_items_served",
            "Items shown in Recommend responses (impressions), by experiment, arm and policy",
            arm_labels, registry=registry)
        self.interactions = Counter(
            "visrec_interactions",
            "Counted interactions (retries excluded), by experiment, arm, policy and type",
            [*arm_labels, "type"], registry=registry)
        self.interaction_retries = Counter(
            "visrec_interaction_retries",
            "RecordInteraction calls acknowledged without counting (same request id, item, type)",
            registry=registry)
        self.catalog_changes = Counter(
            "visrec_catalog_changes",
            "Items changed online: op=upsert (UpsertItems) or delete (DeleteItems; items that "
            "existed)", ["op"], registry=registry)

    # The core's Observer interface --------------------------------------------------
    def stage(self, name: str, seconds: float) -> None:
        self.stage_latency.labels(name).observe(seconds)

    def served(self, experiment: str, arm: str, policy: str, items: int,
               degraded: str) -> None:
        self.served_count.labels(experiment, arm, policy).inc()
        self.served_items.labels(experiment, arm, policy).inc(items)
        if degraded:
            self.degraded.labels("Recommend", degraded).inc()

    def interaction(self, experiment: str, arm: str, policy: str, kind: str,
                    counted: bool) -> None:
        if counted:
            self.interactions.labels(experiment, arm, policy, kind).inc()
        else:
            self.interaction_retries.inc()

    def catalog_change(self, op: str, items: int) -> None:
        self.catalog_changes.labels(op).inc(items)

    def set_active_model(self, model_version: str, collection: str) -> None:
        self.active_model.clear()
        self.active_model.labels(model_version, collection).set(1)
        self.index_model_version.set(int(model_version) if model_version.isdigit() else -1)

    def set_experiment(self, experiment: str, arms: list[tuple[str, str, float]]) -> None:
        self.arm_weight.clear()
        for arm, policy, weight in arms:
            self.arm_weight.labels(experiment, arm, policy).set(weight)


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._m = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler  # streaming responses (reflection) are not timed

    def _wrap(self, method: str, behavior: Handler) -> Handler:
        m = self._m

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            m.in_flight.labels(method).inc()
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                m.in_flight.labels(method).dec()
                name = code.name if isinstance(code, grpc.StatusCode) else str(code)
                m.requests.labels(method, name).inc()
                m.latency.labels(method, name).observe(time.perf_counter() - start)

        return timed
