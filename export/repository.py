"""The Triton model repository: config.pbtxt for each target, atomic version folders.

Model version N is three version folders written together: ``image_encoder/N`` (the network),
``preprocess/N`` and ``image_embedding/N`` (python backend, each with N's preprocess.json).
``image_embedding`` version N calls ``image_encoder`` version N, so a request pinned to N is
served by N end to end. Configs are shared by all versions, hence dynamic spatial and embedding
dims. They are built as Triton's own ``ModelConfig`` protobuf and printed with ``text_format``,
so every file written is, by construction, one Triton can parse.

Which versions Triton serves is durable state kept here: each config's ``specific`` version
policy. Every Triton replica loads exactly that set when it starts (explicit mode,
``--load-model``) and when the rollout asks it to reload; only ``set_served_versions`` (the
rollout) changes it, and an export keeps it (a new version is served once it is rolled out).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from visrec.export.backbones import PreprocessSpec
from visrec.export.errors import ExportError

TARGETS = ("cpu", "gpu-onnx", "gpu-tensorrt")
PREPROCESS = "preprocess"
ENCODER = "image_encoder"
PIPELINE = "image_embedding"
MODELS = (PREPROCESS, ENCODER, PIPELINE)  # load order; all are exported
# Tensor names shared by the ONNX graph, the TensorRT engine and the configs.
IMAGE, PIXELS, EMBEDDING = "IMAGE", "PIXELS", "EMBEDDING"
METADATA_FILE = "export.json"
# Python-backend sources written into the repository: the cpu target's encoder (next to
# model.onnx) and the preprocess model (model.py + imaging.py). They ship inside this package,
# so a wheel or an image can fill an empty repository volume.
BACKENDS = Path(__file__).parent / "triton_backends"
ORT_ENCODER_SOURCE = BACKENDS / "onnxruntime_encoder.py"
SOURCES = {
    PREPROCESS: {"model.py": BACKENDS / "preprocess_model.py",
                 "imaging.py": BACKENDS / "imaging.py"},
    PIPELINE: {"model.py": BACKENDS / "pipeline_model.py",
               "imaging.py": BACKENDS / "imaging.py"},
}
SPEC_FILE = "preprocess.json"


@dataclass(frozen=True)
class ServingOptions:
    max_batch_size: int = 64
    max_queue_delay_us: int = 2000
    encoder_instances: int = 1
    preprocess_instances: int = 2
    intra_op_threads: int = 0  # 0: the encoder all cores, the pipeline its share of them
    # ONNX Runtime runs a dynamic batch in slices of this many images on the cpu target:
    # small batches are faster per image on a CPU (activations stay in cache).
    ort_batch: int = 4
    # What an uploaded image may be (checked on its header, before decoding, by Triton and by
    # the gateway, which reads these from the config): see triton_backends/imaging.py.
    max_pixels: int = 16_000_000
    max_aspect_ratio: float = 20.0
    min_side: int = 8

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "encoder_instances", "preprocess_instances",
                     "max_pixels", "min_side", "ort_batch"):
            if getattr(self, name) < 1:
                raise ExportError(f"{name.replace('_', '-')} must be >= 1")
        if self.max_aspect_ratio < 1:
            raise ExportError("max-aspect-ratio must be >= 1")
        if self.max_queue_delay_us < 0 or self.intra_op_threads < 0:
            raise ExportError("max-queue-delay-us and intra-op-threads must be >= 0")


def _params(config: mc.ModelConfig, values: dict[str, Any]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def encoder_config(target: str, opts: ServingOptions) -> mc.ModelConfig:
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    c = mc.ModelConfig(name=ENCODER, max_batch_size=opts.max_batch_size)
    # -1: versions may differ in input size and embedding size (another backbone, a head).
    c.input.add(name=PIXELS, data_type=mc.TYPE_FP32, dims=[3, -1, -1])
    c.output.add(name=EMBEDDING, data_type=mc.TYPE_FP32, dims=[-1])
    c.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    group = c.instance_group.add(count=opts.encoder_instances)
    if target == "cpu":
        c.backend = "python"
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        _params(c, {"intra_op_threads": opts.intra_op_threads, "ort_batch": opts.ort_batch})
    elif target == "gpu-onnx":
        c.platform = "onnxruntime_onnx"
        c.default_model_filename = "model.onnx"
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        trt = c.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        trt.parameters.update({
            "precision_mode": "FP16",
            "max_workspace_size_bytes": str(1 << 30),
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": "/tmp/visrec-trt-cache",
        })
    else:
        c.platform = "tensorrt_plan"
        c.default_model_filename = "model.plan"
        group.kind = mc.ModelInstanceGroup.KIND_GPU
    return c


def preprocess_config(opts: ServingOptions) -> mc.ModelConfig:
    c = mc.ModelConfig(name=PREPROCESS, backend="python", max_batch_size=opts.max_batch_size)
    c.input.add(name=IMAGE, data_type=mc.TYPE_STRING, dims=[1])
    c.output.add(name=PIXELS, data_type=mc.TYPE_FP32, dims=[3, -1, -1])
    c.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    c.instance_group.add(count=opts.preprocess_instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    _params(c, image_limits(opts))
    return c


def pipeline_config(opts: ServingOptions, target: str = "cpu") -> mc.ModelConfig:
    """image_embedding: bytes -> embedding, version N end to end (see the module docstring).
    On the cpu target it runs version N's model.onnx itself (no BLS hop to another python
    process); on GPU targets it calls image_encoder N, which Triton runs on the GPU."""
    c = mc.ModelConfig(name=PIPELINE, backend="python", max_batch_size=opts.max_batch_size)
    c.input.add(name=IMAGE, data_type=mc.TYPE_STRING, dims=[1])
    c.output.add(name=EMBEDDING, data_type=mc.TYPE_FP32, dims=[-1])
    c.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    c.instance_group.add(count=opts.preprocess_instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    _params(c, {**image_limits(opts), "encoder_model": ENCODER,
                "encoder_max_batch_size": opts.max_batch_size,
                "encoder_runtime": "onnxruntime" if target == "cpu" else "triton"})
    if target == "cpu":
        _params(c, {"intra_op_threads": opts.intra_op_threads, "ort_batch": opts.ort_batch})
    return c


def image_limits(opts: ServingOptions) -> dict[str, Any]:
    """The config parameters that bound an uploaded image (imaging.limits_of reads them)."""
    return {"max_pixels": opts.max_pixels, "max_aspect_ratio": opts.max_aspect_ratio,
            "min_side": opts.min_side}


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def _model_folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)


def _atomic_write_text(path: Path, text: str) -> None:
    _model_folder(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def serving_models(repository: Path) -> tuple[str, ...]:
    """The models a replica loads to serve, in load order: what image_embedding calls. On the
    cpu target it runs its version's encoder with ONNX Runtime itself (image_embedding alone);
    on a GPU it calls image_encoder. preprocess serves no request: it is exported for
    perf_analyzer and loaded only where it is measured. (docker/triton/start.sh and ready.py
    read the same parameter without visrec.) Every model while the repository has no
    image_embedding config yet."""
    path = config_path(repository, PIPELINE)
    if not path.is_file():
        return MODELS
    params = parse_pbtxt(path.read_text()).parameters
    runtime = params["encoder_runtime"].string_value if "encoder_runtime" in params else ""
    return (PIPELINE,) if runtime == "onnxruntime" else (ENCODER, PIPELINE)


def config_path(repository: Path, model: str) -> Path:
    return repository / model / "config.pbtxt"


def served_versions(repository: Path, model: str = PIPELINE) -> list[int]:
    """The versions ``model``'s config tells Triton to serve; [] without a config."""
    path = config_path(repository, model)
    if not path.is_file():
        return []
    return sorted(parse_pbtxt(path.read_text()).version_policy.specific.versions)


def write_config(repository: Path, config: mc.ModelConfig, serve: Sequence[int] = ()) -> Path:
    """Write ``config`` atomically, serving the versions the existing config serves (the
    served set is the rollout's to change), or ``serve`` for a model without one."""
    path = config_path(repository, config.name)
    versions = served_versions(repository, config.name) or sorted(serve)
    if not versions:
        raise ExportError(f"{config.name}: no version to serve")
    config.version_policy.specific.versions[:] = versions
    _atomic_write_text(path, to_pbtxt(config))
    return path


def set_served_versions(repository: Path, versions: Sequence[int | str]) -> None:
    """From now on every Triton replica serves ``versions`` of the three models: each config is
    rewritten atomically with that specific policy (a replica that starts reads it; the
    rollout asks the running ones to reload). Each version must exist for every model."""
    wanted = sorted({int(v) for v in versions})
    if not wanted:
        raise ExportError("at least one version must be served")
    for model in MODELS:
        missing = [v for v in wanted if not (repository / model / str(v)).is_dir()]
        if missing:
            raise ExportError(f"{repository}/{model} has no version folder {missing}")
    for model in MODELS:
        path = config_path(repository, model)
        if not path.is_file():
            raise ExportError(f"{path} does not exist: export a version first")
        config = parse_pbtxt(path.read_text())
        config.version_policy.specific.versions[:] = wanted
        _atomic_write_text(path, to_pbtxt(config))


def python_model_files(model: str, spec: PreprocessSpec) -> dict[str, str]:
    """The files of one version of a python-backend model (preprocess or image_embedding)."""
    files = {name: source.read_text() for name, source in SOURCES[model].items()}
    files[SPEC_FILE] = json.dumps(spec.as_dict(), indent=2) + "\n"
    return files


def write_python_version(repository: Path, model: str, version: int,
                         spec: PreprocessSpec) -> Path:
    """``<model>/<version>/``: written atomically when missing or different, else left alone
    (a version Triton serves is never touched for nothing)."""
    files = python_model_files(model, spec)
    final = repository / model / str(version)
    if final.is_dir() and all((final / n).is_file() and (final / n).read_text() == text
                              for n, text in files.items()):
        return final

    def fill(staging: Path) -> None:
        for name, text in files.items():
            (staging / name).write_text(text)

    return write_version_atomically(repository, version, fill, model=model, replace=True)


def existing_versions(repository: Path, model: str = ENCODER) -> list[int]:
    d = repository / model
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def read_metadata(repository: Path, version: int) -> dict[str, Any] | None:
    path = repository / ENCODER / str(version) / METADATA_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, json.JSONDecodeError):
        return None


def readable_by_all(folder: Path) -> None:
    """Folders 0755, files 0644: Triton reads the repository as another user (uid 1000 in its
    images) than the one export writes it as; mkdtemp makes its folder 0700."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def write_version_atomically(
    repository: Path,
    version: int,
    fill: Callable[[Path], dict[str, Any] | None],
    *,
    replace: bool = False,
    model: str = ENCODER,
) -> Path:
    """Build ``<model>/<version>`` in a staging folder on the same filesystem, then
    ``rename()`` it into place, so Triton never sees a half-written version. ``fill`` writes the
    files into the staging folder and may return metadata, stored as export.json."""
    final = repository / model / str(version)
    if final.exists() and not replace:
        raise ExportError(f"{final} already exists (use --force to replace it)")
    _model_folder(final.parent)
    # Staging is a hidden folder at the repository root: same filesystem (rename is atomic),
    # and not a model or version folder Triton is ever asked to load.
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{model}-{version}-", dir=repository))
    try:
        metadata = fill(staging)
        if metadata is not None:
            _atomic_write_text(staging / METADATA_FILE, json.dumps(metadata, indent=2) + "\n")
        readable_by_all(staging)
        if final.exists():
            trash = repository / f".trash-{model}-{version}-{uuid.uuid4().hex}"
            os.rename(final, trash)
            os.rename(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
