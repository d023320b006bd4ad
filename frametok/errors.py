"""The one error tree of frametok.

Every error frametok raises on purpose is a :class:`FrametokError`; errors from the
libraries underneath (PyAV, onnxruntime, ZeroMQ, pydantic, ...) are wrapped at the
boundary with ``raise ... from exc`` so callers need to catch one family only.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ExportError",
    "FrametokError",
    "ModelError",
    "PipelineError",
    "ProtocolError",
    "SourceError",
]


class FrametokError(Exception):
    """Base class of every error frametok raises."""


class ConfigError(FrametokError):
    """A configuration file or flag is invalid (unknown key, wrong type, bad value)."""


class SourceError(FrametokError):
    """A video source cannot be opened or decoded."""


class ModelError(FrametokError):
    """A model file or its manifest is missing, unreadable, or inconsistent."""


class ExportError(ModelError):
    """Exporting a model to ONNX failed, or its parity check did not pass."""


class ProtocolError(FrametokError):
    """A message on the wire does not follow the frametok protocol."""


class PipelineError(FrametokError):
    """A pipeline process failed, or the pipeline could not start."""
