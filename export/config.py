"""Configuration of the machine-learning jobs (export, ingest, rollout, train, evaluate): a frozen
dataclass read once from ``VISREC_*`` variables, like the gateway's. The variables the gateway
also reads (``VISREC_MILVUS_URI``, ``VISREC_TRITON_URL``, logs...) are the same declarations
(``visrec.platform.settings``), so they mean the same thing with the same default; the jobs' own
deadlines are longer (``VISREC_JOB_*``): they move whole catalogs, not one request."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from visrec.platform.settings import (
    ConfigError,
    LogSettings,
    MilvusSettings,
    TritonSettings,
    env_name,
    from_env,
    require_positive,
    require_set,
    setting,
)

if TYPE_CHECKING:
    from visrec.export.indexing.triton_fleet import TritonFleet
    from visrec.export.milvus import MilvusDatabase
    from visrec.platform.triton_embedder import TritonEmbedder


@dataclass(frozen=True)
class JobsConfig(MilvusSettings, TritonSettings, LogSettings):
    triton_replicas: str = setting(
        "", "every Triton replica the rollout drives: host:port entries, comma-separated, each "
        "name resolved to all its addresses (a headless Service); empty: those of "
        "VISREC_TRITON_URL")
    triton_admin_key: str = setting(
        "", "key of Triton's restricted repository API (--grpc-restricted-protocol): the "
        "rollout presents it; gateways do not have it")
    triton_admin_key_file: str = setting("", "the same key, read from a file (a Secret)")
    job_milvus_timeout_s: float = setting(60.0, "deadline of one Milvus call of a job")
    job_triton_timeout_s: float = setting(
        300.0, "deadline of one Triton call of a job (a model load, a batch of images)")
    model_repository: str = setting("model_repository", "the Triton model repository")
    catalog: str = setting(
        "data/catalog/emoji.jsonl", "the catalog, JSONL: one object per item with id, image (a "
        "path relative to the file), name, category, subcategory; other keys become filterable "
        "attributes. Ingest embeds it; train and evaluate read its groups for --group-by")
    artifacts_dir: str = setting("artifacts", "where training writes heads and reports")

    def __post_init__(self) -> None:
        for group in (MilvusSettings, TritonSettings, LogSettings):
            group.__post_init__(self)
        require_positive(self, "job_milvus_timeout_s", "job_triton_timeout_s")
        require_set(self, "model_repository", "catalog", "artifacts_dir")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JobsConfig:
        return from_env(cls, environ)

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
        from visrec.platform.triton_embedder import TritonEmbedder

        return TritonEmbedder(self.triton_url, self.triton_model,
                              timeout_s=self.job_triton_timeout_s,
                              attempts=self.triton_attempts,
                              probe_timeout_s=self.triton_probe_timeout_s)

    def milvus(self) -> MilvusDatabase:
        """Every Milvus role over one connection, with the jobs' deadline."""
        from visrec.export.milvus import MilvusDatabase

        return MilvusDatabase(self.milvus_uri, self.milvus_token, self.job_milvus_timeout_s,
                              self.milvus_index_type)


SERVICE_FLAGS = ("milvus_uri", "milvus_token", "milvus_index_type")
FLEET_FLAGS = ("triton_replicas", "model_repository")
FLAG_NAMES = {"model_repository": "--repository"}  # shorter than the variable's name
FLAG_TYPES: dict[str, type] = {"catalog": Path}


def add_setting_flags(p: argparse.ArgumentParser, config: JobsConfig,
                      names: tuple[str, ...]) -> None:
    """A ``--flag`` for each named setting, defaulting to its configured value, with the
    setting's own help: the flag and the variable are one declaration."""
    declared = {f.name: f for f in dataclasses.fields(JobsConfig)}
    for name in names:
        text = declared[name].metadata.get("help", "")
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        kind = FLAG_TYPES.get(name, str)
        p.add_argument(flag, dest=name, type=kind, default=kind(getattr(config, name)),
                       help=f"{text} ({env_name(name)})".replace("%", "%%"))


def add_service_arguments(p: argparse.ArgumentParser, config: JobsConfig, *,
                          triton: bool = True) -> None:
    """The flags every job shares, defaulting to the configuration (``VISREC_*``)."""
    add_setting_flags(p, config, SERVICE_FLAGS + (("triton_url",) if triton else ()))


def add_fleet_arguments(p: argparse.ArgumentParser, config: JobsConfig) -> None:
    """What the rollout needs beyond the shared flags: the replicas and the repository."""
    add_setting_flags(p, config, FLEET_FLAGS)


def with_arguments(config: JobsConfig, args: argparse.Namespace) -> JobsConfig:
    """The configuration with the setting flags' values."""
    changes = {name: getattr(args, name) for name in
               (*SERVICE_FLAGS, "triton_url", *FLEET_FLAGS, "catalog")
               if getattr(args, name, None) is not None}
    return dataclasses.replace(config, **changes)
