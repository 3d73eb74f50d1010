"""Gateway configuration: a frozen dataclass read once from VISREC_* environment variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from visrec.gateway.core.experiments import Experiment, ExperimentConfigError, parse_experiment
from visrec.gateway.core.profiles import DEFAULT_WEIGHTS, WeightsError, parse_weights

PREFIX = "VISREC_"


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class GatewayConfig:
    grpc_address: str = "[::]:50051"
    metrics_port: int = 9464  # Prometheus /metrics; 0 disables
    triton_url: str = "localhost:8001"
    triton_model: str = "image_embedding"
    triton_timeout_s: float = 10.0
    milvus_uri: str = "data/milvus.db"  # a path: Milvus Lite (embedded); http://host:19530: server
    milvus_token: str = ""
    milvus_timeout_s: float = 5.0
    milvus_index_type: str = "AUTOINDEX"
    index_refresh_s: float = 1.0
    max_k: int = 1000
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 16_000_000
    max_message_bytes: int = 16 * 1024 * 1024
    # UpsertItems: items per stream and image bytes per stream, in all (the stream is checked
    # whole before anything is written, so it is held in memory); DeleteItems: ids per call.
    max_batch_items: int = 1000
    max_upsert_bytes: int = 64 * 1024 * 1024
    shutdown_grace_s: float = 10.0
    # Security (see README "Security"): TLS from PEM files (a client CA makes it mutual TLS),
    # bearer tokens (comma-separated and/or a file, one per line), a per-client rate limit
    # (0: off) and a server-side cap on each request's time (0: the client's deadline only).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    auth_tokens: str = ""
    auth_token_file: str = ""
    rate_limit_rps: float = 0.0
    rate_limit_burst: float = 0.0
    auth_failures_per_minute: float = 10.0  # per client address; then RESOURCE_EXHAUSTED
    request_timeout_s: float = 30.0
    log_level: str = "INFO"
    log_format: str = "json"  # json | text
    # A/B experiment (see README): name, arms "name=policy:weight, ...", hashing salt, and
    # whether request metadata x-visrec-arm may force an arm (for QA only).
    experiment: str = ""
    experiment_arms: str = ""
    experiment_salt: str = ""
    experiment_override: bool = False
    # Personalisation
    interaction_weights: str = DEFAULT_WEIGHTS
    profile_rate: float = 0.3  # how far one weight-1 interaction moves a profile
    recent_items: int = 50  # remembered per user (exclude_seen, re-embedding on rollout)
    overfetch: int = 5  # candidates fetched per requested item before ranking
    max_candidates: int = 1000
    recent_queries: int = 10  # most recent items that query the index (multi-interest)
    popular_refresh_s: float = 30.0

    def __post_init__(self) -> None:
        positive = ("triton_timeout_s", "milvus_timeout_s", "index_refresh_s", "max_k",
                    "max_image_bytes", "max_image_pixels", "max_message_bytes",
                    "max_batch_items", "max_upsert_bytes")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{env_name(name)} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"{env_name('metrics_port')} must be a port number (0 disables)")
        for name in ("rate_limit_rps", "rate_limit_burst", "request_timeout_s",
                     "auth_failures_per_minute"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{env_name(name)} must be >= 0, got {getattr(self, name)}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(f"TLS needs both {env_name('tls_cert_file')} and "
                              f"{env_name('tls_key_file')}")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError(f"{env_name('tls_client_ca_file')} (mutual TLS) needs "
                              f"{env_name('tls_cert_file')} and {env_name('tls_key_file')}")
        if self.shutdown_grace_s < 0:
            raise ConfigError(f"{env_name('shutdown_grace_s')} must be >= 0")
        if self.max_image_bytes > self.max_message_bytes:
            raise ConfigError(
                f"{env_name('max_image_bytes')} ({self.max_image_bytes}) must not exceed "
                f"{env_name('max_message_bytes')} ({self.max_message_bytes})"
            )
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"{env_name('log_format')} must be 'json' or 'text'")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"{env_name('log_level')} must be DEBUG, INFO, WARNING or ERROR")
        for name in ("grpc_address", "triton_url", "triton_model", "milvus_uri"):
            if not getattr(self, name):
                raise ConfigError(f"{env_name(name)} must not be empty")
        for name in ("recent_items", "overfetch", "max_candidates", "popular_refresh_s",
                     "recent_queries"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{env_name(name)} must be > 0, got {getattr(self, name)}")
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        return cls(**values_from_env(cls, environ))


def env_name(field: str) -> str:
    return PREFIX + field.upper()


def values_from_env(cls: type, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fields of dataclass ``cls`` that ``VISREC_<FIELD>`` variables set, parsed to the
    type of each field's default; a malformed value is a ConfigError naming the variable."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        raw = environ.get(env_name(f.name))
        if raw is not None:
            values[f.name] = _parse(f.name, raw, type(f.default))
    return values


def epilog(cls: type) -> str:
    """``--help`` text listing every variable of dataclass ``cls`` with its default."""
    return "\n".join(f"  {env_name(f.name)} (default {f.default!r})"
                     for f in dataclasses.fields(cls))


def _parse(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{env_name(name)}={raw!r}: expected true or false")
    try:
        if kind is int:
            return int(raw.strip())
        if kind is float:
            return float(raw.strip())
    except ValueError:
        raise ConfigError(
            f"{env_name(name)}={raw!r}: expected {'an integer' if kind is int else 'a number'}"
        ) from None
    return raw.strip()
