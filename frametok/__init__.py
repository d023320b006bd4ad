"""frametok: live cameras and long videos in, streams of detection and image tokens out.

The curated public API; everything else is internal and may change. A program that only consumes
tokens (``Subscriber``, the packet types) imports the wire format and the SDK alone: the pipeline and
the index (onnxruntime, OpenCV, PyAV, LanceDB) load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import Config, load_config
from .errors import (
    ConfigError,
    ExportError,
    FrametokError,
    ModelError,
    PipelineError,
    ProtocolError,
    SourceError,
)
from .packet import (
    PROTOCOL_VERSION,
    Detections,
    EndOfStream,
    Message,
    StatusMessage,
    StreamInfo,
    Timestamps,
    TokenPacket,
    decode,
    encode,
)
from .sdk import GapReport, Subscriber

if TYPE_CHECKING:
    from .index import Hit, Index, Indexer, IndexOptions, open_index
    from .streamer.supervision.supervisor import RunSummary, run_pipeline

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "Config",
    "ConfigError",
    "Detections",
    "EndOfStream",
    "ExportError",
    "FrametokError",
    "GapReport",
    "Hit",
    "Index",
    "IndexOptions",
    "Indexer",
    "Message",
    "ModelError",
    "PipelineError",
    "ProtocolError",
    "RunSummary",
    "SourceError",
    "StatusMessage",
    "StreamInfo",
    "Subscriber",
    "Timestamps",
    "TokenPacket",
    "__version__",
    "decode",
    "encode",
    "load_config",
    "open_index",
    "run_pipeline",
]

# names whose modules pull in the model runtime, OpenCV, PyAV or LanceDB: imported on first use
_LAZY = {
    "Hit": ".index",
    "Index": ".index",
    "IndexOptions": ".index",
    "Indexer": ".index",
    "open_index": ".index",
    "RunSummary": ".streamer.supervision.supervisor",
    "run_pipeline": ".streamer.supervision.supervisor",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'frametok' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
