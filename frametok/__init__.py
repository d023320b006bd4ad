"""frametok: live cameras and long videos in, streams of detection and image tokens out.

The curated public API; everything else is internal and may change.
"""

from __future__ import annotations

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
from .index import Hit, Index, Indexer, IndexOptions, open_index
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
from .streamer.subscriber import GapReport, Subscriber
from .streamer.supervisor import RunSummary, run_pipeline

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
