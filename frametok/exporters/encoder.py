"""Image encoders to ONNX: export a timm model, or write the manifest for an existing encoder ONNX.

A timm ViT exports its ``forward_features`` tokens ``(N, T, D)`` (``output_layout: tokens``); a timm CNN
(ResNet, ConvNeXt, MobileNet, ...) exports one stage of its ``features_only`` feature maps ``(N, C, H, W)``
(``output_layout: nchw``, the last stage unless ``stage`` picks another), read at runtime as an ``H x W``
patch grid of ``C`` values.

:func:`export_timm_encoder` imports torch and timm inside the call only (the ``export`` extra);
:func:`describe_encoder` needs onnxruntime alone.
"""

from __future__ import annotations

import re
import shutil
import stat
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..errors import ExportError, FrametokError, ModelError
from ..models.describe import describe_encoder_onnx
from ..models.manifest import EncoderLayout, EncoderManifest, WeightsSource, write_manifest
from ..models.session import ModelFiles, create_session, locate_model
from ._common import remove_quietly
from ._deps import package_versions, require_modules

__all__ = ["describe_encoder", "export_timm_encoder"]

MIN_COSINE = 0.999  # torch vs onnxruntime, per token
PARITY_SEED = 0
PARITY_BATCH = 2
# torch 2.14 defaults to the torch.export ("dynamo") ONNX exporter, which needs onnxscript: not part of the
# export extra and not installed here. The TorchScript exporter (dynamo=False) is still in torch 2.14, works
# offline, is what Ultralytics itself uses, and gives the dynamic batch axis through ``dynamic_axes``.
TORCH_ONNX_EXPORTER = "torchscript (dynamo=False)"


@dataclass(frozen=True)
class _TokenLayout:
    """How a timm model's ``forward_features`` output is laid out, and how it wants its input."""

    input_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    prefix_tokens: int
    context: Literal["cls", "mean"]
    grid_hw: tuple[int, int]
    output_layout: EncoderLayout = "tokens"
    stage: int | None = None  # features_only: the feature_info index exported


def _rgb_triple(values: Sequence[float], field: str, where: str) -> tuple[float, float, float]:
    triple = tuple(float(v) for v in values)
    if len(triple) != 3:
        raise ModelError(f"{where}: {field} must have 3 values (R, G, B), got {list(values)}")
    return triple[0], triple[1], triple[2]


def _copy_writable(source: Path, target: Path) -> None:
    """``shutil.copy2``, replacing an older ``target``; the copy is writable by its owner even when the
    source was read-only (so a later describe can replace it)."""
    remove_quietly(target)
    shutil.copy2(source, target)
    target.chmod(target.stat().st_mode | stat.S_IWUSR)


def _publish(onnx_tmp: Path, manifest: EncoderManifest, out_dir: Path, name: str) -> ModelFiles:
    """Move the checked ONNX into ``out_dir`` and write its manifest; leave no half-written pair."""
    onnx_out, manifest_out = out_dir / f"{name}.onnx", out_dir / f"{name}.json"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the output folder {out_dir}: {exc}") from exc
    try:
        shutil.move(str(onnx_tmp), onnx_out)
        write_manifest(manifest, manifest_out)
    except OSError as exc:
        remove_quietly(onnx_out, manifest_out)
        raise ExportError(f"cannot write the exported model {onnx_out} and {manifest_out.name}: {exc}") from exc
    return locate_model(manifest_out)


# --------------------------------------------------------------------------- timm export


def _create_timm_model(model_name: str, img_size: int, random_init: bool) -> tuple[Any, bool]:
    """The timm model without its classifier, in eval mode; and whether it took ``img_size``."""
    import timm

    kwargs: dict[str, Any] = {"pretrained": not random_init, "num_classes": 0, "img_size": img_size}
    try:
        try:
            model = timm.create_model(model_name, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            del kwargs["img_size"]
            model = timm.create_model(model_name, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ExportError(f"unknown timm model {model_name!r} (see timm.list_models())") from exc
        raise _create_error(model_name, random_init, exc) from exc
    except Exception as exc:  # hub / network / checkpoint errors come in many types
        raise _create_error(model_name, random_init, exc) from exc
    return model.eval(), "img_size" in kwargs


def _create_error(model_name: str, random_init: bool, exc: Exception) -> ExportError:
    if random_init:
        return ExportError(f"cannot build timm model {model_name!r}: {type(exc).__name__}: {exc}")
    return ExportError(
        f"the pretrained weights of timm model {model_name!r} could not be downloaded or loaded "
        f"({type(exc).__name__}: {exc}); export it with random weights (--random-init) to test the "
        "plumbing, or describe a local encoder .onnx instead (frametok export encoder FILE.onnx --mean ... --std ...)"
    )


def _tokens_module(model: Any) -> Any:
    """Wrap ``model`` so that its forward is ``forward_features``: image in, (N, T, D) tokens out."""
    import torch

    class TokensOnly(torch.nn.Module):
        def __init__(self, backbone: Any) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            tokens: torch.Tensor = self.backbone.forward_features(image)
            return tokens

    return TokensOnly(model).eval()


def _create_timm_features(model_name: str, stage: int, random_init: bool) -> Any:
    """timm ``model_name`` with ``features_only``, giving only stage ``stage`` (a ``feature_info`` index; -1 is
    the last), in eval mode."""
    import timm

    kwargs: dict[str, Any] = {"pretrained": not random_init, "features_only": True, "out_indices": (stage,)}
    try:
        model = timm.create_model(model_name, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ExportError(f"unknown timm model {model_name!r} (see timm.list_models())") from exc
        raise _create_error(model_name, random_init, exc) from exc
    except IndexError as exc:
        full: Any = timm.create_model(model_name, pretrained=False, features_only=True)
        stages = len(full.feature_info)
        raise ExportError(f"timm model {model_name!r} has {stages} feature stages: --stage takes 0 to "
                          f"{stages - 1}, or -1 (the last), not {stage}") from exc
    except Exception as exc:  # hub / network / checkpoint errors come in many types
        raise _create_error(model_name, random_init, exc) from exc
    return model.eval()


def _feature_map_module(model: Any) -> Any:
    """Wrap a one-stage ``features_only`` model: image in, its (N, C, H, W) feature map out."""
    import torch

    class FeatureMap(torch.nn.Module):
        def __init__(self, backbone: Any) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            maps: list[torch.Tensor] = self.backbone(image)
            return maps[0]

    return FeatureMap(model).eval()


def _feature_layout(
    model_name: str, model: Any, shape: tuple[int, ...], input_hw: tuple[int, int], stage: int
) -> _TokenLayout:
    """Normalisation and grid of a one-stage features_only model, checked on its output ``shape``."""
    where = f"timm model {model_name!r} stage {stage}"
    channels = list(model.feature_info.channels())
    if len(shape) != 4 or channels != [shape[1]]:
        raise ExportError(f"{where}: gives shape {shape}, expected (N, {channels[0]}, H, W)")
    config = _data_config(model)
    return _TokenLayout(
        input_hw=input_hw,
        mean=_rgb_triple(config["mean"], "mean", where),
        std=_rgb_triple(config["std"], "std", where),
        prefix_tokens=0,
        context="mean",
        grid_hw=(int(shape[2]), int(shape[3])),
        output_layout="nchw",
        stage=stage,
    )


def _data_config(model: Any) -> dict[str, Any]:
    """timm's input size, mean and std for ``model`` (from its pretrained cfg)."""
    from timm.data import resolve_model_data_config  # type: ignore[attr-defined]

    config: dict[str, Any] = resolve_model_data_config(model)  # type: ignore[no-untyped-call]
    return config


def _token_layout(
    model_name: str, model: Any, tokens_shape: tuple[int, ...], input_hw: tuple[int, int]
) -> _TokenLayout:
    """Read normalisation, prefix tokens, context and grid from the timm model; check them on its output."""
    where = f"timm model {model_name!r}"
    if len(tokens_shape) != 3:
        raise ExportError(
            f"{where}: forward_features gives shape {tokens_shape}, expected (N, tokens, dim) (a ViT-style encoder)"
        )
    config = _data_config(model)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    has_cls = getattr(model, "has_class_token", getattr(model, "cls_token", None) is not None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        raise ExportError(f"{where}: has no patch_embed.grid_size, cannot tell its patch grid")
    grid_hw = (int(grid[0]), int(grid[1]))
    if tokens_shape[1] != prefix + grid_hw[0] * grid_hw[1]:
        raise ExportError(
            f"{where}: {tokens_shape[1]} tokens, expected {prefix} prefix tokens + a {grid_hw[0]}x{grid_hw[1]} grid"
        )
    return _TokenLayout(
        input_hw=input_hw,
        mean=_rgb_triple(config["mean"], "mean", where),
        std=_rgb_triple(config["std"], "std", where),
        prefix_tokens=prefix,
        context="cls" if has_cls and prefix >= 1 else "mean",
        grid_hw=grid_hw,
    )


def _example_batch(input_hw: tuple[int, int]) -> Any:
    """A deterministic random ``(2, 3, H, W)`` batch (batch 2, so tracing cannot fold the batch size to 1)."""
    import torch

    generator = torch.Generator().manual_seed(PARITY_SEED)
    return torch.randn(PARITY_BATCH, 3, *input_hw, generator=generator)


def _torch_onnx_export(module: Any, example: Any, path: Path, opset: int, output: str = "tokens") -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["image"],
            output_names=[output],
            opset_version=opset,
            dynamic_axes={"image": {0: "batch"}, output: {0: "batch"}},
            dynamo=False,
        )


def _as_tokens(output: NDArray[np.float32]) -> NDArray[np.float32]:
    """Tokens along the last axis: an (N, C, H, W) feature map as (N, H, W, C), tokens as they are."""
    return output.transpose(0, 2, 3, 1) if output.ndim == 4 else output


def _token_parity(reference: NDArray[np.float32], got: NDArray[np.float32]) -> dict[str, Any]:
    """Per-token cosine (a feature map's tokens: each position's channels) and max abs difference."""
    ref64, got64 = _as_tokens(reference).astype(np.float64), _as_tokens(got).astype(np.float64)
    norms = np.linalg.norm(ref64, axis=-1) * np.linalg.norm(got64, axis=-1)
    cosine = (ref64 * got64).sum(axis=-1) / np.maximum(norms, 1e-12)
    return {
        "tokens_shape": list(reference.shape),
        "max_abs_diff": float(np.abs(ref64 - got64).max()),
        "min_cosine": float(cosine.min()),
    }


def _check_parity(manifest_path: Path, example: Any, reference: NDArray[np.float32]) -> dict[str, Any]:
    """Run the exported ONNX on ``example`` and compare with torch's ``reference`` tokens."""
    files = locate_model(manifest_path)
    session = create_session(files, providers=("cpu",), threads=2)
    man = files.manifest
    got = np.asarray(session.run([man.output_name], {man.input_name: example.numpy()})[0], np.float32)
    if got.shape != reference.shape:
        raise ExportError(f"{files.onnx_path}: onnxruntime gives tokens {got.shape}, torch gives {reference.shape}")
    parity = _token_parity(reference, got)
    parity["inputs"] = f"torch.randn({', '.join(str(s) for s in example.shape)}), seed {PARITY_SEED}"
    if parity["min_cosine"] < MIN_COSINE:
        raise ExportError(
            f"{files.onnx_path}: the ONNX tokens differ from torch's (min cosine {parity['min_cosine']:.6f} "
            f"< {MIN_COSINE}, max abs diff {parity['max_abs_diff']:.3g})"
        )
    return parity


def _encoder_source(model_name: str, random_init: bool) -> tuple[WeightsSource, dict[str, str]]:
    versions = package_versions(["frametok", "timm", "torch", "onnx", "onnxruntime"])
    source = WeightsSource(weights=f"timm:{model_name}", framework=f"timm {versions['timm']}", random_init=random_init)
    return source, {**versions, "torch.onnx": TORCH_ONNX_EXPORTER}


def _build(
    model_name: str, img_size: int, random_init: bool, stage: int | None
) -> tuple[Any, Any, NDArray[np.float32], _TokenLayout]:
    """The torch module to export, its example batch, torch's output on it, and the layout read from timm.

    ``stage`` None: a model whose ``forward_features`` gives tokens exports them; one that gives a feature map
    (a CNN) exports its last ``features_only`` stage instead, as does any model with ``stage`` given.
    """
    import torch

    if stage is None:
        model, took_size = _create_timm_model(model_name, img_size, random_init)
        module = _tokens_module(model)
        input_hw = (img_size, img_size) if took_size else _default_input_hw(model)
        example = _example_batch(input_hw)
        with torch.inference_mode():
            reference = module(example).numpy()
        if reference.ndim != 4:
            return module, example, reference, _token_layout(model_name, model, tuple(reference.shape), input_hw)
        stage = -1
    model = _create_timm_features(model_name, stage, random_init)
    module = _feature_map_module(model)
    example = _example_batch((img_size, img_size))  # a CNN takes any input size
    with torch.inference_mode():
        reference = module(example).numpy()
    return module, example, reference, _feature_layout(model_name, model, tuple(reference.shape),
                                                       (img_size, img_size), stage)


def export_timm_encoder(
    model_name: str,
    out_dir: str | Path,
    *,
    img_size: int = 224,
    random_init: bool = False,
    stage: int | None = None,
    opset: int = 17,
    name: str | None = None,
    check: bool = True,
    half: bool = False,
    half_samples: Sequence[str | Path] | None = None,
    int8: bool = False,
    int8_calibrate: Sequence[str | Path] | None = None,
) -> ModelFiles:
    """Export timm ``model_name``'s ``forward_features`` tokens to ``out_dir/<name>.onnx`` with its manifest.

    Input ``image`` (N, 3, H, W), output ``tokens`` (N, T, D), dynamic batch; a CNN (``forward_features`` gives
    a feature map) or any model with ``stage`` given: output ``features`` (N, C, H, W) of ``features_only``
    stage ``stage`` (default -1, the last), ``output_layout: nchw``. The manifest is written
    once torch and onnxruntime agree on a random batch (``check``). ``half`` also writes
    ``<name>.fp16.onnx``, checked against the fp32 graph on ``half_samples`` (see :func:`add_fp16`); ``int8``
    ``<name>.int8.onnx``, gated on frames of ``int8_calibrate`` (videos or images, see :func:`add_int8`).
    """
    require_modules(("torch", "timm", "onnx"), "exporting a timm encoder")
    name = name or re.sub(r"[^\w.-]+", "_", model_name)
    with tempfile.TemporaryDirectory(prefix="frametok-encoder-") as tmp:
        work = Path(tmp)
        onnx_tmp, manifest_tmp = work / f"{name}.onnx", work / f"{name}.json"
        try:
            module, example, reference, layout = _build(model_name, img_size, random_init, stage)
            _torch_onnx_export(module, example, onnx_tmp, opset,
                               "features" if layout.output_layout == "nchw" else "tokens")
            manifest = _describe_export(onnx_tmp, name, layout, model_name, random_init, opset)
            if check:
                write_manifest(manifest, manifest_tmp)
                manifest = manifest.model_copy(update={"parity": _check_parity(manifest_tmp, example, reference)})
        except FrametokError:
            raise
        except Exception as exc:  # torch / timm / onnx raise many unrelated types
            raise ExportError(
                f"exporting timm model {model_name!r} to ONNX failed: {type(exc).__name__}: {exc}"
            ) from exc
        files = _publish(onnx_tmp, manifest, Path(out_dir).expanduser(), name)
    if half:
        from .half import add_fp16

        files = add_fp16(files, half_samples)
    if int8:
        from .int8 import add_int8

        files = add_int8(files, int8_calibrate or [])
    return files


def _default_input_hw(model: Any) -> tuple[int, int]:
    size = _data_config(model)["input_size"]
    return int(size[1]), int(size[2])


def _describe_export(
    onnx_path: Path, name: str, layout: _TokenLayout, model_name: str, random_init: bool, opset: int
) -> EncoderManifest:
    source, exporter = _encoder_source(model_name, random_init)
    if layout.stage is not None:
        exporter["timm.features_only"] = f"stage {layout.stage}"
    manifest = describe_encoder_onnx(
        onnx_path,
        mean=layout.mean,
        std=layout.std,
        prefix_tokens=layout.prefix_tokens,
        context=layout.context,
        name=name,
        input_size_hw=layout.input_hw,
        source=source,
        exporter={**exporter, "opset": str(opset)},
        output_layout=layout.output_layout,
    )
    if manifest.grid_hw != layout.grid_hw:
        raise ExportError(
            f"{onnx_path}: the ONNX output reads as a {manifest.grid_hw} grid, timm says {layout.grid_hw}"
        )
    return manifest.model_copy(update={"onnx_file": onnx_path.name})


# --------------------------------------------------------------------------- existing ONNX


def describe_encoder(
    onnx_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    prefix_tokens: int | None = None,
    context: Literal["cls", "mean"] | None = None,
    name: str | None = None,
    input_size_hw: tuple[int, int] | None = None,
) -> ModelFiles:
    """Write ``<out_dir>/<name>.json`` for an existing encoder ONNX (no torch needed).

    The ONNX is copied to ``<out_dir>/<name>.onnx`` when it is not already there (e.g. it sits in a
    read-only folder), so that the pair lives together; ``out_dir`` defaults to the ONNX's folder.
    """
    source = Path(onnx_path).expanduser().absolute()  # not resolved: a symlink's own folder and name count
    name = name or source.stem
    target_dir = Path(out_dir).expanduser().absolute() if out_dir is not None else source.parent
    where = f"encoder {source}"
    manifest = describe_encoder_onnx(
        source,
        mean=_rgb_triple(mean, "mean", where),
        std=_rgb_triple(std, "std", where),
        prefix_tokens=prefix_tokens,
        context=context,
        name=name,
        input_size_hw=input_size_hw,
        exporter={**package_versions(["frametok", "onnxruntime"]), "described_by": "frametok"},
    )
    manifest = manifest.model_copy(update={"onnx_file": f"{name}.onnx"})
    target, manifest_out = target_dir / f"{name}.onnx", target_dir / f"{name}.json"
    copied = False
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        if not (target.exists() and target.samefile(source)):
            _copy_writable(source, target)
            copied = True
        write_manifest(manifest, manifest_out)
    except OSError as exc:
        remove_quietly(manifest_out, *([target] if copied else []))
        raise ModelError(f"cannot write the manifest for {source} to {target_dir}: {exc}") from exc
    return locate_model(manifest_out)
