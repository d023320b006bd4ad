"""A progress bar (tqdm) for ``frametok run``, drawn from the supervisor's events."""

from __future__ import annotations

import sys
from typing import Any

from ...config import Config
from ..ipc.notices import EventNotice

__all__ = ["ProgressView"]


class ProgressView:
    """Frames published so far, fps and ETA (when the sources' lengths are known); status changes."""

    def __init__(self, config: Config, enabled: bool = True, total: int | None = None) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._done = 0
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="frame", desc="frametok", file=sys.stderr, dynamic_ncols=True,
                             leave=False)

    def on_event(self, ev: EventNotice) -> None:
        if ev.event == "status" and ev.data.get("state") in ("error", "stalled", "reconnecting", "offline"):
            self._write(f"{ev.source}: {ev.data.get('state')} {ev.data.get('detail', '')}".rstrip())
        elif ev.event == "stream_end" and ev.data.get("reason") != "end":
            self._write(f"{ev.data.get('stream')}: ended ({ev.data.get('reason')}) {ev.data.get('detail', '')}")
        if self._bar is None:
            return
        if ev.event in ("progress", "done"):
            frames = int(ev.data.get("frames", self._done))
            self._bar.update(frames - self._done)
            self._done = frames
            streams = ev.data.get("streams") or ev.data.get("packets") or {}
            if len(streams) > 1:
                self._bar.set_postfix_str(" ".join(f"{k}:{v}" for k, v in streams.items()), refresh=False)

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
