"""The ``torch`` execution provider: the same ONNX graphs run by PyTorch (converted with onnx2torch).

``worker.providers: [torch, cpu]`` (``--providers torch,cpu``) loads each model's ONNX graph (the one
:func:`~frametok.models.session.create_session` picks: fp32, or the manifest's fp16/int8 variant, checked
against its sha256) into a ``torch.nn.Module`` and runs it on CUDA (``cuda:<device_id>``, ``worker.devices``)
when PyTorch sees a GPU, else on the CPU. :class:`TorchSession` answers what the Detector, the Encoder and
:class:`~frametok.models.session.SessionRunner` ask of an ``onnxruntime.InferenceSession`` (``run``,
``get_inputs``, ``get_outputs``, ``get_providers``), so nothing above the session changes.

It is the GPU path a machine without onnxruntime-gpu can check (a CUDA build of PyTorch is enough);
onnxruntime-gpu and TensorRT stay the production providers. fp32 graphs run in fp32 on CUDA (TF32 off, so
the fp32 parity gates hold); the fp16 graph (``export --half``) is the fast one there. This module imports
torch, so it is imported only when the torch provider is asked for.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ModelError

__all__ = ["TORCH_PROVIDER", "TorchNodeArg", "TorchSession", "torch_available", "torch_device"]

log = logging.getLogger(__name__)

TORCH_PROVIDER = "torch"  # the short name in worker.providers / --providers
_INSTALL = "pip install 'frametok[torch]' (onnx2torch) beside a PyTorch build"


@dataclass(frozen=True)
class TorchNodeArg:
    """A graph input or output as onnxruntime's ``NodeArg`` describes it: ``shape`` holds ints for fixed
    dimensions and the symbolic name (or None) for dynamic ones; ``type`` is e.g. ``"tensor(float)"``."""

    name: str
    shape: list[int | str | None]
    type: str


def torch_available() -> str | None:
    """None when torch and onnx2torch import; else why not (the import error, and how to install)."""
    try:
        import onnx2torch  # noqa: F401
        import torch  # noqa: F401
    except Exception as exc:  # ImportError, or a broken torch build (OSError, RuntimeError)
        return f"the torch provider needs torch and onnx2torch ({type(exc).__name__}: {exc}); {_INSTALL}"
    return None


def torch_device(device_id: int | None = None) -> str:
    """``"cuda:N"`` (``device_id``, default 0) when PyTorch sees a GPU, else ``"cpu"``."""
    import torch

    if not torch.cuda.is_available():
        if device_id is not None:
            log.info("torch provider: no CUDA device visible, device %d runs on the CPU", device_id)
        return "cpu"
    count = torch.cuda.device_count()
    index = device_id or 0
    if index >= count:
        raise ModelError(f"torch provider: device {index} asked for, but PyTorch sees {count} CUDA device(s)")
    return f"cuda:{index}"


_TYPE_NAMES: dict[np.dtype[Any], str] = {
    np.dtype(np.float32): "float", np.dtype(np.float16): "float16", np.dtype(np.float64): "double",
    np.dtype(np.int64): "int64", np.dtype(np.int32): "int32", np.dtype(np.uint8): "uint8",
}


def _node_args(values: Sequence[Any], skip: set[str]) -> list[TorchNodeArg]:
    from onnx import helper

    out = []
    for v in values:
        if v.name in skip:
            continue
        tt = v.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape: list[int | str | None] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        ]
        out.append(TorchNodeArg(v.name, shape, f"tensor({_TYPE_NAMES.get(dtype, dtype.name)})"))
    return out


def _tuple_slices() -> None:
    """onnx2torch's Slice indexes with a list of slices (``x[[slice, ...]]``), which PyTorch deprecates (a
    warning on every graph with a Slice, and "in 2.9 this will be interpreted as tensor index"): hand it tuples,
    the indexing PyTorch keeps. Done once, only where onnx2torch still has that helper."""
    try:
        from onnx2torch.node_converters import slice as o2t_slice
    except ImportError:
        return
    original = getattr(o2t_slice, "_do_slice", None)
    if original is None or getattr(original, "_frametok_tuples", False):
        return

    def _do_slice(x: Any, flip_dims: list[int], pos_axes_slices: Sequence[Any], neg_axes_slices: Sequence[Any]) -> Any:
        return original(x, flip_dims, tuple(pos_axes_slices), tuple(neg_axes_slices))

    _do_slice._frametok_tuples = True  # type: ignore[attr-defined]
    o2t_slice._do_slice = _do_slice


class TorchSession:
    """An ONNX graph converted to PyTorch, behind onnxruntime's session interface.

    ``device`` is ``"cpu"`` or ``"cuda:N"`` (see :func:`torch_device`); ``threads`` > 0 sets PyTorch's
    intra-op threads on the CPU (process-wide, as it is in PyTorch).
    """

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int = 0) -> None:
        why = torch_available()
        if why is not None:
            raise ModelError(why)
        import onnx
        import torch
        from onnx2torch import convert

        self.onnx_path = Path(onnx_path)
        self.device = torch.device(device)
        try:
            model = onnx.load(str(self.onnx_path))
        except Exception as exc:  # onnx raises DecodeError, OSError, ...
            raise ModelError(f"torch provider: cannot read {self.onnx_path}: {exc}") from exc
        initializers = {i.name for i in model.graph.initializer}
        self._inputs = _node_args(model.graph.input, initializers)
        self._outputs = _node_args(model.graph.output, set())
        self._input_dtypes = [_np_dtype(a.type) for a in self._inputs]
        self._output_index = {a.name: i for i, a in enumerate(self._outputs)}
        _tuple_slices()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = convert(model)
        except Exception as exc:  # onnx2torch: NotImplementedError for an op it has no converter for, ...
            raise ModelError(f"torch provider: onnx2torch cannot convert {self.onnx_path.name}: "
                             f"{type(exc).__name__}: {exc}") from exc
        del model
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # the worker's batch shapes repeat
            torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32: the parity gates are fp32 gates
            torch.backends.cuda.matmul.allow_tf32 = False
        elif threads > 0:
            torch.set_num_threads(threads)
        self.module = module.to(self.device).eval()
        self._lock = threading.Lock()
        self._warm_up()

    def _warm_up(self) -> None:
        """One run on zeros (the fixed dimensions, 1 for dynamic ones): the first call's one-off costs (cuDNN
        set-up, lazy initialisation) and onnx2torch's one-time warnings happen here, not on the first frame."""
        feed: dict[str, NDArray[Any]] = {}
        for arg, dtype in zip(self._inputs, self._input_dtypes, strict=True):
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
            feed[arg.name] = np.zeros(shape, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.run(None, feed)
            except Exception as exc:
                raise ModelError(f"torch provider: {self.onnx_path.name} does not run on {self.device} after "
                                 f"conversion: {type(exc).__name__}: {exc}") from exc

    # --- what onnxruntime.InferenceSession offers and frametok uses ---

    def get_inputs(self) -> list[TorchNodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[TorchNodeArg]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        """One entry naming where the graph runs: ``"torch:cuda:0"`` or ``"torch:cpu"``."""
        return [f"{TORCH_PROVIDER}:{self.device}"]

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None) -> list[NDArray[Any]]:
        """The named outputs (all when ``output_names`` is None or empty) for ``input_feed``, as numpy arrays."""
        import torch

        names = list(output_names) if output_names else [a.name for a in self._outputs]
        unknown = [n for n in names if n not in self._output_index]
        if unknown:
            raise ModelError(f"torch provider: {unknown} not among the outputs {list(self._output_index)}")
        missing = [a.name for a in self._inputs if a.name not in input_feed]
        if missing:
            raise ModelError(f"torch provider: inputs {missing} not fed (got {sorted(input_feed)})")
        args = [
            torch.from_numpy(np.ascontiguousarray(input_feed[a.name], dtype)).to(self.device, non_blocking=True)
            for a, dtype in zip(self._inputs, self._input_dtypes, strict=True)
        ]
        with self._lock, torch.inference_mode():
            result = self.module(*args)
            outs = list(result) if isinstance(result, (tuple, list)) else [result]
            return [outs[self._output_index[n]].detach().cpu().numpy() for n in names]


def _np_dtype(type_name: str) -> np.dtype[Any]:
    inner = type_name.removeprefix("tensor(").removesuffix(")")
    for dtype, name in _TYPE_NAMES.items():
        if name == inner:
            return dtype
    return np.dtype(inner)
