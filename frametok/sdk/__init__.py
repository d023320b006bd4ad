"""The subscriber side: the ``Subscriber`` SDK (live and lossless), message rendering, wire costs.

Imports only the wire format (``frametok.packet``, ``frametok.grid``), the CURVE key files and the
errors: a program that consumes tokens needs pyzmq and numpy, never the model runtime, OpenCV or PyAV.
"""

from __future__ import annotations

from .sequence import GapReport
from .subscriber import Subscriber

__all__ = ["GapReport", "Subscriber"]
