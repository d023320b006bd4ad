"""The reader thread of a producer: one connection of a source, decoded into a small hand-off queue."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator

from .decode import DecodedFrame

__all__ = ["Reader"]

_TICK_S = 0.05  # how often a waiting reader looks whether it was closed
_READER_JOIN_S = 1.0


class Reader:
    """One connection of a source, read by a daemon thread into a hand-off of ``depth`` frames.

    ``live``: a full hand-off drops its oldest frame (counted in ``dropped``) and the reader never
    waits; otherwise the reader waits for room (back-pressure).
    """

    def __init__(self, open_frames: Callable[[], Iterator[DecodedFrame]], live: bool, depth: int, name: str) -> None:
        self._open = open_frames
        self.live, self.depth = live, depth
        self._cond = threading.Condition()
        self._queue: deque[DecodedFrame] = deque()
        self.read = 0  # frames handed over (dropped ones included)
        self.dropped = 0
        self.error: BaseException | None = None
        self._closed = False
        self._done = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        frames: Iterator[DecodedFrame] | None = None
        try:
            frames = self._open()
            for frame in frames:
                with self._cond:
                    while not self.live and len(self._queue) >= self.depth and not self._closed:
                        self._cond.wait(_TICK_S)
                    if self._closed:
                        break
                    if len(self._queue) >= self.depth:
                        self._queue.popleft()
                        self.dropped += 1
                    self._queue.append(frame)
                    self.read += 1
                    self._cond.notify_all()
        except BaseException as exc:  # reported to the main thread, which decides what it means
            self.error = exc
        finally:
            if frames is not None:
                with contextlib.suppress(Exception):
                    frames.close()  # type: ignore[attr-defined]
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def get(self, timeout_s: float) -> DecodedFrame | None:
        """The next frame, or None when none came within ``timeout_s`` (or the reader finished)."""
        with self._cond:
            if not self._queue and not self._done:
                self._cond.wait(timeout_s)
            if not self._queue:
                return None
            frame = self._queue.popleft()
            self._cond.notify_all()
            return frame

    @property
    def finished(self) -> bool:
        """The reader is done and every frame it read was taken."""
        with self._cond:
            return self._done and not self._queue

    def close(self, join_s: float = _READER_JOIN_S) -> bool:
        """Ask the reader to stop; True when its thread ended within ``join_s``."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        self.thread.join(join_s)
        return not self.thread.is_alive()
