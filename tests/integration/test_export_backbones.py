"""Any timm or torchvision backbone with a local checkpoint exports the same way, and the result
loads and serves in Triton."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.support import free_port, photo
from visrec.export.cli import build_parser, run
from visrec.export.repository import parse_pbtxt, read_metadata
from visrec.local.triton_server import TritonServer


def _checkpoint(tmp_path, factory, name: str, wrap: bool = False):
    torch.manual_seed(0)
    state = factory().state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": state} if wrap else state, path)
    return path


@pytest.mark.parametrize("backbone, factory, dim, size", [
    ("torchvision:resnet18", lambda: __import__("torchvision").models.resnet18(), 512, 224),
    ("timm:mobilenetv3_small_050",
     lambda: __import__("timm").create_model("mobilenetv3_small_050"), 1024, 224),
])
def test_local_checkpoint_exports_with_parity(tmp_path, backbone, factory, dim, size):
    weights = _checkpoint(tmp_path, factory, backbone.split(":")[1], wrap=backbone.startswith("t"))
    repo = tmp_path / "repo"
    args = build_parser().parse_args(["--backbone", backbone, "--weights", str(weights),
                                      "--repository", str(repo), "--quiet"])
    assert run(args) == 1
    meta = read_metadata(repo, 1)
    assert meta["dim"] == dim and meta["parity"]["max_abs_diff"] <= 1e-4
    assert meta["preprocess"]["height"] == size
    enc = parse_pbtxt((repo / "image_encoder" / "config.pbtxt").read_text())
    assert list(enc.output[0].dims) == [-1]
    spec = json.loads((repo / "image_embedding" / "1" / "preprocess.json").read_text())
    assert spec["height"] == size
    assert sorted(p.name for p in (repo / "image_encoder" / "1").iterdir()) == \
        ["export.json", "model.onnx", "model.py"]
    # The repository is complete: the preprocess sources were copied next to it.
    assert (repo / "preprocess" / "1" / "model.py").exists()
    # Idempotent: the same export again reuses version 1; a new flag value is a new version.
    assert run(args) == 1
    assert read_metadata(repo, 1)["preprocess"]["resize_shorter"] == size  # the whole picture
    assert run(build_parser().parse_args([*vars_to_argv(args), "--crop-pct", "0.875"])) == 2
    # Each version brings its own preprocessing: version 1 keeps its crop.
    v1 = json.loads((repo / "preprocess" / "1" / "preprocess.json").read_text())
    v2 = json.loads((repo / "preprocess" / "2" / "preprocess.json").read_text())
    assert v2["resize_shorter"] == int(size / 0.875) > v1["resize_shorter"] == size


def vars_to_argv(args) -> list[str]:
    return ["--backbone", args.backbone, "--weights", args.weights,
            "--repository", str(args.repository), "--quiet"]


def test_a_repository_keeps_one_target(tmp_path):
    weights = _checkpoint(tmp_path, lambda: __import__("torchvision").models.resnet18(), "r18")
    repo = tmp_path / "repo"
    base = ["--backbone", "torchvision:resnet18", "--weights", str(weights), "--repository",
            str(repo), "--quiet"]
    assert run(build_parser().parse_args(base)) == 1
    from visrec.export.errors import ExportError

    with pytest.raises(ExportError, match="exported for target cpu"):
        run(build_parser().parse_args([*base, "--target", "gpu-onnx"]))


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    weights = _checkpoint(tmp_path, lambda: __import__("torchvision").models.resnet18(), "r18")
    args = build_parser().parse_args(["--backbone", "torchvision:resnet34", "--weights",
                                      str(weights), "--repository", str(tmp_path / "repo")])
    from visrec.export.errors import ExportError

    with pytest.raises(ExportError, match="do not fit the backbone"):
        run(args)
    assert not (tmp_path / "repo" / "image_encoder" / "1").exists()


async def test_exported_torchvision_model_serves_in_triton(tmp_path):
    weights = _checkpoint(tmp_path, lambda: __import__("torchvision").models.resnet18(), "r18")
    repo = tmp_path / "repo"
    run(build_parser().parse_args(["--backbone", "torchvision:resnet18", "--weights",
                                   str(weights), "--repository", str(repo), "--quiet"]))
    from tritonclient.grpc import InferInput
    from tritonclient.grpc.aio import InferenceServerClient

    with TritonServer(repository=repo, http_port=free_port(), grpc_port=free_port(),
                      metrics_port=free_port(), log_file=tmp_path / "triton.log") as server:
        async with InferenceServerClient(server.grpc_url) as client:
            inp = InferInput("IMAGE", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[photo()]], dtype=object))
            out = (await client.infer("image_embedding", [inp])).as_numpy("EMBEDDING")
    assert out.shape == (1, 512) and abs(float(np.linalg.norm(out)) - 1) < 1e-4
    assert json.loads((repo / "image_encoder" / "1" / "export.json").read_text())["target"] == "cpu"
