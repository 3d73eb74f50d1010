"""User profiles: the maths of one interaction (pure, no I/O).

A profile vector lives in the embedding space of one model version (it is stored beside that
version's items), so it is only ever compared with item vectors of the same version. Each
interaction moves it towards the item's vector by an amount that grows with the interaction's
weight: ``alpha = 1 - (1 - rate) ** weight``, so a purchase of weight 4 counts exactly like four
clicks of weight 1 on the same item. The moving average itself is stored (not re-normalised
after each step, which would break that equivalence); search uses cosine similarity, which
normalises the query.
"""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np

from visrec.platform.domain import UserProfile

INTERACTION_TYPES = ("view", "click", "add_to_cart", "purchase")
DEFAULT_WEIGHTS = "view=0.1,click=1,add_to_cart=2,purchase=4"
RECENT_EVENTS = 256  # idempotency keys remembered per user


class WeightsError(ValueError):
    pass


def parse_weights(text: str) -> dict[str, float]:
    """``view=0.1,click=1,...`` -> weights; every interaction type needs one, each >= 0."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([a-z_]+)\s*=\s*([0-9]*\.?[0-9]+)", part)
        if not m:
            raise WeightsError(f"cannot parse {part!r}; expected type=weight, e.g. click=1")
        name, value = m.group(1), float(m.group(2))
        if name not in INTERACTION_TYPES:
            raise WeightsError(f"unknown interaction type {name!r}; known: "
                               f"{', '.join(INTERACTION_TYPES)}")
        if not math.isfinite(value) or value > 100:
            raise WeightsError(f"weight of {name!r} must be within [0, 100]")
        weights[name] = value
    missing = [t for t in INTERACTION_TYPES if t not in weights]
    if missing:
        raise WeightsError(f"no weight for {', '.join(missing)}")
    return weights


def event_key(user_id: str, request_id: str, item_id: str, kind: str) -> str | None:
    """The idempotency key of an interaction; None when the caller gave no request id."""
    if not request_id:
        return None
    raw = "\x1f".join((user_id, request_id, item_id, kind)).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def apply_interaction(
    profile: UserProfile | None,
    user_id: str,
    item_id: str,
    item_vector: np.ndarray,
    kind: str,
    weight: float,
    *,
    rate: float,
    now: float,
    key: str | None,
    recent_items: int = 50,
) -> UserProfile:
    """The profile after one interaction (a new profile for a first interaction)."""
    item = np.asarray(item_vector, dtype=np.float32)
    old = profile.vector if profile is not None else None
    if old is None:
        vector = item if weight > 0 else None
    else:
        alpha = 1.0 - (1.0 - rate) ** weight
        vector = ((1.0 - alpha) * np.asarray(old, dtype=np.float32) + alpha * item).astype(
            np.float32)
    prev = profile or UserProfile(user_id)
    counts = dict(prev.counts)
    counts[kind] = counts.get(kind, 0) + 1
    recent = (item_id, *(i for i in prev.recent_items if i != item_id))[:recent_items]
    events = (key, *prev.recent_events)[:RECENT_EVENTS] if key else prev.recent_events
    return UserProfile(user_id, vector, recent, counts, events, prev.interactions + 1, now)
