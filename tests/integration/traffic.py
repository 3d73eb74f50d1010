"""Steady traffic on every RPC through one or more gateways, recorded answer by answer (the
hot-reload checks): SearchByImage and SimilarItems (whose answers identify the model version
that made them), Recommend and RecordInteraction for users who already clicked."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Sequence

import grpc

from tests.support import photo
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc

APPLE = "google:1f34e"
READS = ("SearchByImage", "SimilarItems")


class Traffic:
    """Each method in a loop on every stub; every answer and error is recorded. Recommend and
    RecordInteraction run only when ``items`` (ids to click) is given."""

    def __init__(self, stubs: pb_grpc.RecommenderStub | Sequence[pb_grpc.RecommenderStub],
                 items: Sequence[str] = (), item: str = APPLE, pause_s: float = 0.05) -> None:
        self.stubs = list(stubs) if isinstance(stubs, Sequence) else [stubs]
        self.items = list(items)
        self.item = item
        self.pause_s = pause_s
        self.answers: dict[tuple[str, str], list[tuple[float, tuple[str, ...]]]] = defaultdict(list)
        self.degraded: list[str] = []
        self.errors: list[str] = []
        self.users = [f"traffic-user-{n}" for n in range(4)]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = itertools.count()

    async def warm_up(self, within_s: float = 20.0) -> None:
        """One click per user, so that Recommend is personalised (never cold) afterwards; waits
        until every gateway sees them (other replicas' writes arrive within a time tick)."""
        for n, user in enumerate(self.users):
            await self.stubs[0].RecordInteraction(pb.RecordInteractionRequest(
                user_id=user, item_id=self.items[n % len(self.items)],
                type=pb.INTERACTION_TYPE_CLICK, request_id=f"warm-{user}"), timeout=30)
        deadline = time.monotonic() + within_s
        for stub in self.stubs:
            for user in self.users:
                while (await stub.Recommend(pb.RecommendRequest(user_id=user, k=3),
                                            timeout=30)).degraded == "cold_user":
                    assert time.monotonic() < deadline, f"{user} still cold after {within_s}s"
                    await asyncio.sleep(0.2)

    async def _call(self, method: str, stub: pb_grpc.RecommenderStub, image: bytes) -> None:
        n = next(self._ids)
        if method == "SearchByImage":
            reply = await stub.SearchByImage(pb.SearchByImageRequest(image=image, k=10),
                                             timeout=30)
        elif method == "SimilarItems":
            reply = await stub.SimilarItems(pb.SimilarItemsRequest(item_id=self.item, k=10),
                                            timeout=30)
        elif method == "Recommend":
            user = self.users[n % len(self.users)]
            reply = await stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=30)
        else:
            ack = await stub.RecordInteraction(pb.RecordInteractionRequest(
                user_id=self.users[n % len(self.users)], item_id=self.items[n % len(self.items)],
                type=pb.INTERACTION_TYPE_CLICK, request_id=f"traffic-{n}"), timeout=30)
            if not ack.counted:
                self.errors.append(f"RecordInteraction traffic-{n} was not counted")
            self.answers[(method, "")].append((time.time(), ()))
            return
        if reply.degraded:
            self.degraded.append(f"{time.time():.1f} {method} ({reply.model_version}): "
                                 f"{reply.degraded} {reply.request_id}")
        self.answers[(method, reply.model_version)].append(
            (time.time(), tuple(h.item.id for h in reply.items)))

    async def _loop(self, method: str, stub: pb_grpc.RecommenderStub) -> None:
        image = photo("chelsea", "JPEG")
        while not self._stop.is_set():
            try:
                await self._call(method, stub, image)
            except grpc.aio.AioRpcError as e:
                self.errors.append(f"{method}: {e.code().name}: {e.details()}")
            await asyncio.sleep(self.pause_s)  # steady traffic that leaves CPU for the work

    def start(self) -> None:
        methods = [*READS, "SimilarItems"]
        if self.items:
            methods += ["Recommend", "RecordInteraction"]
        self._tasks = [asyncio.create_task(self._loop(m, s)) for s in self.stubs for m in methods]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def first(self, method: str, version: str) -> float:
        return min(t for t, _ in self.answers[(method, version)])

    def counts(self) -> dict[str, int]:
        return {f"{m} v{v}" if v else m: len(a) for (m, v), a in sorted(self.answers.items())}

    def check_rollout(self, forward_switched_at: float, new: str, old: str) -> None:
        """No failed request, no degraded answer; every answer of a version is that version's
        one answer (nothing mixed two embedding spaces); every version an answer names is one
        of the two; the gateways followed the switch within 2 seconds."""
        assert self.errors == [], self.errors[:5]
        assert self.degraded == [], self.degraded[:5]
        for method in READS:
            answers = {v: {ids for _, ids in self.answers[(method, v)]} for v in (old, new)}
            assert len(answers[old]) == 1 and len(answers[new]) == 1, (method, answers)
            assert answers[old] != answers[new], f"{method}: the two versions answer alike"
            assert len(self.answers[(method, new)]) >= 3
            assert self.first(method, new) - forward_switched_at < 2.0
        versions = {v for (m, v) in self.answers if m != "RecordInteraction"}
        assert versions <= {old, new}, versions
