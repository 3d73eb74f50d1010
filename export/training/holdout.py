"""The one split of users between training and evaluation: a salted hash of the user id puts a
share of users in the hold-out, which ``visrec-train`` never reads and ``visrec-evaluate`` scores
on. Both import it from here, so they cannot disagree."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from visrec.gateway.core.domain import Interaction

DEFAULT_SALT = "visrec-holdout"


def held_out(user_id: str, percent: float, salt: str = DEFAULT_SALT) -> bool:
    """Whether a user is in the evaluation split: a stable, stateless hash bucket in [0, 100)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10000 < percent * 100


def items_by_user(events: Iterable[Interaction]) -> dict[str, list[str]]:
    """Each user's distinct items, in the order of their first interaction."""
    out: dict[str, dict[str, None]] = defaultdict(dict)
    for e in sorted(events, key=lambda e: (e.at, e.event_id)):
        out[e.user_id].setdefault(e.item_id, None)
    return {u: list(items) for u, items in out.items()}


@dataclass(frozen=True)
class Case:
    user_id: str
    history: tuple[str, ...]
    targets: frozenset[str]


def cases(events: Iterable[Interaction], percent: float, salt: str = DEFAULT_SALT,
          known: frozenset[str] | None = None) -> list[Case]:
    """Held-out users with >= 2 distinct (known) items: first half history, the rest targets."""
    out = []
    for user, items in sorted(items_by_user(events).items()):
        if not held_out(user, percent, salt):
            continue
        items = [i for i in items if known is None or i in known]
        if len(items) < 2:
            continue
        half = len(items) // 2
        out.append(Case(user, tuple(items[:half]), frozenset(items[half:])))
    return out
