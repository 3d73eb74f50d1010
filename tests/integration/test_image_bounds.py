"""Bounded work per image, whatever its header says: pathological images sent at once to the real
Triton (directly, past the gateway's header check) and through the gateway are each answered
within a bounded time, Triton's memory stays bounded, and normal traffic keeps answering."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.support import encode, photo
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc
from visrec.platform.errors import InvalidArgument
from visrec.platform.triton_embedder import TritonEmbedder

# The stated bounds (2 cores, two python-backend instances decoding on four threads each).
ANSWER_WITHIN_S = 20.0
TRITON_GROWTH_MB = 800


def _animated(frames: int) -> bytes:
    first = Image.new("P", (64, 64), 1)
    rest = [Image.new("P", (64, 64), i % 255) for i in range(frames - 1)]
    buf = io.BytesIO()
    first.save(buf, format="GIF", save_all=True, append_images=rest, duration=10)
    return buf.getvalue()


def _progressive(size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return encode(img, "JPEG", progressive=True, quality=85)


def pathological() -> dict[str, tuple[bytes, bool]]:
    """name -> (encoded bytes, whether the model accepts it)."""
    palette = Image.new("P", (3000, 3000), 0)
    palette.info["transparency"] = 0
    return {
        "16000x1 png": (encode(Image.new("RGB", (16000, 1))), False),
        "1x16000 png": (encode(Image.new("RGB", (1, 16000))), False),
        "8000x100 png": (encode(Image.new("RGB", (8000, 100))), False),
        "2400x120 png (ratio 20)": (encode(Image.new("RGB", (2400, 120), (9, 9, 9))), True),
        "4000x4000 png (the pixel limit)": (encode(Image.new("RGB", (4000, 4000), (1, 2, 3))),
                                            True),
        "4001x4000 png": (encode(Image.new("RGB", (4001, 4000))), False),
        "4000x3000 progressive jpeg": (_progressive((4000, 3000)), True),
        "2000x2000 16-bit png": (encode(Image.fromarray(
            np.full((2000, 2000), 40000, dtype=np.uint16))), True),
        "3000x3000 palette png with transparency": (encode(palette, transparency=0), True),
        "gif with 3000 frames": (_animated(3000), True),
    }


# why each refused image is refused (the gateway's header check says it before Triton is called)
REFUSED_BECAUSE = {
    "16000x1 png": "shorter side is under the minimum",
    "1x16000 png": "shorter side is under the minimum",
    "8000x100 png": "80 times the other, more than the limit",
    "4001x4000 png": "16004000 pixels, more than the limit",
}


def triton_rss_mb(pid: int) -> float:
    """Resident memory of the Triton server and its python-backend stubs (its descendants)."""
    from visrec.local.milvus_server import _descendants

    total = 0
    for p in [pid, *_descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@pytest.mark.timeout(600)
async def test_pathological_images_cost_bounded_time_and_memory_while_traffic_flows(
        triton, gateway, ingested, capsys):
    images = pathological()
    assert triton.process is not None
    before = triton_rss_mb(triton.process.pid)
    peak = before
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, triton_rss_mb(triton.process.pid))  # type: ignore[union-attr]
            await asyncio.sleep(0.1)

    direct = TritonEmbedder(triton.grpc_url, timeout_s=ANSWER_WITHIN_S + 10)
    served, failures = [0], []

    async def normal_traffic(stub: pb_grpc.RecommenderStub) -> None:
        while not stop.is_set():
            try:
                await stub.SimilarItems(pb.SimilarItemsRequest(item_id="google:1f34e", k=5),
                                        timeout=30)
                served[0] += 1
            except grpc.aio.AioRpcError as e:
                failures.append(f"{e.code().name}: {e.details()}")
            await asyncio.sleep(0.05)

    async def to_triton(name: str, data: bytes) -> tuple[str, float, str]:
        start = time.monotonic()
        try:
            await direct.embed([data], model_version="1")
            outcome = "embedded"
        except InvalidArgument as e:
            outcome = f"refused: {e}"
        return name, time.monotonic() - start, outcome

    async def to_gateway(stub: pb_grpc.RecommenderStub, name: str, data: bytes
                         ) -> tuple[str, float, str]:
        start = time.monotonic()
        try:
            await stub.SearchByImage(pb.SearchByImageRequest(image=data, k=3), timeout=60)
            outcome = "answered"
        except grpc.aio.AioRpcError as e:
            outcome = f"{e.code().name}: {e.details()}"
        return name, time.monotonic() - start, outcome

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        tasks = [asyncio.create_task(sample()), asyncio.create_task(normal_traffic(stub))]
        await asyncio.sleep(1)
        # Everything at once, twice over: straight into Triton, and through the gateway.
        direct_results = await asyncio.gather(*(to_triton(n, d) for n, (d, _) in images.items()
                                                for _ in range(2)))
        gateway_results = await asyncio.gather(*(to_gateway(stub, n, d)
                                                 for n, (d, _) in images.items()))
        normal = await stub.SearchByImage(pb.SearchByImageRequest(image=photo(), k=3),
                                          timeout=30)
        stop.set()
        await asyncio.gather(*tasks)
    await direct.close()

    with capsys.disabled():
        print(f"\nTriton RSS {before:.0f} MB before, {peak:.0f} MB at the peak")
        for name, seconds, outcome in sorted(direct_results):
            print(f"  triton   {name:<42} {seconds:5.2f}s  {outcome[:70]}")
        for name, seconds, outcome in sorted(gateway_results):
            print(f"  gateway  {name:<42} {seconds:5.2f}s  {outcome[:70]}")
    for name, seconds, outcome in direct_results:
        accepted = images[name][1]
        assert (outcome == "embedded") == accepted, (name, outcome)
        assert seconds < ANSWER_WITHIN_S, (name, seconds)
    for name, seconds, outcome in gateway_results:
        accepted = images[name][1]
        assert (outcome == "answered") == accepted, (name, outcome)
        if not accepted:  # refused by the caller's mistake, for the reason that applies
            assert outcome.startswith("INVALID_ARGUMENT") and REFUSED_BECAUSE[name] in outcome, (
                name, outcome)
        assert seconds < ANSWER_WITHIN_S, (name, seconds)
    assert peak - before < TRITON_GROWTH_MB, f"Triton grew by {peak - before:.0f} MB"
    assert failures == [] and served[0] >= 10, (served, failures[:3])
    assert normal.items and normal.model_version == "1"
