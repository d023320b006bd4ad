"""A thumbnail (JPEG) per search hit, decoded from the source video, with the matched boxes drawn."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .frames import read_frames
from .search import Hit

__all__ = ["write_thumbs"]


def write_thumbs(hits: Sequence[Hit], out: str | Path, width: int = 320) -> list[Path]:
    """One ``NNN_<stream>_<frame>.jpg`` per hit whose video can be read (in hit order)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    by_video: dict[str, list[int]] = defaultdict(list)
    for hit in hits:
        by_video[hit.video].append(hit.frame)
    frames = {}
    for video, wanted in by_video.items():
        if Path(video).is_file():
            frames[video] = read_frames(video, wanted)
    written = []
    for rank, hit in enumerate(hits):
        rgb = frames.get(hit.video, {}).get(hit.frame)
        if rgb is None:
            continue
        bgr = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        for x1, y1, x2, y2 in hit.boxes:
            cv2.rectangle(bgr, (int(x1), int(y1)), (int(x2), int(y2)), (0, 0, 255), 2)
        h, w = bgr.shape[:2]
        small = cv2.resize(bgr, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        path = folder / f"{rank:03d}_{hit.stream}_{hit.frame:06d}.jpg"
        cv2.imwrite(str(path), small)
        written.append(path)
    return written
