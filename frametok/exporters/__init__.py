"""Model exporters: Ultralytics YOLO and timm encoders to ONNX with manifests, manifests for ONNX files,
fp16 variants of exported graphs (:func:`add_fp16`) and int8 ones (:func:`add_int8`).

The functions load lazily: importing this package imports neither torch, ultralytics nor timm
(only :func:`export_yolo` and :func:`export_timm_encoder` do, when called).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .encoder import describe_encoder, export_timm_encoder
    from .half import add_fp16
    from .int8 import add_int8
    from .yolo import export_yolo

__all__ = ["add_fp16", "add_int8", "describe_encoder", "export_timm_encoder", "export_yolo"]

_MODULE_OF = {"export_yolo": ".yolo", "export_timm_encoder": ".encoder", "describe_encoder": ".encoder",
              "add_fp16": ".half", "add_int8": ".int8"}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
