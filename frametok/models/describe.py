"""Manifests for existing ``.onnx`` files, read from their graph and metadata (no torch needed)."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ModelError
from .manifest import (
    DetectorHead,
    DetectorManifest,
    EncoderLayout,
    EncoderManifest,
    MaskHead,
    WeightsSource,
    detector_output_problem,
    file_sha256,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "describe_encoder_onnx",
    "describe_ultralytics_onnx",
    "detector_head",
    "onnx_version",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def onnx_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def _open(path: Path) -> Any:
    import onnxruntime as ort

    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types
        raise ModelError(f"{path} is not a loadable ONNX model: {exc}") from exc


def _input_spec(path: Path, session: Any) -> tuple[str, tuple[int, int], int | Literal["dynamic"]]:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one image input, the graph has {[i.name for i in inputs]}")
    shape = list(inputs[0].shape)
    if len(shape) != 4:
        raise ModelError(f"{path}: input {inputs[0].name!r} has shape {shape}, expected (N, 3, H, W)")
    batch, _, height, width = shape
    return inputs[0].name, (height, width), batch if isinstance(batch, int) else "dynamic"


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in {"true", "1"}


def detector_head(meta: dict[str, str], shape: tuple[int, ...], num_classes: int,
                  mask_coefficients: int = 0) -> DetectorHead:
    """The head of an Ultralytics detector from its ONNX metadata and the output ``shape`` of one run.

    Metadata first (``head: RTDETRDecoder`` is RT-DETR; ``end2end: True``, or an ``nms=True`` export, gives
    ``(N, K, 6)`` rows of x1 y1 x2 y2 score class); without it, the shape alone (``(N, 4 + C, A)`` is the
    YOLOv8 head, ``(N, K, 6)`` an end-to-end one). A ModelError when the output does not fit that head.
    A segmentation model's rows carry ``mask_coefficients`` more values (``4 + C + M``, ``6 + M``).
    """
    head: DetectorHead
    if "RTDETR" in meta.get("head", ""):
        head = "rtdetr"
    elif _flag(meta.get("end2end", "")) or "'nms': True" in meta.get("args", ""):
        head = "end2end"
    elif "end2end" in meta or "head" in meta or (len(shape) == 3 and shape[1] == 4 + num_classes + mask_coefficients):
        head = "yolov8"
    else:
        head = "end2end"
    problem = detector_output_problem(head, num_classes, shape, mask_coefficients)
    if problem is None:
        return head
    fits = [h for h in ("yolov8", "end2end")
            if detector_output_problem(h, num_classes, shape, mask_coefficients) is None]
    hint = f" (the shape alone would fit {' or '.join(fits)})" if fits else ""
    raise ModelError(f"{problem}{hint}; its metadata says head {meta.get('head', '?')!r}, end2end "
                     f"{meta.get('end2end', '?')!r}")


def _mask_head(path: Path, session: Any, task: str | None) -> MaskHead | None:
    """A segmentation export's prototypes (its second output, ``(N, M, ph, pw)``); None for a detector."""
    outputs = session.get_outputs()
    if task != "segment":
        return None
    if len(outputs) != 2 or len(outputs[1].shape) != 4 or not isinstance(outputs[1].shape[1], int):
        raise ModelError(f"{path}: an Ultralytics segmentation model with outputs "
                         f"{[(o.name, o.shape) for o in outputs]}: expected detections and prototypes (N, M, ph, pw)")
    return MaskHead(output_name=outputs[1].name, coefficients=int(outputs[1].shape[1]))


def describe_ultralytics_onnx(path: str | Path, name: str | None = None) -> DetectorManifest:
    """A detector manifest for an ONNX exported by Ultralytics (reads its embedded metadata).

    The head (``output_format``: yolov8, end2end or rtdetr) comes from the metadata and the output shape of
    one run on zeros (:func:`detector_head`); RT-DETR gets the squash resize Ultralytics predicts it with.
    ``dynamic_hw`` says whether the graph's input height and width are both dynamic (a rect letterbox fits),
    ``stride`` is the metadata's (32 when absent).
    """
    path = Path(path).resolve()
    session = _open(path)
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("task") not in ("detect", "segment") or "names" not in meta:
        raise ModelError(
            f"{path}: no Ultralytics detection or segmentation metadata (task/names) in the ONNX; "
            "export it with `frametok export yolo WEIGHTS.pt` instead"
        )
    try:
        names = ast.literal_eval(meta["names"])
        class_names = [str(names[i]) for i in range(len(names))]
    except (ValueError, SyntaxError, KeyError) as exc:
        raise ModelError(f"{path}: cannot read class names from the ONNX metadata: {exc}") from exc
    input_name, size_hw, batch = _input_spec(path, session)
    dynamic_hw = not any(isinstance(v, int) for v in size_hw)  # any height and width: a rect letterbox fits
    try:
        stride = int(meta.get("stride", 32))
    except ValueError as exc:
        raise ModelError(f"{path}: the ONNX metadata's stride {meta.get('stride')!r} is not an integer") from exc
    if not all(isinstance(v, int) for v in size_hw):
        try:
            imgsz = ast.literal_eval(meta.get("imgsz", "[640, 640]"))
            size_hw = (int(imgsz[0]), int(imgsz[1]))
        except (ValueError, SyntaxError, TypeError, IndexError) as exc:
            raise ModelError(f"{path}: dynamic input size and no readable imgsz metadata") from exc
    outputs = session.get_outputs()
    probe = np.zeros((1 if batch == "dynamic" else int(batch), 3, int(size_hw[0]), int(size_hw[1])), np.float32)
    try:
        shape = tuple(int(d) for d in session.run([outputs[0].name], {input_name: probe})[0].shape)
    except Exception as exc:  # onnxruntime's own error types
        raise ModelError(f"{path}: running the detector on a {probe.shape} input failed: {exc}") from exc
    masks = _mask_head(path, session, meta.get("task"))
    try:
        output_format = detector_head(dict(meta), shape, len(class_names), 0 if masks is None else masks.coefficients)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    return DetectorManifest(
        name=name or path.stem,
        onnx_file=str(path),
        onnx_sha256=file_sha256(path),
        input_name=input_name,
        input_size_hw=(int(size_hw[0]), int(size_hw[1])),
        batch=batch,
        output_name=outputs[0].name,
        output_format=output_format,
        resize="squash" if output_format == "rtdetr" else "letterbox",
        dynamic_hw=dynamic_hw,
        stride=stride,
        class_names=class_names,
        masks=masks,
        source=WeightsSource(weights=meta.get("description"), framework=f"ultralytics {meta.get('version', '?')}"),
        exporter={"ultralytics": meta.get("version", "?"), "described_by": "frametok", "onnxruntime": onnx_version()},
    )


def _token_grid(path: Path, n_tokens: int, prefix_tokens: int | None) -> tuple[int, tuple[int, int]]:
    """Prefix tokens and square grid of ``n_tokens`` tokens (prefix inferred when None: 1 when ``T - 1`` is a
    square, else 0)."""
    if prefix_tokens is None:
        prefix_tokens = 1 if math.isqrt(max(n_tokens - 1, 0)) ** 2 == n_tokens - 1 else 0
    side2 = n_tokens - prefix_tokens
    side = math.isqrt(max(side2, 0))
    if side2 <= 0 or side * side != side2:
        raise ModelError(
            f"{path}: {n_tokens} output tokens minus {prefix_tokens} prefix tokens is not a square grid"
        )
    return prefix_tokens, (side, side)


def describe_encoder_onnx(
    path: str | Path,
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    prefix_tokens: int | None = None,
    context: Literal["cls", "mean"] | None = None,
    name: str | None = None,
    input_size_hw: tuple[int, int] | None = None,
    source: WeightsSource | None = None,
    exporter: dict[str, str] | None = None,
    output_layout: EncoderLayout | None = None,
) -> EncoderManifest:
    """An encoder manifest for an ONNX image encoder with output ``(N, T, D)`` tokens or an ``(N, C, H, W)``
    feature map.

    The output is read by running the graph once on zeros. Tokens (rank 3, ``output_layout: tokens``):
    ``T - prefix_tokens`` must be a square; with ``prefix_tokens=None`` it is inferred (1 when ``T - 1`` is a
    square, else 0). A feature map (rank 4, ``output_layout: nchw``): a ``H x W`` grid of ``D = C`` values, no
    prefix tokens, context ``mean``. ``output_layout`` None: read from the rank; given: the rank must fit it.
    """
    path = Path(path).resolve()
    session = _open(path)
    input_name, size_hw, batch = _input_spec(path, session)
    if not all(isinstance(v, int) for v in size_hw):
        if input_size_hw is None:
            raise ModelError(f"{path}: the input size is dynamic ({size_hw}); give it (--input-size)")
        size_hw = input_size_hw
    elif input_size_hw is not None and tuple(input_size_hw) != tuple(size_hw):
        raise ModelError(f"{path}: graph input size is {size_hw}, not the given {input_size_hw}")
    height, width = int(size_hw[0]), int(size_hw[1])
    output = session.get_outputs()[0]
    probe = np.zeros((1 if batch == "dynamic" else int(batch), 3, height, width), np.float32)
    try:
        tokens = session.run([output.name], {input_name: probe})[0]
    except Exception as exc:  # onnxruntime's own error types
        raise ModelError(f"{path}: running the encoder on a {probe.shape} input failed: {exc}") from exc
    layout: EncoderLayout = "nchw" if tokens.ndim == 4 else "tokens"
    if tokens.ndim not in (3, 4) or (output_layout is not None and output_layout != layout):
        want = {"tokens": "(N, tokens, dim)", "nchw": "(N, C, H, W)", None: "(N, tokens, dim) or (N, C, H, W)"}
        raise ModelError(f"{path}: output {output.name!r} has shape {tokens.shape}, expected "
                         f"{want[output_layout]}" + (f" (output_layout {output_layout})" if output_layout else ""))
    if layout == "nchw":
        if prefix_tokens or context == "cls":
            raise ModelError(f"{path}: output {output.name!r} is a feature map {tokens.shape} (nchw): it has no "
                             "prefix or CLS token (prefix_tokens 0, context mean)")
        prefix_tokens, context = 0, "mean"
        dim, grid_hw = int(tokens.shape[1]), (int(tokens.shape[2]), int(tokens.shape[3]))
    else:
        dim = int(tokens.shape[2])
        prefix_tokens, grid_hw = _token_grid(path, int(tokens.shape[1]), prefix_tokens)
    if context is None:
        context = "cls" if prefix_tokens >= 1 else "mean"
    return EncoderManifest(
        name=name or path.stem,
        onnx_file=str(path),
        onnx_sha256=file_sha256(path),
        input_name=input_name,
        input_size_hw=(height, width),
        batch=batch,
        output_name=output.name,
        mean=mean,
        std=std,
        output_layout=layout,
        prefix_tokens=prefix_tokens,
        context=context,
        grid_hw=grid_hw,
        embed_dim=dim,
        source=source or WeightsSource(weights=path.name),
        exporter=exporter or {"described_by": "frametok", "onnxruntime": onnx_version()},
    )
