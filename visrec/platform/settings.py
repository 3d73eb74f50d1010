"""Settings read once from ``VISREC_*`` environment variables, declared once.

Each setting is a field of a frozen dataclass, declared with ``setting(default, help)``: its
name gives the variable (``milvus_uri`` -> ``VISREC_MILVUS_URI``), its default the type a value
is parsed to. The groups both services read (Milvus, Triton, logs) are declared here; the
gateway's and the jobs' configurations inherit them and add their own, so a variable means the
same thing, with the same default, wherever it is read. ``--help`` and docs/configuration.md
are rendered from the same declarations (``markdown_table``; a test keeps the document current).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

PREFIX = "VISREC_"
LOG_FORMATS = ("auto", "json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def setting(default: Any, help: str) -> Any:
    """A field with its default and the one line that documents it."""
    return field(default=default, metadata={"help": help})


def env_name(name: str) -> str:
    return PREFIX + name.upper()


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


def from_env(cls: type[C], environ: Mapping[str, str] | None = None) -> C:
    return cls(**values_from_env(cls, environ))


def require_positive(obj: object, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{env_name(name)} must be > 0, got {getattr(obj, name)}")


def require_non_negative(obj: object, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{env_name(name)} must be >= 0, got {getattr(obj, name)}")


def require_set(obj: object, *names: str) -> None:
    for name in names:
        if not getattr(obj, name):
            raise ConfigError(f"{env_name(name)} must not be empty")


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(variable, default, help) of every setting of ``cls``, in declaration order."""
    return [(env_name(f.name), f.default, f.metadata.get("help", ""))
            for f in dataclasses.fields(cls)]


def epilog(cls: type) -> str:
    """``--help`` text: every variable of ``cls`` with its default and meaning."""
    return "\n".join(f"  {name} (default {default!r})\n      {text}"
                     for name, default, text in describe(cls))


def markdown_table(cls: type) -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, default, text in describe(cls):
        shown = f"`{default!r}`" if default != "" else "(empty)"
        rows.append(f"| `{name}` | {shown} | {text.replace('|', '/')} |")
    return "\n".join(rows)


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


# ---------------------------------------------------------------------- shared groups
@dataclass(frozen=True)
class MilvusSettings:
    milvus_uri: str = setting(
        "data/milvus.db", "a file path: Milvus Lite, embedded (one process per file); or "
        "http://host:19530[/database]: a Milvus server")
    milvus_token: str = setting("", "Milvus credentials (user:password or an API key)")
    milvus_index_type: str = setting(
        "AUTOINDEX", "vector index of new item collections: AUTOINDEX, FLAT, IVF_FLAT, HNSW "
        "(HNSW needs a Milvus server)")

    def __post_init__(self) -> None:
        require_set(self, "milvus_uri")


@dataclass(frozen=True)
class TritonSettings:
    triton_url: str = setting(
        "localhost:8001", "Triton gRPC address: host:port, dns:///name:port (every address "
        "of a headless Service, round robin) or ipv4:a:p,b:p")
    triton_model: str = setting("image_embedding", "the Triton model that embeds images")
    triton_attempts: int = setting(
        3, "tries of one embedding request within its deadline (the next replica after a "
        "replica without the version or a broken connection)")
    triton_probe_timeout_s: float = setting(
        2.0, "deadline of Triton's readiness and model-config reads")

    def __post_init__(self) -> None:
        require_set(self, "triton_url", "triton_model")
        require_positive(self, "triton_attempts", "triton_probe_timeout_s")


@dataclass(frozen=True)
class LogSettings:
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = setting(
        "auto", "json (one object per line, with the request id), text, or auto: text on a "
        "terminal, json otherwise")

    def __post_init__(self) -> None:
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"{env_name('log_format')} must be one of {', '.join(LOG_FORMATS)}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"{env_name('log_level')} must be {', '.join(LOG_LEVELS)}")
