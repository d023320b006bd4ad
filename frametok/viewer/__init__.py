"""``frametok view``: a live web page of a publisher's streams (frames, boxes, state, charts)."""

from .server import ViewerServer

__all__ = ["ViewerServer"]
