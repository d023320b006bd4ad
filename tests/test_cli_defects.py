"""Command-line defects of issue 14: the echo line of a tracker, refused stream ids, ``models --models``,
a model asked for by its own file name, and a CLI piped into ``head``."""

from __future__ import annotations

from frametok.packet import StreamInfo
from frametok.sdk.render import message_line


def test_echo_names_the_tracker_by_its_kind() -> None:
    """Defect 3: ``run --echo`` printed ``tracker ?`` although info carries ``tracker.kind: "bytetrack"``."""
    info = StreamInfo("cam0", "file", {"detector": {"name": "yolov8n", "class_names": ["person"]},
                                       "tracker": {"kind": "bytetrack", "lost_track_buffer": 60}})
    line = message_line(info)
    assert "tracker bytetrack" in line and "?" not in line, line
    assert "detector yolov8n" in line
