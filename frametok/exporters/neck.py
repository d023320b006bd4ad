"""A YOLO graph's neck feature map as an extra output: hard and soft tokens from one detector pass.

:func:`add_neck` takes an exported detector (ONNX + manifest), finds the tensors that feed its head (the
inputs of the last module, Ultralytics' ``Detect``/``Segment``: nodes named ``/model.N/...`` whose inputs
come from outside that module; YOLOv8n: P3, P4, P5 at strides 8, 16, 32), picks one level by its stride,
and adds it as a graph output (an ``Identity`` named ``neck_p5`` etc.). It then checks, on a sample image,
that the detection output is unchanged (the graph's own output before and after, both through
onnxruntime) and, given the ``.pt`` weights, that the feature map is what PyTorch's forward pre-hook on the
head module sees; the manifest records the output (``neck``) and the figures (``parity.neck``).

``onnx`` is imported here only (the ``export`` extra); torch and ultralytics only for the hook check.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from ..errors import ExportError
from ..models.detector import Detector
from ..models.manifest import DetectorManifest, NeckOutput, file_sha256, write_manifest
from ..models.session import ModelFiles, create_session, locate_model
from ._common import remove_quietly
from ._deps import require_modules

__all__ = ["DETECTION_ATOL", "FEATURE_RTOL", "add_neck", "head_inputs"]

DETECTION_ATOL = 1e-5  # the detection output with the extra output against without it (expected: bitwise)
FEATURE_RTOL = 1e-4  # the feature map against PyTorch's, relative to its largest magnitude (fused BatchNorm)
_MODULE = re.compile(r"^/model\.(\d+)/")


def head_inputs(model: Any) -> list[str]:
    """The tensors that enter the graph's last module (``/model.N/...`` of the largest N) from outside it, in the
    order its nodes first read them (initializers and graph inputs left out)."""
    graph = model.graph
    index = {n.name: int(m.group(1)) for n in graph.node if (m := _MODULE.match(n.name))}
    if not index:
        raise ExportError("the graph's nodes are not named /model.N/... (an Ultralytics export): its head "
                          "cannot be found")
    head = max(index.values())
    produced_in_head = {o for n in graph.node if index.get(n.name) == head for o in n.output}
    constants = {i.name for i in graph.initializer} | {i.name for i in graph.input}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    out: list[str] = []
    for node in graph.node:
        if index.get(node.name) != head:
            continue
        for name in node.input:
            if name and name not in produced_in_head and name not in constants and name not in out:
                out.append(name)
    return out


def _with_outputs(model: Any, tensors: dict[str, str]) -> Any:
    """A copy of ``model`` with each ``tensor -> output name`` added as an output (through an Identity)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor, output in tensors.items():
        copy.graph.node.append(onnx.helper.make_node("Identity", [tensor], [output], name=f"/frametok/{output}"))
        copy.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    return copy


def _sample_input(files: ModelFiles, sample: Path, rect: bool) -> NDArray[np.float32]:
    """``sample`` pre-processed as the runtime's Detector does (square letterbox, or ``rect``): ``(1, 3, h, w)``."""
    image = cv2.imread(str(sample), cv2.IMREAD_COLOR)
    if image is None:
        raise ExportError(f"neck parity sample {sample} is missing or not a readable image")
    rgb = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), np.uint8)
    man = files.manifest
    assert isinstance(man, DetectorManifest)
    det = Detector(man, create_session(files, ("cpu",)), rect=rect)
    batch = np.empty((1, 3, *det.input_hw_for((rgb.shape[0], rgb.shape[1]))), np.float32)
    det.preprocess(rgb, batch[0])
    return batch


def _run(path: Path, names: list[str], input_name: str, batch: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o, np.float32) for o in session.run(names, {input_name: batch})]


def _torch_features(weights: Path, batch: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    """What the head module of ``weights`` (an Ultralytics ``.pt``) gets as its inputs for ``batch``."""
    import torch
    from ultralytics import YOLO  # type: ignore[attr-defined]

    from .yolo import _offline_ultralytics_env

    _offline_ultralytics_env()
    yolo: Any = YOLO(str(weights))
    net: Any = yolo.model.float().eval()
    seen: list[NDArray[np.float32]] = []

    def hook(_: Any, args: tuple[Any, ...]) -> None:
        seen.extend(np.asarray(t.detach().cpu().numpy(), np.float32) for t in args[0])

    handle = net.model[-1].register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            net(torch.from_numpy(batch))
    finally:
        handle.remove()
    return seen


def _level(stride: int) -> str:
    return f"P{round(math.log2(stride))}"


def add_neck(files: ModelFiles, level: str = "P5", weights: str | Path | None = None,
             sample_image: str | Path | None = None, out_dir: str | Path | None = None,
             name: str | None = None) -> ModelFiles:
    """Add the neck feature map ``level`` (``P3``, ``P4``, ``P5``: stride 8, 16, 32) of the detector ``files`` as
    a graph output, checked (see the module's docstring); write ``out_dir/name.onnx`` and its manifest (default:
    over ``files`` in place). ``weights``: the ``.pt`` it was exported from, for the PyTorch hook check (without
    it only the detection output is checked). fp16/int8 variants are not carried over (export them again)."""
    require_modules(("onnx",), "adding a neck output to a YOLO graph")
    import onnx

    man = files.manifest
    if not isinstance(man, DetectorManifest):
        raise ExportError(f"{files.onnx_path}: --neck needs a detector, got a {man.kind}")
    if man.neck is not None:
        raise ExportError(f"{files.onnx_path}: it has a neck output already ({man.neck.output_name})")
    if man.output_format != "yolov8" or man.resize != "letterbox":
        raise ExportError(f"{files.onnx_path}: --neck reads YOLOv8-style graphs (letterbox, yolov8 head), this one "
                          f"has output_format {man.output_format}, resize {man.resize}")
    sample = Path(sample_image) if sample_image is not None else Path(__file__).parent / "_no_sample"
    if not sample.exists():
        from .yolo import _default_sample

        sample = _default_sample()
    model = onnx.load(str(files.onnx_path))
    candidates = head_inputs(model)
    probe_names = {t: f"frametok_probe_{i}" for i, t in enumerate(candidates)}
    batch = _sample_input(files, sample, rect=False)
    with tempfile.TemporaryDirectory(prefix="frametok-neck-") as tmp:
        probe_path = Path(tmp) / "probe.onnx"
        onnx.save(_with_outputs(model, probe_names), str(probe_path))
        maps = _run(probe_path, list(probe_names.values()), man.input_name, batch)
        strides = {t: batch.shape[2] // m.shape[2] for t, m in zip(candidates, maps, strict=True)
                   if m.ndim == 4 and m.shape[2] and batch.shape[2] % m.shape[2] == 0}
        levels = {_level(s): t for t, s in strides.items()}
        if level not in levels:
            raise ExportError(f"{files.onnx_path}: no head input at {level}; its head reads "
                              f"{', '.join(f'{_level(s)} (stride {s}: {t})' for t, s in strides.items()) or 'none'}")
        tensor = levels[level]
        output = f"neck_{level.lower()}"
        neck_path = Path(tmp) / "neck.onnx"
        onnx.save(_with_outputs(model, {tensor: output}), str(neck_path))
        parity = _check(files, neck_path, output, candidates.index(tensor), batch, weights, sample)
        neck = NeckOutput(output_name=output, level=level, channels=int(maps[candidates.index(tensor)].shape[1]),
                          stride=strides[tensor])
        return _publish(files, neck_path, neck, parity, out_dir, name)


def _check(files: ModelFiles, neck_path: Path, output: str, position: int, batch: NDArray[np.float32],
           weights: str | Path | None, sample: Path) -> dict[str, Any]:
    """The detection output unchanged, square and (a dynamic graph) rect; the map against PyTorch's hook."""
    man = files.manifest
    assert isinstance(man, DetectorManifest)
    record: dict[str, Any] = {"sample": sample.name}
    inputs = {"square": batch}
    if man.dynamic_hw:
        inputs["rect"] = _sample_input(files, sample, rect=True)
    for key, x in inputs.items():
        before = _run(files.onnx_path, [man.output_name], man.input_name, x)[0]
        after, fmap = _run(neck_path, [man.output_name, output], man.input_name, x)
        diff = float(np.abs(after - before).max())
        record[f"detection_max_abs_diff_{key}"] = diff
        record[f"feature_shape_{key}"] = list(fmap.shape)
        if diff > DETECTION_ATOL:
            raise ExportError(f"{files.onnx_path}: adding the neck output changed the detection output ({key} "
                              f"input {tuple(x.shape)}): max abs difference {diff} > {DETECTION_ATOL}")
    record["torch"] = None
    weights_path = Path(weights) if weights is not None else None
    if weights_path is not None and weights_path.suffix == ".pt":
        require_modules(("torch", "ultralytics"), "checking the neck output against PyTorch")
        fmap = _run(neck_path, [output], man.input_name, batch)[0]
        ref = _torch_features(weights_path, batch)[position]
        if ref.shape != fmap.shape:
            raise ExportError(f"{files.onnx_path}: the neck output is {fmap.shape}, PyTorch's head input "
                              f"{position} is {ref.shape}")
        scale = float(np.abs(ref).max()) or 1.0
        diff = float(np.abs(fmap - ref).max())
        record["torch"] = {"weights": weights_path.name, "max_abs_diff": diff, "ref_max_abs": scale,
                           "relative": diff / scale, "gate": FEATURE_RTOL}
        if diff / scale > FEATURE_RTOL:
            raise ExportError(f"{files.onnx_path}: the neck output differs from PyTorch's head input by {diff} "
                              f"(relative {diff / scale:.2e} > {FEATURE_RTOL})")
    elif weights_path is not None:
        record["torch"] = {"skipped": f"{weights_path.name}: random weights of a .yaml cannot be rebuilt here"}
    return record


def _publish(files: ModelFiles, neck_path: Path, neck: NeckOutput, parity: dict[str, Any],
             out_dir: str | Path | None, name: str | None) -> ModelFiles:
    import shutil

    man = files.manifest
    folder = Path(out_dir) if out_dir is not None else files.onnx_path.parent
    name = name or man.name
    onnx_out, json_out = folder / f"{name}.onnx", folder / f"{name}.json"
    manifest = man.model_copy(update={
        "name": name, "onnx_file": onnx_out.name, "onnx_sha256": file_sha256(neck_path), "neck": neck,
        "fp16": None, "int8": None, "parity": {**(man.parity or {}), "neck": parity},
    })
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(str(neck_path), onnx_out)
        write_manifest(manifest, json_out)
    except OSError as exc:
        remove_quietly(onnx_out, json_out)
        raise ExportError(f"cannot write {onnx_out} and {json_out.name}: {exc}") from exc
    out = locate_model(json_out)
    create_session(out, ("cpu",))  # the runtime's own check of graph against manifest
    return out
