"""Steady read traffic through a gateway, recorded answer by answer (the hot-reload checks)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import grpc

from tests.support import photo
from visrec.gateway._pb.visrec.v1 import recommender_pb2 as pb
from visrec.gateway._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc

APPLE = "google:1f34e"


class Traffic:
    """SearchByImage and SimilarItems in a loop; every answer and error is recorded."""

    def __init__(self, stub: pb_grpc.RecommenderStub) -> None:
        self.stub = stub
        self.answers: dict[tuple[str, str], list[tuple[float, tuple[str, ...]]]] = defaultdict(list)
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _loop(self, method: str) -> None:
        image = photo("chelsea", "JPEG")
        while not self._stop.is_set():
            try:
                if method == "SearchByImage":
                    reply = await self.stub.SearchByImage(
                        pb.SearchByImageRequest(image=image, k=10), timeout=30)
                else:
                    reply = await self.stub.SimilarItems(
                        pb.SimilarItemsRequest(item_id=APPLE, k=10), timeout=30)
                self.answers[(method, reply.model_version)].append(
                    (time.time(), tuple(h.item.id for h in reply.items)))
            except grpc.aio.AioRpcError as e:
                self.errors.append(f"{method}: {e.code().name}: {e.details()}")
            await asyncio.sleep(0.05)  # steady traffic that leaves CPU for the re-embedding

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(m))
                       for m in ("SearchByImage", "SimilarItems", "SimilarItems")]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def first(self, method: str, version: str) -> float:
        return min(t for t, _ in self.answers[(method, version)])

    def check_rollout(self, forward_switched_at: float, new: str, old: str) -> None:
        """No failed request; every answer of a version is that version's one answer (nothing
        mixed two embedding spaces); the gateway followed the switch within 2 seconds."""
        assert self.errors == [], self.errors[:5]
        for method in ("SearchByImage", "SimilarItems"):
            answers = {v: {ids for _, ids in self.answers[(method, v)]} for v in (old, new)}
            assert len(answers[old]) == 1 and len(answers[new]) == 1, (method, answers)
            assert answers[old] != answers[new], f"{method}: the two versions answer alike"
            assert len(self.answers[(method, new)]) >= 3
            assert self.first(method, new) - forward_switched_at < 2.0
