"""Long-video indexing and search: ``frametok index``, ``frametok record``, ``frametok search``.

The index is an embedded LanceDB folder (the ``index`` extra: ``pip install 'frametok[index]'``).

>>> from frametok.index import open_index                                # doctest: +SKIP
>>> idx = open_index("footage.db")
>>> idx.search(["person >= 5"], t_from=60, t_to=120)                   # frames with five people or more
>>> idx.search(image="someone.jpg", crop_xyxy=(10, 20, 60, 140), limit=5)  # where does this person appear
"""

from .indexer import Indexer, IndexOptions, IndexReport
from .record import RecordReport, record
from .search import ClassFilter, Hit, Index, open_index, parse_filter
from .store import SCHEMA_VERSION
from .thumbs import write_thumbs

__all__ = [
    "SCHEMA_VERSION",
    "ClassFilter",
    "Hit",
    "Index",
    "IndexOptions",
    "IndexReport",
    "Indexer",
    "RecordReport",
    "open_index",
    "parse_filter",
    "record",
    "write_thumbs",
]
