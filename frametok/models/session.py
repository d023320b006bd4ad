"""onnxruntime sessions: provider choice, thread counts, and checking a graph against its manifest."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from weakref import WeakKeyDictionary

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelError
from .manifest import DetectorManifest, EncoderManifest, file_sha256, load_manifest, manifest_path_for

__all__ = [
    "PROVIDER_ALIASES",
    "ModelFiles",
    "Precision",
    "SessionRunner",
    "check_precision",
    "choose_precision",
    "create_session",
    "locate_model",
    "resolve_providers",
    "session_precision",
]

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

    @property
    def fp16_onnx_path(self) -> Path | None:
        """The manifest's fp16 graph (``fp16.onnx_file``), if it names one."""
        variant = self.manifest.fp16
        if variant is None:
            return None
        folder = self.manifest_path.parent if self.manifest_path is not None else self.onnx_path.parent
        return (folder / variant.onnx_file).resolve()

    @property
    def int8_onnx_path(self) -> Path | None:
        """The manifest's int8 graph (``int8.onnx_file``), if it names one."""
        variant = self.manifest.int8
        if variant is None:
            return None
        folder = self.manifest_path.parent if self.manifest_path is not None else self.onnx_path.parent
        return (folder / variant.onnx_file).resolve()


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


Precision = Literal["auto", "fp32", "fp16", "int8"]
_GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})
_PRECISION: WeakKeyDictionary[Any, str] = WeakKeyDictionary()  # session -> the graph's precision
_EXPORT_FLAG = {"fp16": "--half", "int8": "--int8 --calibrate VIDEO"}


def _variant(files: ModelFiles, precision: str) -> tuple[Any, Path | None]:
    """The manifest's fp16 or int8 entry and the path of its graph (``(None, None)`` when it has none)."""
    if precision == "fp16":
        return files.manifest.fp16, files.fp16_onnx_path
    if precision == "int8":
        return files.manifest.int8, files.int8_onnx_path
    return None, None


def _int8_ready(files: ModelFiles) -> bool:
    """A parity-checked int8 graph that exists: what ``auto`` takes on the CPU provider."""
    variant, path = files.manifest.int8, files.int8_onnx_path
    return variant is not None and variant.parity_checked and path is not None and path.exists()


def check_precision(files: ModelFiles, precision: Precision) -> None:
    """Refuse ``precision="fp16"`` or ``"int8"`` for a model whose manifest has no such graph (or whose file is
    missing; an int8 graph also needs its passed parity gate in the manifest). ``auto`` and ``fp32`` always pass."""
    if precision not in ("fp16", "int8"):
        return
    man, where = files.manifest, files.manifest_path or "<in memory>"
    variant, path = _variant(files, precision)
    if variant is None or path is None:
        raise ModelError(
            f"precision {precision}: {man.kind} {man.name!r} has no {precision} graph (manifest {where} has no "
            f"'{precision}' entry); make one with `frametok export {'yolo' if man.kind == 'detector' else 'encoder'} "
            f"{files.onnx_path} {_EXPORT_FLAG[precision]} --out DIR`, or run with --precision auto or fp32"
        )
    if not path.exists():
        raise ModelError(f"precision {precision}: manifest {where} names {variant.onnx_file}, which does not exist "
                         f"({path})")
    if precision == "int8" and not variant.parity_checked:
        raise ModelError(f"precision int8: the int8 graph of {man.kind} {man.name!r} (manifest {where}) has not "
                         "passed its parity gate; export it again with --int8")


def choose_precision(files: ModelFiles, precision: Precision,
                     providers: Sequence[str]) -> Literal["fp32", "fp16", "int8"]:
    """The graph to run. ``auto``: the fp16 graph when there is one and the first of ``providers`` (resolved
    onnxruntime names) is CUDA or TensorRT; a parity-checked int8 graph when the first is the CPU provider;
    fp32 otherwise. ``fp16`` and ``int8`` always (see :func:`check_precision`); ``fp32`` always fp32."""
    if precision in ("fp16", "int8"):
        check_precision(files, precision)
        return "fp16" if precision == "fp16" else "int8"
    if precision == "auto" and providers:
        if providers[0] in _GPU_PROVIDERS:
            fp16 = files.fp16_onnx_path
            if fp16 is not None and fp16.exists():
                return "fp16"
        elif providers[0] == "CPUExecutionProvider" and _int8_ready(files):
            return "int8"
    return "fp32"


def session_precision(session: Any) -> str:
    """``"fp32"``, ``"fp16"`` or ``"int8"``: the graph :func:`create_session` loaded into ``session``."""
    return _PRECISION.get(session, "fp32")


def _provider_options(providers: Sequence[str], precision: str, device_id: int | None = None) -> list[Any]:
    """TensorRT builds fp16 engines only when told (``trt_fp16_enable``); CUDA and TensorRT run on
    ``device_id`` when one is given (one worker per accelerator)."""
    out: list[Any] = []
    for p in providers:
        opts: dict[str, Any] = {}
        if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") and device_id is not None:
            opts["device_id"] = device_id
        if p == "TensorrtExecutionProvider" and precision == "fp16":
            opts["trt_fp16_enable"] = True
        out.append((p, opts) if opts else p)
    return out


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
    if isinstance(man, DetectorManifest) and man.dynamic_hw and (isinstance(height, int) or isinstance(width, int)):
        raise ModelError(f"{where}: manifest says dynamic_hw (any input height and width), the graph input is "
                         f"fixed at {height}x{width}")
    if man.batch == "dynamic" and isinstance(batch, int):
        raise ModelError(f"{where}: manifest says dynamic batch, graph has a fixed batch of {batch}")
    if isinstance(man.batch, int) and isinstance(batch, int) and batch != man.batch:
        raise ModelError(f"{where}: graph batch is {batch}, manifest says {man.batch}")
    if isinstance(man, DetectorManifest):
        _check_detector_output(man, session, where, batch)


def _check_detector_output(man: DetectorManifest, session: Any, where: str, batch: Any) -> None:
    """The detector's output must fit its head (``output_format``): read from the graph when its axes are fixed,
    else from one run on zeros; a ModelError naming both shapes when it does not."""
    output = next(o for o in session.get_outputs() if o.name == man.output_name)
    if man.masks is not None:
        protos = next((o for o in session.get_outputs() if o.name == man.masks.output_name), None)
        if protos is None:
            raise ModelError(f"{where}: manifest masks.output_name {man.masks.output_name!r} is not a graph output "
                             f"{[o.name for o in session.get_outputs()]}")
        dims = list(protos.shape)
        if len(dims) != 4 or (isinstance(dims[1], int) and dims[1] != man.masks.coefficients):
            raise ModelError(f"{where}: mask prototypes {man.masks.output_name!r} have shape {dims}, expected "
                             f"(N, {man.masks.coefficients}, ph, pw)")
    shape: list[Any] = list(output.shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        n = batch if isinstance(batch, int) and batch > 0 else 1
        probe = np.zeros((n, 3, *man.input_size_hw), np.float32)
        try:
            shape = list(np.asarray(session.run([man.output_name], {man.input_name: probe})[0]).shape)
        except Exception as exc:  # onnxruntime's / torch's own error types
            raise ModelError(f"{where}: running the detector on a {probe.shape} input failed: {exc}") from exc
    problem = man.output_problem(shape)
    if problem is not None:
        raise ModelError(f"{where}: {problem} (a manifest written for another head; describe the ONNX "
                         "again with `frametok export yolo MODEL.onnx`)")


def _graph_path(files: ModelFiles, chosen: str, verify_sha256: bool) -> Path:
    """The graph of precision ``chosen`` (see :func:`choose_precision`), its sha256 checked against the manifest."""
    onnx_path, want_sha = files.onnx_path, files.manifest.onnx_sha256
    variant, variant_path = _variant(files, chosen)
    if variant is not None and variant_path is not None:  # choose_precision checked both
        onnx_path, want_sha = variant_path, variant.onnx_sha256
    if verify_sha256:
        digest = file_sha256(onnx_path)
        if digest != want_sha:
            raise ModelError(
                f"model {onnx_path}: sha256 {digest[:12]}... does not match its manifest "
                f"({want_sha[:12]}...); re-export it or rewrite the manifest"
            )
    return onnx_path


def _torch_session(files: ModelFiles, fallback: Sequence[str], threads: int, verify_sha256: bool,
                   precision: Precision, device_id: int | None) -> Any | None:
    """The torch provider's session for ``files`` (PyTorch on ``cuda:device_id`` when it sees a GPU, else the
    CPU), or None to go on with ``fallback`` (the providers after ``torch``) when torch/onnx2torch is missing or
    cannot convert the graph; without a fallback that is a ModelError. ``auto`` precision: the fp16 graph on
    CUDA (as on onnxruntime's GPU providers), fp32 on the CPU (int8 only when asked for)."""
    from .torch_session import TorchSession, torch_available, torch_device

    what = f"{files.manifest.kind} {files.manifest.name}"
    why = torch_available()
    session: TorchSession | None = None
    if why is None:  # a wrong device id, precision or sha256 is an error, not a reason to fall back
        device = torch_device(device_id)
        chosen = choose_precision(files, precision, ["CUDAExecutionProvider"] if device != "cpu" else [])
        onnx_path = _graph_path(files, chosen, verify_sha256)
        try:
            session = TorchSession(onnx_path, device, threads)
        except ModelError as exc:  # onnx2torch cannot convert the graph, or it does not run
            why = str(exc)
    if session is None:
        if not fallback:
            raise ModelError(f"{what}: {why}")
        log.warning("%s: %s; falling back on providers %s", what, why, ", ".join(fallback))
        return None
    _check_graph(files, session)
    _PRECISION[session] = chosen
    log.info("%s runs its %s graph %s on %s", what, chosen, onnx_path.name, ", ".join(session.get_providers()))
    return session


def create_session(
    files: ModelFiles,
    providers: Sequence[str] = ("tensorrt", "cuda", "cpu"),
    threads: int = 0,
    verify_sha256: bool = True,
    precision: Precision = "fp32",
    spin_wait: bool = False,
    device_id: int | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``files``, checked against its manifest.

    ``threads`` is onnxruntime's intra-op thread count (0: its default, one per core); ``spin_wait``
    lets those threads spin between parallel sections (onnxruntime's default; off here, see
    ``WorkerConfig.spin_wait``). ``device_id``: the accelerator CUDA/TensorRT run on (``worker.devices``).
    ``providers`` starting with ``torch``: the graph runs in PyTorch (:mod:`.torch_session`; CUDA device
    ``device_id`` when PyTorch sees one), the providers after it being the fallback.
    ``precision`` picks the fp32 graph or the manifest's fp16 or int8 one (:func:`choose_precision`; read
    it back with :func:`session_precision`). Logs which graph runs, and on which execution providers.
    """
    import onnxruntime as ort

    if providers and providers[0].lower() == "torch":  # the torch provider (torch_session.py), then the rest
        torch_session = _torch_session(files, providers[1:], threads, verify_sha256, precision, device_id)
        if torch_session is not None:
            return torch_session
        providers = providers[1:]
    resolved = resolve_providers(providers)
    chosen = choose_precision(files, precision, resolved)
    onnx_path = _graph_path(files, chosen, verify_sha256)
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(onnx_path), options,
                                       providers=_provider_options(resolved, chosen, device_id))
    except Exception as exc:  # onnxruntime raises its own untyped errors (Fail, InvalidGraph, ...)
        raise ModelError(f"onnxruntime cannot load {onnx_path}: {exc}") from exc
    if precision == "auto" and chosen == "fp16" and session.get_providers()[0] not in _GPU_PROVIDERS:
        fallback: Precision = "int8" if _int8_ready(files) else "fp32"
        log.warning("%s %s: no GPU provider took the session (%s); loading the %s graph instead",
                    files.manifest.kind, files.manifest.name, ", ".join(session.get_providers()), fallback)
        return create_session(files, providers, threads, verify_sha256, fallback, spin_wait, device_id)
    _check_graph(files, session)
    _PRECISION[session] = chosen
    log.info("%s %s runs its %s graph %s on %s", files.manifest.kind, files.manifest.name, chosen, onnx_path.name,
             ", ".join(session.get_providers()))
    return session


_DEVICE_PROVIDERS = {"TensorrtExecutionProvider": "cuda", "CUDAExecutionProvider": "cuda"}


class SessionRunner:
    """Runs a one-input session on a batch (its ``output_name``, or with :meth:`run_all` that and
    ``extra_outputs``, e.g. a segmentation head's prototypes), through onnxruntime IO binding on a GPU.

    On CUDA or TensorRT (``device`` ``"auto"`` picks it from the session's first provider) each batch is
    copied into a device buffer kept between calls (one per batch shape), the output is bound to the
    device and copied to the host once, after the run: no per-call device allocation, and no implicit
    host staging inside ``session.run``. On the CPU provider ``session.run`` is already zero-copy and is
    used as is, unless ``device="cpu"`` asks for the bound path (tests check both give the same output).
    """

    def __init__(self, session: Any, input_name: str, output_name: str, device: str = "auto",
                 extra_outputs: Sequence[str] = ()) -> None:
        self.session, self.input_name, self.output_name = session, input_name, output_name
        self.output_names = [output_name, *extra_outputs]  # run_all's outputs, in this order
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
        """The first output (``output_name``) for ``batch``."""
        if not self.device:
            return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0])
        return self._bound(batch, [self.output_name])[0]

    def run_all(self, batch: NDArray[np.float32]) -> list[NDArray[Any]]:
        """Every output of ``output_names`` (``output_name``, then ``extra_outputs``) for ``batch``, in one run."""
        if not self.device:
            return [np.asarray(o) for o in self.session.run(self.output_names, {self.input_name: batch})]
        return self._bound(batch, self.output_names)

    def _bound(self, batch: NDArray[np.float32], names: Sequence[str]) -> list[NDArray[Any]]:
        import onnxruntime as ort

        batch = np.ascontiguousarray(batch)
        key = (threading.get_ident(), *batch.shape)  # a buffer per thread: batches may run at once (in_flight)
        value = self._inputs.get(key)
        if value is None:
            value = ort.OrtValue.ortvalue_from_shape_and_type(batch.shape, batch.dtype, self.device, 0)
            self._inputs[key] = value
        value.update_inplace(batch)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, value)
        for name in names:
            binding.bind_output(name, self.device, 0)
        self.session.run_with_iobinding(binding)
        return [np.asarray(o) for o in binding.copy_outputs_to_cpu()]
