"""Triton on CPU serves the exported model exactly as the model runs in-process."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from tritonclient.grpc import InferInput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from tests.support import bomb_png, odd_images, photo, truncated_png


def _request(images: list[bytes]) -> list[InferInput]:
    batch = np.array([[x] for x in images], dtype=object)
    inp = InferInput("IMAGE", list(batch.shape), "BYTES")
    inp.set_data_from_numpy(batch)
    return [inp]


async def _embed(client: InferenceServerClient, images: list[bytes]) -> np.ndarray:
    result = await client.infer("image_embedding", _request(images), client_timeout=60)
    return result.as_numpy("EMBEDDING")


@pytest.fixture(scope="module")
def encoder_session(model_repository):
    return ort.InferenceSession(str(model_repository / "image_encoder" / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])


def _reference(session: ort.InferenceSession, data: bytes) -> np.ndarray:
    """timm's own eval transform (an independent implementation) + ONNX Runtime in-process;
    the default export keeps the whole picture (crop 1.0; test_imaging covers 0.875 too)."""
    from timm.data import create_transform

    tf = create_transform(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=1.0,
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = tf(Image.open(io.BytesIO(data)).convert("RGB")).numpy()[None]
    return session.run(["EMBEDDING"], {"PIXELS": x})[0][0]


@pytest.mark.parametrize("name, fmt", [("chelsea", "JPEG"), ("coffee", "PNG"),
                                       ("astronaut", "PNG"), ("rocket", "JPEG")])
async def test_triton_embedding_equals_in_process_onnxruntime(triton, encoder_session, name, fmt):
    data = photo(name, fmt)
    async with InferenceServerClient(triton.grpc_url) as client:
        got = (await _embed(client, [data]))[0]
    want = _reference(encoder_session, data)
    assert got.shape == (1280,)
    assert abs(np.linalg.norm(got) - 1.0) < 1e-4
    cosine = float(got @ want / np.linalg.norm(want))
    assert cosine >= 0.9999, cosine


async def test_awkward_encodings_embed_like_their_rgb_decoding(triton, encoder_session,
                                                              model_repository):
    from visrec.export.triton_backends import imaging

    exported = json.loads((model_repository / "image_embedding" / "1" / "preprocess.json")
                          .read_text())
    spec = {k: exported[k] for k in ("height", "width", "resize_shorter", "interpolation",
                                     "mean", "std")}
    assert spec["resize_shorter"] == 224  # the default export keeps the whole picture
    images = odd_images()
    async with InferenceServerClient(triton.grpc_url) as client:
        got = await _embed(client, list(images.values()))
    for (name, data), vec in zip(images.items(), got, strict=True):
        x = imaging.to_pixels(imaging.decode(data, 10**8), **spec)[None]
        want = encoder_session.run(["EMBEDDING"], {"PIXELS": x})[0][0]
        assert float(vec @ want) >= 0.9999, name


async def test_corrupt_image_fails_its_own_request_not_the_batch(triton):
    """Concurrent requests share dynamic batches; only the corrupt one may fail."""
    good = [photo("chelsea", "JPEG"), photo("coffee", "PNG")] * 6
    bad = {3: truncated_png(), 7: b"definitely not an image", 10: bomb_png()}
    images = [bad.get(i, g) for i, g in enumerate(good)]
    async with InferenceServerClient(triton.grpc_url) as client:
        results = await asyncio.gather(*(_embed(client, [im]) for im in images),
                                       return_exceptions=True)
        stats = await client.get_inference_statistics("image_embedding", as_json=True)
    for i, r in enumerate(results):
        if i in bad:
            assert isinstance(r, InferenceServerException), i
            assert r.status() == "StatusCode.INVALID_ARGUMENT"
            assert any(w in r.message() for w in ("cannot decode", "not a recognised",
                                                  "too large")), r.message()
        else:
            assert isinstance(r, np.ndarray) and r.shape == (1, 1280), (i, r)
    s = stats["model_stats"][0]
    assert int(s["inference_count"]) >= len(images)


async def test_decompression_bomb_is_refused_by_triton_itself(triton):
    async with InferenceServerClient(triton.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="too large"):
            await _embed(client, [bomb_png()])


async def test_batched_request_returns_one_embedding_per_image(triton):
    images = [photo("chelsea", "JPEG")] * 5 + [photo("coffee", "PNG")] * 3
    async with InferenceServerClient(triton.grpc_url) as client:
        out = await _embed(client, images)
    assert out.shape == (8, 1280)
    assert np.allclose(out[0], out[4], atol=1e-5) and not np.allclose(out[0], out[5], atol=1e-2)


async def test_the_gpu_layout_calling_the_encoder_model_embeds_the_same(
        triton, model_repository, tmp_path):
    """GPU targets keep the encoder a Triton model (onnxruntime / tensorrt backend) that
    image_embedding N calls through BLS; the cpu target runs N's model.onnx in the pipeline.
    Both layouts, served side by side from the same files, give the same vectors, and the
    BLS one really goes through image_encoder (its inference count grows)."""
    import shutil

    from visrec.export import repository as repo
    from visrec.local.milvus_server import free_port
    from visrec.local.triton_server import TritonServer

    for model in repo.MODELS:
        shutil.copytree(model_repository / model / "1", tmp_path / model / "1")
        config = repo.parse_pbtxt(repo.config_path(model_repository, model).read_text())
        config.version_policy.specific.versions[:] = [1]
        if model == repo.PIPELINE:
            assert config.parameters["encoder_runtime"].string_value == "onnxruntime"
            config.parameters["encoder_runtime"].string_value = "triton"
        repo.config_path(tmp_path, model).write_text(repo.to_pbtxt(config))
    images = [photo(name, fmt) for name, fmt in (("chelsea", "JPEG"), ("coffee", "PNG"),
                                                 ("astronaut", "PNG"), ("rocket", "JPEG"))]
    bls = TritonServer(repository=tmp_path, http_port=free_port(), grpc_port=free_port(),
                       metrics_port=free_port(), log_file=tmp_path / "triton.log")
    bls.start()
    try:
        async with InferenceServerClient(bls.grpc_url) as client:
            via_bls = await _embed(client, images)
            stats = await client.get_inference_statistics("image_encoder", as_json=True)
        async with InferenceServerClient(triton.grpc_url) as client:
            in_process = await _embed(client, images)
    finally:
        bls.stop()
    assert int(stats["model_stats"][0]["inference_count"]) == len(images)
    assert via_bls.shape == in_process.shape == (4, 1280)
    assert np.min(np.sum(via_bls * in_process, axis=1)) >= 0.9999
