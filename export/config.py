"""Configuration of the machine-learning jobs (export, ingest, rollout, train, evaluate): a frozen
dataclass read once from ``VISREC_*`` variables, like the gateway's. Variables the gateway also
reads (``VISREC_MILVUS_URI``, ``VISREC_TRITON_URL``...) mean the same thing here; the jobs' own
deadlines are longer (``VISREC_JOB_*``): they move whole catalogs, not one request."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from visrec.gateway.config import ConfigError, env_name, values_from_env

if TYPE_CHECKING:
    from visrec.export.indexing.triton_fleet import TritonFleet
    from visrec.gateway.adapters.milvus import MilvusDatabase
    from visrec.gateway.adapters.triton_embedder import TritonEmbedder


@dataclass(frozen=True)
class JobsConfig:
    milvus_uri: str = "data/milvus.db"  # a path: Milvus Lite (one process per file); or a URL
    milvus_token: str = ""
    milvus_index_type: str = "AUTOINDEX"
    triton_url: str = "localhost:8001"
    # Every Triton replica the rollout drives: host:port entries, comma-separated, each name
    # resolved to all its addresses (a headless Service); empty: the replicas of triton_url.
    triton_replicas: str = ""
    # The key of Triton's restricted repository API (--grpc-restricted-protocol): the rollout
    # presents it; gateways do not have it. VISREC_TRITON_ADMIN_KEY_FILE reads it from a file.
    triton_admin_key: str = ""
    triton_admin_key_file: str = ""
    job_milvus_timeout_s: float = 60.0
    job_triton_timeout_s: float = 300.0
    model_repository: str = "model_repository"
    catalog: str = "data/catalog/emoji.jsonl"
    artifacts_dir: str = "artifacts"

    def __post_init__(self) -> None:
        for name in ("job_milvus_timeout_s", "job_triton_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{env_name(name)} must be > 0, got {getattr(self, name)}")
        for name in ("milvus_uri", "triton_url", "model_repository", "catalog",
                     "artifacts_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{env_name(name)} must not be empty")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JobsConfig:
        return cls(**values_from_env(cls, environ))

    @property
    def repository_path(self) -> Path:
        return Path(self.model_repository)

    @property
    def catalog_path(self) -> Path:
        return Path(self.catalog)

    @property
    def artifacts_path(self) -> Path:
        return Path(self.artifacts_dir)

    def admin_key(self) -> str:
        if self.triton_admin_key_file:
            try:
                return Path(self.triton_admin_key_file).read_text().strip()
            except OSError as e:
                raise ConfigError(f"{env_name('triton_admin_key_file')}: cannot read "
                                  f"{self.triton_admin_key_file}: {e.strerror}") from e
        return self.triton_admin_key

    def fleet(self) -> TritonFleet:
        """The rollout's handle on every Triton replica and the repository's served set."""
        from visrec.export.indexing.triton_fleet import TritonFleet

        return TritonFleet(self.triton_replicas or self.triton_url, self.repository_path,
                           admin_key=self.admin_key(), timeout_s=self.job_triton_timeout_s)

    def embedder(self) -> TritonEmbedder:
        """The Triton client of the jobs (a catalog batch may take minutes)."""
        from visrec.gateway.adapters.triton_embedder import TritonEmbedder

        return TritonEmbedder(self.triton_url, timeout_s=self.job_triton_timeout_s)

    def milvus(self) -> MilvusDatabase:
        """Every Milvus role over one connection, with the jobs' deadline."""
        from visrec.gateway.adapters.milvus import MilvusDatabase

        return MilvusDatabase(self.milvus_uri, self.milvus_token, self.job_milvus_timeout_s,
                              self.milvus_index_type)



def add_service_arguments(p: argparse.ArgumentParser, config: JobsConfig, *,
                          triton: bool = True) -> None:
    """The flags every job shares, defaulting to the configuration (``VISREC_*``)."""
    p.add_argument("--milvus-uri", default=config.milvus_uri,
                   help="a file path (Milvus Lite: stop the gateway first, one process per "
                        "file) or http://host:19530 (VISREC_MILVUS_URI)")
    p.add_argument("--milvus-token", default=config.milvus_token,
                   help="Milvus credentials (VISREC_MILVUS_TOKEN)")
    p.add_argument("--milvus-index-type", default=config.milvus_index_type,
                   help="vector index of new collections: AUTOINDEX, FLAT, IVF_FLAT, HNSW "
                        "(VISREC_MILVUS_INDEX_TYPE)")
    if triton:
        p.add_argument("--triton-url", default=config.triton_url,
                       help="Triton gRPC host:port (VISREC_TRITON_URL)")


def add_fleet_arguments(p: argparse.ArgumentParser, config: JobsConfig) -> None:
    """What the rollout needs beyond the shared flags: the replicas and the repository."""
    p.add_argument("--triton-replicas", default=config.triton_replicas or None,
                   help="every Triton replica: host:port entries, comma-separated, each name "
                        "resolved to all its addresses, e.g. a headless Service "
                        "triton:8001 (VISREC_TRITON_REPLICAS; default: --triton-url)")
    p.add_argument("--repository", dest="model_repository", default=config.model_repository,
                   help="the model repository every replica reads; the served set is written "
                        "into its configs (VISREC_MODEL_REPOSITORY)")


def with_arguments(config: JobsConfig, args: argparse.Namespace) -> JobsConfig:
    """The configuration with the shared flags' values."""
    changes = {name: getattr(args, name) for name in
               ("milvus_uri", "milvus_token", "milvus_index_type", "triton_url",
                "triton_replicas", "model_repository") if getattr(args, name, None) is not None}
    return dataclasses.replace(config, **changes)
