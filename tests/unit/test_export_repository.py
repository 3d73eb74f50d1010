import json
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from visrec.export import repository as repo
from visrec.export.backbones import PreprocessSpec
from visrec.export.cli import build_parser
from visrec.export.errors import ExportError

SPEC = PreprocessSpec(224, 224, 256, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPTS = repo.ServingOptions()


@pytest.mark.parametrize("target", repo.TARGETS)
def test_encoder_config_for_every_target_parses_into_model_config(target, tmp_path):
    path = repo.write_config(tmp_path, repo.encoder_config(target, OPTS), serve=[1])
    parsed = repo.parse_pbtxt(path.read_text())
    assert parsed.name == "image_encoder" and parsed.max_batch_size == 64
    assert [i.name for i in parsed.input] == ["PIXELS"]
    # One config for every version: sizes may differ between versions.
    assert list(parsed.input[0].dims) == [3, -1, -1]
    assert list(parsed.output[0].dims) == [-1]
    assert parsed.HasField("dynamic_batching")
    assert list(parsed.version_policy.specific.versions) == [1]
    kind = parsed.instance_group[0].kind
    if target == "cpu":
        assert parsed.backend == "python" and kind == mc.ModelInstanceGroup.KIND_CPU
    elif target == "gpu-onnx":
        assert parsed.platform == "onnxruntime_onnx" and kind == mc.ModelInstanceGroup.KIND_GPU
        trt = parsed.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    else:
        assert parsed.platform == "tensorrt_plan" and parsed.default_model_filename == "model.plan"


def test_preprocess_and_pipeline_configs_parse(tmp_path):
    pre_path = repo.write_config(tmp_path, repo.preprocess_config(OPTS), serve=[1])
    pipe_path = repo.write_config(tmp_path, repo.pipeline_config(OPTS), serve=[1])
    pre, pipe = repo.parse_pbtxt(pre_path.read_text()), repo.parse_pbtxt(pipe_path.read_text())
    assert pre.input[0].data_type == mc.TYPE_STRING and pre.backend == "python"
    assert list(pre.output[0].dims) == [3, -1, -1]
    assert pipe.name == "image_embedding" and pipe.backend == "python"
    assert pipe.input[0].data_type == mc.TYPE_STRING and list(pipe.output[0].dims) == [-1]
    assert pipe.parameters["encoder_model"].string_value == "image_encoder"
    assert list(pipe.version_policy.specific.versions) == [1]
    # cpu: the pipeline runs N's model.onnx itself; GPU targets call image_encoder N (BLS)
    assert pipe.parameters["encoder_runtime"].string_value == "onnxruntime"
    for target in ("gpu-onnx", "gpu-tensorrt"):
        gpu = repo.pipeline_config(OPTS, target)
        assert gpu.parameters["encoder_runtime"].string_value == "triton"
        assert "intra_op_threads" not in gpu.parameters


def test_the_served_set_is_durable_and_only_the_rollout_changes_it(tmp_path):
    """A new repository serves its first version; rewriting the configs (another export)
    keeps what is served; set_served_versions changes it, only to versions that exist."""
    for version in (1, 2):
        for model in repo.MODELS:
            (tmp_path / model / str(version)).mkdir(parents=True)
    configs = (repo.preprocess_config(OPTS), repo.encoder_config("cpu", OPTS),
               repo.pipeline_config(OPTS))
    for config in configs:
        repo.write_config(tmp_path, config, serve=[1])
    for model in repo.MODELS:
        assert repo.served_versions(tmp_path, model) == [1]
    for config in configs:  # the export of version 2 rewrites the configs
        repo.write_config(tmp_path, config, serve=[2])
    assert repo.served_versions(tmp_path) == [1]
    repo.set_served_versions(tmp_path, ["2", "1"])
    assert all(repo.served_versions(tmp_path, m) == [1, 2] for m in repo.MODELS)
    with pytest.raises(ExportError, match="no version folder \\[3\\]"):
        repo.set_served_versions(tmp_path, [3])
    assert repo.served_versions(tmp_path) == [1, 2]  # a refused change changes nothing


def test_python_versions_carry_their_own_preprocessing_and_are_rewritten_only_on_change(
        tmp_path):
    first = repo.write_python_version(tmp_path, repo.PIPELINE, 3, SPEC)
    assert sorted(p.name for p in first.iterdir()) == ["imaging.py", "model.py",
                                                       "preprocess.json"]
    assert json.loads((first / "preprocess.json").read_text())["resize_shorter"] == 256
    inode = (first / "model.py").stat().st_ino
    repo.write_python_version(tmp_path, repo.PIPELINE, 3, SPEC)
    assert (first / "model.py").stat().st_ino == inode  # identical: left alone
    other = PreprocessSpec(288, 288, 320, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    repo.write_python_version(tmp_path, repo.PIPELINE, 3, other)
    assert json.loads((first / "preprocess.json").read_text())["height"] == 288


def test_unknown_target_is_refused():
    with pytest.raises(ExportError, match="unknown target"):
        repo.encoder_config("tpu", OPTS)


def test_serving_options_are_validated():
    with pytest.raises(ExportError, match="max-batch-size"):
        repo.ServingOptions(max_batch_size=0)


def test_version_folder_appears_whole_or_not_at_all(tmp_path):
    def fill_then_fail(staging: Path) -> dict:
        (staging / "model.onnx").write_bytes(b"half")
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        repo.write_version_atomically(tmp_path, 1, fill_then_fail)
    assert not (tmp_path / "image_encoder" / "1").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".staging")] == []

    final = repo.write_version_atomically(
        tmp_path, 1, lambda d: (d / "model.onnx").write_bytes(b"v1") and {"v": 1})
    assert (final / "model.onnx").read_bytes() == b"v1"
    assert repo.read_metadata(tmp_path, 1) == {"v": 1}
    with pytest.raises(ExportError, match="already exists"):
        repo.write_version_atomically(tmp_path, 1, lambda d: {})
    repo.write_version_atomically(
        tmp_path, 1, lambda d: (d / "model.onnx").write_bytes(b"v1b") and {"v": 2}, replace=True)
    assert (final / "model.onnx").read_bytes() == b"v1b"
    assert repo.existing_versions(tmp_path) == [1]


def test_a_version_is_readable_by_another_user_whatever_the_umask(tmp_path):
    """Triton reads the repository as uid 1000, export writes it as uid 10001: a 0700 version
    folder (mkdtemp's mode) kept Triton from ever loading it."""
    import os
    import stat

    old = os.umask(0o077)
    try:
        repo.write_version_atomically(
            tmp_path, 1, lambda d: (d / "model.onnx").write_bytes(b"v1") and {"v": 1})
        repo.write_python_version(tmp_path, repo.PIPELINE, 1, SPEC)
        repo.write_config(tmp_path, repo.pipeline_config(OPTS), serve=[1])
    finally:
        os.umask(old)
    for path in [tmp_path / "image_encoder", *(tmp_path / "image_encoder").rglob("*"),
                 tmp_path / repo.PIPELINE, *(tmp_path / repo.PIPELINE).rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = 0o755 if path.is_dir() else 0o644
        assert mode & wanted == wanted, f"{path.relative_to(tmp_path)} is {oct(mode)}"


def test_every_flag_is_explained_in_help():
    parser = build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"


def test_tensorrt_target_without_tensorrt_stops_with_a_message_not_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "visrec.export.cli", "--target", "gpu-tensorrt",
         "--repository", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1  # failed: the flags are valid, this machine cannot honour them
    assert "needs TensorRT and an NVIDIA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "image_encoder").exists()


def test_missing_weights_file_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "visrec.export.cli", "--weights", str(tmp_path / "nope.pth"),
         "--repository", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_head_is_exported_with_the_crop_of_the_version_it_was_trained_from(tmp_path):
    """A head learnt on version N's vectors must see N's inputs: without --crop-pct, the
    export takes N's crop (None: the backbone's own, as exports before 1.0 was the default)."""
    import argparse

    from visrec.export.cli import DEFAULT_CROP_PCT, _default_crop
    from visrec.export.errors import ExportError

    repository = tmp_path / "repo"
    for version, crop in (("1", None), ("2", 0.875)):
        folder = repository / "image_encoder" / version
        folder.mkdir(parents=True)
        (folder / "export.json").write_text(json.dumps({"crop_pct": crop}))
    head = tmp_path / "train" / "head.pt"
    head.parent.mkdir()
    head.write_bytes(b"")

    def crop_for(from_version: str | None) -> float | None:
        if from_version is not None:
            (head.parent / "train.json").write_text(json.dumps({"from_version": from_version}))
        return _default_crop(argparse.Namespace(head=head, repository=repository))

    assert crop_for(None) == DEFAULT_CROP_PCT == 1.0  # no train.json: the default, warned
    assert crop_for("1") is None and crop_for("2") == 0.875
    with pytest.raises(ExportError, match="does not hold"):
        crop_for("7")
    assert _default_crop(argparse.Namespace(head=None, repository=repository)) == 1.0


@pytest.mark.parametrize("target, expected", [
    ("cpu", ("image_embedding",)),
    ("gpu-onnx", ("image_encoder", "image_embedding")),
    ("gpu-tensorrt", ("image_encoder", "image_embedding")),
])
def test_a_replica_loads_only_what_its_serving_path_calls(target, expected, tmp_path):
    """The rollout (serving_models), the images' start script and their readiness check decide
    alike from the repository: on the cpu target image_embedding runs its encoder itself."""
    import importlib.util
    import os

    repo.write_config(tmp_path, repo.pipeline_config(repo.ServingOptions(), target), serve=[1])
    assert repo.serving_models(tmp_path) == expected
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("ready", root / "docker/triton/ready.py")
    assert spec is not None and spec.loader is not None
    ready = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ready)
    assert ready.models(tmp_path) == expected
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "tritonserver").write_text('#!/bin/sh\necho "$@"\n')
    (fake / "tritonserver").chmod(0o755)
    out = subprocess.run(
        ["sh", str(root / "docker/triton/start.sh"), f"--model-repository={tmp_path}"],
        env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}",
             "TRITON_ADMIN_KEY": "k"}, capture_output=True, text=True, timeout=30, check=True)
    loaded = tuple(a.removeprefix("--load-model=") for a in out.stdout.split()
                   if a.startswith("--load-model="))
    assert loaded == expected
    # the init container waits for exactly those models' configs and listed versions
    wait = [sys.executable, str(root / "docker/triton/wait_for_repository.py"), str(tmp_path),
            "--timeout", "0"]
    lacking = subprocess.run(wait, capture_output=True, text=True, timeout=30, check=False)
    assert lacking.returncode == 1, lacking.stderr
    named = {m.split("/")[0].split(":")[0]
             for m in lacking.stderr.split("lacks ")[1].split(" after")[0].split(", ")}
    assert named <= set(expected) and "image_embedding" in named, lacking.stderr
    for model in expected:
        (tmp_path / model / "1").mkdir(parents=True, exist_ok=True)
        config = tmp_path / model / "config.pbtxt"
        text = config.read_text() if config.exists() else ""
        if "specific" not in text:  # what the export writes for a model it serves
            config.write_text(text + "version_policy {\n  specific {\n    versions: 1\n  }\n}\n")
    complete = subprocess.run(wait, capture_output=True, text=True, timeout=30, check=False)
    assert complete.returncode == 0, complete.stderr


def test_a_repository_without_configs_yet_loads_every_model(tmp_path):
    assert repo.serving_models(tmp_path) == repo.MODELS
