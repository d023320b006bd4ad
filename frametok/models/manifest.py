"""Model manifests: the sidecar ``<name>.json`` that says how to feed an ``.onnx`` and read its output.

One manifest carries everything the runtime needs next to the weights (as timm's pretrained
configs do): input name and size, colour order, normalisation, letterbox, output format,
class names or token grid, and where the weights came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from ..errors import ModelError

__all__ = [
    "DETECTOR_HEADS",
    "MANIFEST_SCHEMA_VERSION",
    "DetectorHead",
    "DetectorManifest",
    "EncoderLayout",
    "EncoderManifest",
    "Fp16Variant",
    "Int8Variant",
    "Letterbox",
    "Manifest",
    "MaskHead",
    "NeckOutput",
    "WeightsSource",
    "detector_output_problem",
    "expected_detector_output",
    "file_sha256",
    "load_manifest",
    "manifest_path_for",
    "write_manifest",
]

MANIFEST_SCHEMA_VERSION = 1

DetectorHead: TypeAlias = Literal["yolov8", "end2end", "rtdetr"]
DETECTOR_HEADS: tuple[DetectorHead, ...] = ("yolov8", "end2end", "rtdetr")
EncoderLayout: TypeAlias = Literal["tokens", "nchw"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class WeightsSource(_Frozen):
    """Where the weights in the ``.onnx`` came from."""

    weights: str | None = None
    sha256: str | None = None
    framework: str | None = None
    random_init: bool = False


class Letterbox(_Frozen):
    """Aspect-preserving resize into the input size, padded with ``pad_value`` (Ultralytics style)."""

    pad_value: int = Field(114, ge=0, le=255)
    center: bool = True


class Fp16Variant(_Frozen):
    """A float16 copy of the graph (weights and arithmetic in fp16; input and output stay float32).

    Made by ``frametok export ... --half`` and checked against the fp32 graph on sample images
    (``parity``); the runtime runs it on CUDA/TensorRT (``precision: auto``) or when asked (``fp16``).
    """

    onnx_file: str = Field(min_length=1, description="path of the fp16 .onnx, relative to the manifest's folder")
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    converter: dict[str, str] = Field(default_factory=dict)
    parity: dict[str, Any] | None = None


class Int8Variant(_Frozen):
    """An int8-quantised copy of the graph (onnxruntime quantisation; input and output stay float32).

    Made by ``frametok export ... --int8`` and written only once it passed its parity gate against the
    fp32 graph on frames not used for calibration (``parity``: the figures, the gate, ``passed``); the
    runtime runs it on the CPU provider (``precision: auto``) or when asked (``int8``).
    """

    onnx_file: str = Field(min_length=1, description="path of the int8 .onnx, relative to the manifest's folder")
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    quantizer: dict[str, str] = Field(default_factory=dict, description="how it was made (method, versions)")
    calibration_frames: int = Field(ge=0, description="frames the activation ranges were calibrated on")
    heldout_frames: int = Field(ge=1, description="other frames the parity gate was checked on")
    parity: dict[str, Any]

    @property
    def parity_checked(self) -> bool:
        """Whether the graph passed its parity gate (the exporter records ``passed: true`` only then)."""
        return self.parity.get("passed") is True


class MaskHead(_Frozen):
    """A segmentation head's second output: ``coefficients`` mask prototypes ``(N, coefficients, ph, pw)``
    (YOLOv8-seg / YOLO26-seg: 32 prototypes at a quarter of the input size). Each detection row of the first
    output then ends with its ``coefficients`` mask coefficients (:mod:`frametok.models.masks`)."""

    output_name: str = Field(min_length=1, description="the prototypes' graph output")
    coefficients: int = Field(gt=0, description="prototypes per image, and coefficients per detection")


class NeckOutput(_Frozen):
    """An extra graph output of a detector: one of the neck's feature maps that feed its head (YOLOv8's P3/P4/P5,
    the inputs of its Detect module), ``(N, channels, H / stride, W / stride)`` (NCHW) for an ``(N, 3, H, W)``
    input. The runtime reads it as the frame's patch grid (``encoder: {model: detector}``: hard and soft tokens
    from one model pass; :mod:`frametok.models.neck`). Added by ``frametok export yolo ... --neck P5``."""

    output_name: str = Field(min_length=1, description="the feature map's graph output")
    level: str = Field(pattern=r"^P[0-9]$", description="which of the head's inputs: P3 (stride 8) .. P5 (32)")
    layout: Literal["NCHW"] = "NCHW"
    channels: int = Field(gt=0)
    stride: int = Field(ge=1, le=1024, description="input pixels per feature-map cell")


class _ManifestBase(_Frozen):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str = Field(min_length=1)
    onnx_file: str = Field(min_length=1, description="path of the .onnx, relative to the manifest's folder")
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input_name: str
    input_size_hw: tuple[int, int]
    batch: int | Literal["dynamic"] = "dynamic"
    layout: Literal["NCHW"] = "NCHW"
    colour: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    output_name: str
    source: WeightsSource = WeightsSource()
    exporter: dict[str, str] = Field(default_factory=dict)
    parity: dict[str, Any] | None = None
    fp16: Fp16Variant | None = None
    int8: Int8Variant | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != MANIFEST_SCHEMA_VERSION:
            raise ValueError(f"unsupported manifest schema_version {value}, expected {MANIFEST_SCHEMA_VERSION}")
        return value

    @field_validator("input_size_hw")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) <= 0:
            raise ValueError(f"expected positive (height, width), got {value}")
        return value

    @field_validator("std")
    @classmethod
    def _nonzero_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v == 0 for v in value):
            raise ValueError(f"std must be non-zero, got {value}")
        return value

    @property
    def model_id(self) -> str:
        """A short id naming these exact weights: ``name@sha256[:12]``."""
        return f"{self.name}@{self.onnx_sha256[:12]}"


class DetectorManifest(_ManifestBase):
    """An object detector; ``output_format`` names its head, i.e. how its output ``(N, ...)`` reads:

    * ``yolov8``: ``(N, 4 + classes, anchors)`` of (cx, cy, w, h, class scores...) in input pixels;
      frametok runs class-aware NMS (YOLOv8/YOLO11, and YOLO26/YOLOv10 exported with their one-to-many head).
    * ``end2end``: ``(N, K, 6)`` of (x1, y1, x2, y2, score, class) in input pixels, already NMS-free
      (YOLO26/YOLOv10 one-to-one heads, Ultralytics ``export(nms=False)``; also ``nms=True`` exports).
    * ``rtdetr``: ``(N, K, 6)`` of (cx, cy, w, h, score, class) with boxes normalised to 0..1 of the input
      (Ultralytics' RT-DETR export, top-K queries picked in the graph), or ``(N, K, 4 + classes)`` of
      (cx, cy, w, h, class scores...) (the raw decoder, one box per query); no NMS. With 2 classes
      ``4 + classes`` is 6 too: such an output is read as the first layout.

    ``resize``: ``letterbox`` (aspect kept, padded, as YOLO trains) or ``squash`` (stretched to the
    input size, as Ultralytics' RT-DETR trains and predicts).

    ``dynamic_hw``: the graph takes any input height and width (an Ultralytics ``dynamic=True`` export), so a
    frame may run at the rect letterbox of its own aspect (``input_size_hw`` then being the largest input),
    padded to a multiple of ``stride``; False for a fixed input (and in manifests written before it existed).

    ``masks``: an instance-segmentation model (YOLOv8-seg, YOLO26-seg; ``yolov8`` or ``end2end`` head): each row
    of the output also carries ``masks.coefficients`` mask coefficients, after the class scores (``yolov8``:
    ``(N, 4 + classes + M, anchors)``) or after the class (``end2end``: ``(N, K, 6 + M)``), and the graph has a
    second output, the prototypes ``(N, M, ph, pw)`` (:class:`MaskHead`).
    """

    kind: Literal["detector"] = "detector"
    letterbox: Letterbox = Letterbox()
    resize: Literal["letterbox", "squash"] = "letterbox"
    dynamic_hw: bool = False
    stride: int = Field(32, ge=1, le=1024, description="the model's largest stride: rect inputs are multiples of it")
    output_format: DetectorHead = "yolov8"
    class_names: list[str] = Field(min_length=1)
    masks: MaskHead | None = None
    neck: NeckOutput | None = None  # a neck feature map as an extra output (the soft-token grid)

    @model_validator(mode="after")
    def _masks_fit_the_head(self) -> DetectorManifest:
        if self.masks is not None and self.output_format == "rtdetr":
            raise ValueError("masks: the rtdetr head has no mask output (masks go with yolov8 or end2end)")
        return self

    @property
    def mask_coefficients(self) -> int:
        """Mask coefficients per detection row (0: no masks)."""
        return 0 if self.masks is None else self.masks.coefficients

    def info(self) -> dict[str, Any]:
        """What subscribers need to know of this model (travels in stream-info messages)."""
        return {"id": self.model_id, "name": self.name, "class_names": list(self.class_names)}

    def expected_output(self) -> str:
        """The output shape ``output_format`` needs, in words (for error messages)."""
        return expected_detector_output(self.output_format, len(self.class_names), self.mask_coefficients)

    def output_problem(self, shape: Sequence[int | str | None]) -> str | None:
        """Why an output of ``shape`` (ints, or names/None for dynamic axes) does not fit this head; None if it fits."""
        return detector_output_problem(self.output_format, len(self.class_names), shape, self.mask_coefficients)


def expected_detector_output(head: DetectorHead, num_classes: int, mask_coefficients: int = 0) -> str:
    """The output of a ``head`` detector of ``num_classes`` classes (and ``mask_coefficients`` per row), in words."""
    masks = f" + {mask_coefficients} mask coefficients" if mask_coefficients else ""
    if head == "yolov8":
        return f"(N, 4 + {num_classes} classes{masks}, anchors)"
    if head == "end2end":
        return f"(N, K, 6{masks}) of x1 y1 x2 y2 score class" + (" coefficients" if masks else "")
    return f"(N, K, 6) of cx cy w h score class, or (N, K, 4 + {num_classes} classes)"


def detector_output_problem(head: DetectorHead, num_classes: int, shape: Sequence[int | str | None],
                            mask_coefficients: int = 0) -> str | None:
    """Why ``shape`` does not fit ``head`` (None when it does, or when the axes that decide are dynamic)."""
    dims = tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
    shown = "(" + ", ".join(str(d) if d is not None else "?" for d in dims) + ")"
    problem = (f"output {shown} does not fit output_format {head}: expected "
               f"{expected_detector_output(head, num_classes, mask_coefficients)}")
    if len(dims) != 3:
        return problem
    _, rows, cols = dims
    if head == "yolov8":
        fits = rows in (None, 4 + num_classes + mask_coefficients)
    elif head == "end2end":
        fits = cols in (None, 6 + mask_coefficients)
    else:
        fits = cols in (None, 6, 4 + num_classes)
    return None if fits else problem


class EncoderManifest(_ManifestBase):
    """An image encoder; ``output_layout`` says how its output reads:

    * ``tokens``: ``(N, prefix_tokens + gh * gw, D)`` patch tokens (ViTs: DINOv2, CLIP's vision tower, ...);
    * ``nchw``: ``(N, D, gh, gw)``, a CNN feature map (ResNet, ConvNeXt, MobileNet stages): each of its
      ``gh x gw`` positions is a patch token of ``D = C`` values; no prefix tokens, context ``mean``.

    Either way the runtime turns it into the same ``(gh, gw, D)`` patch grid.
    """

    kind: Literal["encoder"] = "encoder"
    resize: Literal["squash"] = "squash"
    output_layout: EncoderLayout = "tokens"
    prefix_tokens: int = Field(ge=0, description="tokens before the patch grid (CLS, registers)")
    context: Literal["cls", "mean"]
    grid_hw: tuple[int, int]
    embed_dim: int = Field(gt=0)

    @field_validator("context")
    @classmethod
    def _cls_needs_prefix(cls, value: str, info: Any) -> str:
        if value == "cls" and info.data.get("prefix_tokens", 0) < 1:
            raise ValueError("context 'cls' needs prefix_tokens >= 1 (token 0 is the CLS token)")
        return value

    @model_validator(mode="after")
    def _nchw_has_no_prefix(self) -> EncoderManifest:
        if self.output_layout == "nchw" and self.prefix_tokens != 0:
            raise ValueError(f"output_layout 'nchw' (a feature map) has no prefix tokens, got {self.prefix_tokens}")
        if min(self.grid_hw) <= 0:
            raise ValueError(f"grid_hw: expected positive (gh, gw), got {self.grid_hw}")
        return self

    def expected_output(self) -> str:
        """The output shape ``output_layout`` and the grid need, in words (for error messages)."""
        gh, gw = self.grid_hw
        if self.output_layout == "nchw":
            return f"(N, {self.embed_dim}, {gh}, {gw}) (nchw: {self.embed_dim} channels on a {gh}x{gw} grid)"
        return (f"(N, {self.prefix_tokens + gh * gw}, {self.embed_dim}) (tokens: {self.prefix_tokens} prefix "
                f"tokens + a {gh}x{gw} grid of {self.embed_dim} values)")

    def output_problem(self, shape: Sequence[int | str | None]) -> str | None:
        """Why an output of ``shape`` (ints, or names/None for dynamic axes) does not fit this manifest; None if
        it fits (a dynamic axis fits anything)."""
        dims = tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
        gh, gw = self.grid_hw
        want: tuple[int, ...] = ((self.embed_dim, gh, gw) if self.output_layout == "nchw"
                                 else (self.prefix_tokens + gh * gw, self.embed_dim))
        if len(dims) == 1 + len(want) and all(d is None or d == w for d, w in zip(dims[1:], want, strict=True)):
            return None
        shown = "(" + ", ".join(str(d) if d is not None else "?" for d in dims) + ")"
        return f"output {shown} does not fit output_layout {self.output_layout}: expected {self.expected_output()}"

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": self.model_id,
            "name": self.name,
            "grid_hw": list(self.grid_hw),
            "embed_dim": self.embed_dim,
            "context": self.context,
        }
        if self.output_layout != "tokens":
            info["output_layout"] = self.output_layout
        return info


Manifest: TypeAlias = Annotated[DetectorManifest | EncoderManifest, Field(discriminator="kind")]
_MANIFEST_ADAPTER: TypeAdapter[DetectorManifest | EncoderManifest] = TypeAdapter(Manifest)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path_for(onnx_path: str | Path) -> Path:
    """The manifest that belongs beside ``onnx_path``: same name, ``.json``."""
    return Path(onnx_path).with_suffix(".json")


def load_manifest(path: str | Path) -> DetectorManifest | EncoderManifest:
    """Read and check a manifest file; raise :class:`ModelError` naming the file and field at fault."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"model manifest not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"model manifest {path} is not readable JSON: {exc}") from exc
    try:
        return _MANIFEST_ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ModelError(f"model manifest {path} is invalid: {problems}") from exc


def write_manifest(manifest: DetectorManifest | EncoderManifest, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path
