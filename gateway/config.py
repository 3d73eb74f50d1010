"""The gateway's configuration: a frozen dataclass read once from ``VISREC_*`` variables.

Every setting is declared once, here or in the shared groups it inherits (Milvus, Triton, logs:
``visrec.platform.settings``), with its default and its meaning; the core's ``Limits`` and
``Personalisation`` are built from it (``limits()``, ``personalisation()``), never copied field by
field. docs/configuration.md is rendered from these declarations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from visrec.gateway.core.checks import Limits
from visrec.gateway.core.experiments import Experiment, ExperimentConfigError, parse_experiment
from visrec.gateway.core.personalised import Personalisation
from visrec.gateway.core.profiles import DEFAULT_WEIGHTS, WeightsError, parse_weights
from visrec.platform.settings import (
    ConfigError,
    LogSettings,
    MilvusSettings,
    TritonSettings,
    env_name,
    from_env,
    require_non_negative,
    require_positive,
    require_set,
    setting,
)

__all__ = ["ConfigError", "GatewayConfig"]
_L, _P = Limits, Personalisation  # the core's defaults, declared once there


@dataclass(frozen=True)
class GatewayConfig(MilvusSettings, TritonSettings, LogSettings):
    grpc_address: str = setting("[::]:50051", "address the gRPC server binds")
    metrics_port: int = setting(9464, "port of Prometheus /metrics (0 disables it)")
    triton_timeout_s: float = setting(10.0, "deadline of one embedding request, all tries")
    milvus_timeout_s: float = setting(
        _L.store_budget_s, "deadline of the vector-store part of one request (every Milvus "
        "call it makes); past it a read answers from the fallback list")
    index_refresh_s: float = setting(
        1.0, "how often the active-index pointer is read (a switch is followed within this)")
    max_k: int = setting(_L.max_k, "largest k a request may ask for")
    max_image_bytes: int = setting(_L.max_image_bytes, "largest image a request may carry")
    max_image_pixels: int = setting(
        _L.max_image_pixels, "images with more pixels are refused before decoding (the model "
        "version's own limit applies when it is lower)")
    max_message_bytes: int = setting(16 * 1024 * 1024, "largest gRPC message received or sent")
    max_batch_items: int = setting(
        _L.max_batch_items, "items per UpsertItems stream and ids per DeleteItems call")
    max_upsert_bytes: int = setting(
        _L.max_upsert_bytes, "image bytes per UpsertItems stream, in all (a stream is checked "
        "whole before anything is written, so it is held in memory)")
    shutdown_grace_s: float = setting(10.0, "on SIGTERM, in-flight calls finish within this")
    tls_cert_file: str = setting("", "PEM certificate: serve TLS (with the key)")
    tls_key_file: str = setting("", "PEM private key of the certificate")
    tls_client_ca_file: str = setting("", "PEM CA of client certificates: mutual TLS")
    auth_tokens: str = setting(
        "", "bearer tokens, comma-separated; 'write:<token>' may also change the catalog")
    auth_token_file: str = setting(
        "", "a file of tokens, one per line (a mounted Secret), same syntax")
    rate_limit_rps: float = setting(0.0, "requests per second per client (0: no limit)")
    rate_limit_burst: float = setting(0.0, "burst of the rate limit (0: the rate)")
    auth_failures_per_minute: float = setting(
        10.0, "failed authentications per client address and minute before RESOURCE_EXHAUSTED")
    request_timeout_s: float = setting(
        30.0, "server-side cap on each request's time (0: the client's deadline only)")
    experiment: str = setting("", "A/B experiment name (empty: one arm, similarity)")
    experiment_arms: str = setting(
        "", "arms as name=policy:weight, comma-separated, weights summing to 100, e.g. "
        "control=similarity:50, diverse=mmr(0.7):50")
    experiment_salt: str = setting("", "salt of the user -> arm hash (default: the name)")
    experiment_override: bool = setting(
        False, "honour the x-visrec-arm request header (QA only)")
    interaction_weights: str = setting(
        DEFAULT_WEIGHTS, "weight of each interaction type in profiles and popularity")
    profile_rate: float = setting(
        _P.profile_rate, "how far one weight-1 interaction moves a profile, in (0, 1]")
    recent_items: int = setting(
        _P.recent_items, "items remembered per user (exclude_seen, re-embedding on rollout)")
    overfetch: int = setting(_P.overfetch, "candidates fetched per requested item before ranking")
    max_candidates: int = setting(_P.max_candidates, "candidates ranked per request, at most")
    recent_queries: int = setting(
        _P.recent_queries, "most recent items that query the index (multi-interest)")
    popular_refresh_s: float = setting(30.0, "how often the fallback list is rebuilt")
    log_format: str = setting("json", "json (one object per line, with the request id), text, "
                              "or auto: text on a terminal, json otherwise")

    def __post_init__(self) -> None:
        for group in (MilvusSettings, TritonSettings, LogSettings):
            group.__post_init__(self)
        require_positive(self, "triton_timeout_s", "milvus_timeout_s", "index_refresh_s",
                         "max_k", "max_image_bytes", "max_image_pixels", "max_message_bytes",
                         "max_batch_items", "max_upsert_bytes", "recent_items", "overfetch",
                         "max_candidates", "popular_refresh_s", "recent_queries")
        require_non_negative(self, "rate_limit_rps", "rate_limit_burst", "request_timeout_s",
                             "auth_failures_per_minute", "shutdown_grace_s")
        require_set(self, "grpc_address")
        if not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"{env_name('metrics_port')} must be a port number (0 disables)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(f"TLS needs both {env_name('tls_cert_file')} and "
                              f"{env_name('tls_key_file')}")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError(f"{env_name('tls_client_ca_file')} (mutual TLS) needs "
                              f"{env_name('tls_cert_file')} and {env_name('tls_key_file')}")
        if self.max_image_bytes > self.max_message_bytes:
            raise ConfigError(
                f"{env_name('max_image_bytes')} ({self.max_image_bytes}) must not exceed "
                f"{env_name('max_message_bytes')} ({self.max_message_bytes})"
            )
        if not 0 < self.profile_rate <= 1:
            raise ConfigError(f"{env_name('profile_rate')} must be within (0, 1]")
        self.experiment_config()
        self.weights()

    def experiment_config(self) -> Experiment:
        try:
            return parse_experiment(self.experiment, self.experiment_arms, self.experiment_salt,
                                    arms_var=env_name("experiment_arms"),
                                    name_var=env_name("experiment"))
        except ExperimentConfigError as e:
            raise ConfigError(str(e)) from None

    def weights(self) -> dict[str, float]:
        try:
            return parse_weights(self.interaction_weights)
        except WeightsError as e:
            raise ConfigError(f"{env_name('interaction_weights')}: {e}") from None

    def limits(self) -> Limits:
        """The core's request limits, from the settings of the same names."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(Limits)
               if hasattr(self, f.name)}
        return Limits(**own, store_budget_s=self.milvus_timeout_s)

    def personalisation(self) -> Personalisation:
        parsed = ("experiment", "weights", "allow_arm_override")
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(Personalisation)
               if f.name not in parsed}
        return Personalisation(**own, experiment=self.experiment_config(),
                               weights=self.weights(),
                               allow_arm_override=self.experiment_override)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        return from_env(cls, environ)
