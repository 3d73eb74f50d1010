"""RecordInteraction: move the user's profile towards the item, log the event, count it."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from visrec.gateway.core.active_index import ActiveIndex
from visrec.gateway.core.checks import Limits, check_id
from visrec.gateway.core.observer import Observer, Stages
from visrec.gateway.core.personalised import Personalisation
from visrec.gateway.core.profiles import apply_interaction, event_key
from visrec.platform.domain import Interaction, InteractionResult
from visrec.platform.errors import InvalidArgument, NotFound
from visrec.platform.ports import VectorStore


class KeyedLocks:
    """One asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: Counter[str] = Counter()

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                del self._locks[key]


class InteractionRecorder:
    def __init__(self, store: VectorStore, index: ActiveIndex, limits: Limits,
                 p: Personalisation, stages: Stages, observer: Observer,
                 clock: Callable[[], float]) -> None:
        self._store = store
        self._index = index
        self._limits = limits
        self._p = p
        self._stage = stages
        self._observer = observer
        self._clock = clock
        self._user_locks = KeyedLocks()

    async def record(self, user_id: str, item_id: str, kind: str, request_id: str = "",
                     arm_override: str | None = None) -> InteractionResult:
        """Apply one interaction, whole or not at all: move the user's profile towards the item,
        then append it to the log (the commit point: every count is derived from the log). A
        retry with the same request id, item and type adds nothing and answers counted=False;
        a retry after a failure completes what the failed call left undone."""
        check_id("user_id", user_id, self._limits.max_id_length)
        check_id("item_id", item_id, self._limits.max_id_length)
        if kind not in self._p.weights:
            raise InvalidArgument(
                f"interaction type must be one of {', '.join(self._p.weights)}, got {kind!r}")
        if request_id:
            check_id("request_id", request_id, 128)
        arm = self._p.arm_for(user_id, arm_override)
        weight = self._p.weights[kind]
        index = await self._index.current()
        key = event_key(user_id, request_id, item_id, kind)
        with self._stage("lookup"):
            vectors, logged = await asyncio.gather(
                self._store.get_vectors(index, [item_id]),
                self._store.event_logged(key) if key else _false())
        if item_id not in vectors:
            raise NotFound(f"item {item_id!r} is not in the catalog")
        if logged:  # a retry of an acknowledged interaction: nothing to do
            self._observer.interaction(self._p.experiment.name, arm.name, arm.policy.name, kind,
                                       False)
            return InteractionResult(self._p.experiment.name, arm.name, False)
        now = self._clock()
        with self._stage("profile"):
            async with self._user_locks.hold(user_id):
                profile = await self._store.get_profile(index, user_id)
                # The profile remembers the keys it applied: after a call that moved it and then
                # failed to log, the retry logs without moving it twice.
                if key is None or profile is None or key not in profile.recent_events:
                    updated = apply_interaction(
                        profile, user_id, item_id, vectors[item_id], kind, weight,
                        rate=self._p.profile_rate, now=now, key=key,
                        recent_items=self._p.recent_items)
                    await self._store.put_profile(index, updated)
        event = Interaction(
            event_id=key or uuid.uuid4().hex, user_id=user_id, item_id=item_id, kind=kind,
            weight=weight, at=now, experiment=self._p.experiment.name, arm=arm.name,
            policy=arm.policy.name, request_id=request_id, model_version=index.model_version)
        await self._store.log_interaction(event)
        self._observer.interaction(self._p.experiment.name, arm.name, arm.policy.name, kind,
                                   True)
        return InteractionResult(self._p.experiment.name, arm.name, True)


async def _false() -> bool:
    return False
