"""Which model versions Triton serves, changed only through its repository API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from visrec.gateway.core.errors import VisrecError

MODELS = ("preprocess", "image_encoder", "image_embedding")  # load order


class RolloutError(VisrecError):
    pass


class TritonVersions:
    """Which versions of the three models Triton serves, through its repository API (the load
    call carries the config with a `specific` version policy, so no file is rewritten)."""

    def __init__(self, url: str, timeout_s: float = 600.0) -> None:
        from tritonclient.grpc.aio import InferenceServerClient

        self._client = InferenceServerClient(url)
        self._timeout = timeout_s

    async def ready(self, model: str = "image_embedding") -> list[str]:
        index = await self._client.get_model_repository_index(as_json=True)
        return sorted((m["version"] for m in index.get("models", [])
                       if m.get("name") == model and m.get("state") == "READY"), key=int)

    async def serve(self, versions: Sequence[str]) -> None:
        policy = {"specific": {"versions": sorted({int(v) for v in versions})}}
        for model in MODELS:
            config = (await self._client.get_model_config(model, as_json=True))["config"]
            config["version_policy"] = policy
            async with asyncio.timeout(self._timeout):
                await self._client.load_model(model, config=json.dumps(config))
        missing = [v for v in versions if v not in await self.ready()]
        if missing:
            raise RolloutError(f"Triton did not make image_embedding version(s) {missing} ready")

    async def close(self) -> None:
        await self._client.close()
