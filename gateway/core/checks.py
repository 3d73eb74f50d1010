"""Request checks every use case shares (pure)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from visrec.platform.errors import InvalidArgument


@dataclass(frozen=True)
class Limits:
    max_k: int = 1000
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 16_000_000
    max_id_length: int = 256
    max_batch_items: int = 1000  # items per UpsertItems stream / DeleteItems call
    max_upsert_bytes: int = 64 * 1024 * 1024  # images per UpsertItems stream, in all
    # The whole vector-store part of one read (several Milvus calls) within this many seconds,
    # else the degraded answer: a slow Milvus must not hold a caller past its deadline.
    store_budget_s: float = 5.0

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.max_k:
            raise InvalidArgument(f"k must be between 1 and {self.max_k}, got {k}")
        return k


def has_control_characters(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)


def check_id(kind: str, value: str, max_length: int) -> str:
    if not value:
        raise InvalidArgument(f"{kind} is empty")
    if len(value) > max_length:
        raise InvalidArgument(f"{kind} is {len(value)} characters long; the limit is {max_length}")
    if has_control_characters(value):
        raise InvalidArgument(f"{kind} contains control characters")
    return value
