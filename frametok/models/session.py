"""onnxruntime sessions: provider choice, thread counts, and checking a graph against its manifest."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelError
from .manifest import DetectorManifest, EncoderManifest, file_sha256, load_manifest, manifest_path_for

__all__ = ["PROVIDER_ALIASES", "ModelFiles", "SessionRunner", "create_session", "locate_model", "resolve_providers"]

log = logging.getLogger(__name__)

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass(frozen=True)
class ModelFiles:
    """A manifest and the ``.onnx`` it describes."""

    manifest: DetectorManifest | EncoderManifest
    onnx_path: Path
    manifest_path: Path | None = None


def locate_model(path: str | Path) -> ModelFiles:
    """Find a model from its ``.onnx`` (manifest beside it) or from its manifest ``.json``."""
    path = Path(path).expanduser()
    if path.suffix == ".json":
        manifest_path = path
    else:
        if not path.exists():
            raise ModelError(f"model file not found: {path}")
        if path.suffix != ".onnx":
            raise ModelError(f"model file {path} is not an .onnx file")
        manifest_path = manifest_path_for(path)
        if not manifest_path.exists():
            raise ModelError(
                f"model {path} has no manifest beside it ({manifest_path.name}); make one with "
                f"`frametok export yolo {path}` or `frametok export encoder {path} --mean ... --std ...`"
            )
    manifest = load_manifest(manifest_path)
    onnx_path = (manifest_path.parent / manifest.onnx_file).resolve()
    if not onnx_path.exists():
        raise ModelError(f"manifest {manifest_path} names {manifest.onnx_file}, which does not exist ({onnx_path})")
    return ModelFiles(manifest, onnx_path, manifest_path)


def resolve_providers(wanted: Sequence[str]) -> list[str]:
    """Map short names (tensorrt, cuda, cpu) to onnxruntime providers, keeping those available."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen = []
    for name in wanted:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full in available and full not in chosen:
            chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _check_graph(files: ModelFiles, session: Any) -> None:
    man = files.manifest
    where = f"model {files.onnx_path} (manifest {files.manifest_path or '<in memory>'})"
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if man.input_name not in inputs:
        raise ModelError(f"{where}: manifest input_name {man.input_name!r} is not a graph input {sorted(inputs)}")
    if man.output_name not in outputs:
        raise ModelError(f"{where}: manifest output_name {man.output_name!r} is not a graph output {sorted(outputs)}")
    shape = list(inputs[man.input_name].shape)
    if len(shape) != 4:
        raise ModelError(f"{where}: input {man.input_name!r} has rank {len(shape)}, expected 4 (NCHW)")
    batch, channels, height, width = shape
    if isinstance(channels, int) and channels != 3:
        raise ModelError(f"{where}: input has {channels} channels, expected 3")
    for axis, dim, want in (("height", height, man.input_size_hw[0]), ("width", width, man.input_size_hw[1])):
        if isinstance(dim, int) and dim != want:
            raise ModelError(f"{where}: graph input {axis} is {dim}, manifest input_size_hw says {want}")
    if man.batch == "dynamic" and isinstance(batch, int):
        raise ModelError(f"{where}: manifest says dynamic batch, graph has a fixed batch of {batch}")
    if isinstance(man.batch, int) and isinstance(batch, int) and batch != man.batch:
        raise ModelError(f"{where}: graph batch is {batch}, manifest says {man.batch}")


def create_session(
    files: ModelFiles,
    providers: Sequence[str] = ("tensorrt", "cuda", "cpu"),
    threads: int = 0,
    verify_sha256: bool = True,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``files``, checked against its manifest.

    ``threads`` is onnxruntime's intra-op thread count (0: its default, one per core).
    Logs which execution providers actually run.
    """
    import onnxruntime as ort

    if verify_sha256:
        digest = file_sha256(files.onnx_path)
        if digest != files.manifest.onnx_sha256:
            raise ModelError(
                f"model {files.onnx_path}: sha256 {digest[:12]}... does not match its manifest "
                f"({files.manifest.onnx_sha256[:12]}...); re-export it or rewrite the manifest"
            )
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(files.onnx_path), options, providers=resolve_providers(providers))
    except Exception as exc:  # onnxruntime raises its own untyped errors (Fail, InvalidGraph, ...)
        raise ModelError(f"onnxruntime cannot load {files.onnx_path}: {exc}") from exc
    _check_graph(files, session)
    log.info("%s %s runs on %s", files.manifest.kind, files.manifest.name, ", ".join(session.get_providers()))
    return session


_DEVICE_PROVIDERS = {"TensorrtExecutionProvider": "cuda", "CUDAExecutionProvider": "cuda"}


class SessionRunner:
    """Runs a one-input, one-output session on a batch, through onnxruntime IO binding on a GPU.

    On CUDA or TensorRT (``device`` ``"auto"`` picks it from the session's first provider) each batch is
    copied into a device buffer kept between calls (one per batch shape), the output is bound to the
    device and copied to the host once, after the run: no per-call device allocation, and no implicit
    host staging inside ``session.run``. On the CPU provider ``session.run`` is already zero-copy and is
    used as is, unless ``device="cpu"`` asks for the bound path (tests check both give the same output).
    """

    def __init__(self, session: Any, input_name: str, output_name: str, device: str = "auto") -> None:
        self.session, self.input_name, self.output_name = session, input_name, output_name
        if device == "auto":
            device = _DEVICE_PROVIDERS.get(session.get_providers()[0], "")
        if device not in ("", "cpu", "cuda"):
            raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
        self.device = device  # "": plain session.run
        self._inputs: dict[tuple[int, ...], Any] = {}

    @property
    def bound(self) -> bool:
        return bool(self.device)

    def __call__(self, batch: NDArray[np.float32]) -> NDArray[Any]:
        if not self.device:
            return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0])
        import onnxruntime as ort

        batch = np.ascontiguousarray(batch)
        value = self._inputs.get(batch.shape)
        if value is None:
            value = ort.OrtValue.ortvalue_from_shape_and_type(batch.shape, batch.dtype, self.device, 0)
            self._inputs[batch.shape] = value
        value.update_inplace(batch)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, self.device, 0)
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])
