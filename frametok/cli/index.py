"""``frametok index``, ``record`` and ``search``: video files and token streams into an index, and queries over it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .common import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from .common import Commands

__all__ = ["add_index_commands", "cmd_index", "cmd_record", "cmd_search"]


def cmd_index(args: argparse.Namespace) -> int:
    from ..index import Indexer, IndexOptions

    options = IndexOptions(detector=args.detector, encoder=args.encoder, models_dirs=tuple(args.models or ()),
                           config=args.config, every=args.every, progress=not args.no_progress,
                           batch_rows=args.flush_every,
                           log_level=logging.INFO if args.verbose else logging.WARNING)
    if args.ray:
        from ..index.cluster import RayIndexer

        report = RayIndexer(args.db, options, args.ray).run(args.inputs)
    else:
        report = Indexer(args.db, options).run(args.inputs)
    print(report.line(), flush=True)
    return EXIT_OK if report.indexed or report.unchanged or not report.failed else EXIT_FAILED


def cmd_record(args: argparse.Namespace) -> int:
    from ..index import record

    report = record(args.endpoint, args.db, streams=args.stream or None, lossless=args.lossless,
                    count=args.count, timeout_s=args.timeout)
    print(report.line(), flush=True)
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    import json

    from ..index import open_index, write_thumbs

    crop = None
    if args.crop:
        try:
            crop = tuple(int(v) for v in args.crop.split(","))
        except ValueError:
            crop = ()
        if len(crop) != 4:
            raise ConfigError(f"--crop: expected x1,y1,x2,y2 in pixels, got {args.crop!r}")
    index = open_index(args.db, models_dirs=tuple(args.models or ()))
    hits = index.search(args.filters, image=args.image, crop_xyxy=crop, t_from=args.t_from, t_to=args.t_to,
                        video=args.video, limit=args.limit or None, like_codes=args.like_codes)
    if args.thumbs:
        write_thumbs(hits, args.thumbs)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits]))
    else:
        print(f"{'video':40} {'frame':>7} {'time_s':>9} {'score':>7}  match")
        for h in hits:
            counts = " ".join(f"{k}={v}" for k, v in h.counts.items())
            print(f"{Path(h.video).name[:40]:40} {h.frame:7d} {h.t_s:9.2f} {h.score:7.3f}  {h.match} {counts}".rstrip())
        print(f"{len(hits)} hit(s)", file=sys.stderr)
    return EXIT_OK


def add_index_commands(sub: Commands) -> None:
    """The ``index``, ``record`` and ``search`` commands and their flags."""
    idx = sub.add_parser("index", help="index videos (every frame, lossless) into a searchable database")
    idx.add_argument("inputs", nargs="+", metavar="VIDEO_OR_GLOB", help="video files or globs ('footage/*.mp4')")
    idx.add_argument("--db", required=True, metavar="DIR", help="the index folder (LanceDB)")
    idx.add_argument("--config", metavar="YAML", help="a run config for the models and worker settings")
    idx.add_argument("--detector", metavar="MODEL", help="detector: registry name, .onnx path, or 'none'")
    idx.add_argument("--encoder", metavar="MODEL", help="encoder: registry name, .onnx path, or 'none'")
    idx.add_argument("--models", action="append", metavar="DIR", help="folder of model files (also FRAMETOK_MODELS)")
    idx.add_argument("--every", type=int, default=1, metavar="N", help="index every Nth frame (default: all)")
    idx.add_argument("--flush-every", type=int, default=256, metavar="N",
                     help="commit to the index every N frames (an interrupted run resumes after the last commit)")
    idx.add_argument("--no-progress", action="store_true", help="no progress bars")
    idx.add_argument("--ray", metavar="ADDRESS", help="index on a Ray cluster: its address (host:port), 'auto' "
                     "(the cluster this machine is in) or 'local' (start Ray here); needs the cluster extra")
    idx.set_defaults(func=cmd_index)

    rec = sub.add_parser("record", help="write a publisher's token stream into an index")
    rec.add_argument("endpoint", nargs="+",
                     help="a publisher's endpoint (its lossless endpoint with --lossless); several: each one's streams")
    rec.add_argument("--db", required=True, metavar="DIR")
    rec.add_argument("--stream", action="append", metavar="ID", help="only these streams (repeatable)")
    rec.add_argument("--lossless", action="store_true", help="ENDPOINT is a lossless endpoint")
    rec.add_argument("--count", type=int, default=0, metavar="N", help="stop after N frames")
    rec.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds of silence")
    rec.set_defaults(func=cmd_record)

    srch = sub.add_parser("search", help="search an index: classes, counts, time, similar images")
    srch.add_argument("filters", nargs="*", metavar="FILTER", help="'truck', 'person >= 5', 'car == 0' (all must hold)")
    srch.add_argument("--db", required=True, metavar="DIR")
    srch.add_argument("--image", metavar="FILE", help="rank frames by similarity to this image")
    srch.add_argument("--like-codes", metavar="VIDEO:FRAME",
                      help="rank frames by how like this frame their codebook codes are (histogram intersection; "
                      "VIDEO: a video id or part of its path; an index made with encoder.codebook)")
    srch.add_argument("--crop", metavar="X1,Y1,X2,Y2", help="use this part of --image (pixels)")
    srch.add_argument("--from", dest="t_from", type=float, metavar="S", help="from this time (seconds)")
    srch.add_argument("--to", dest="t_to", type=float, metavar="S", help="up to this time (seconds)")
    srch.add_argument("--video", metavar="TEXT", help="only videos whose path contains TEXT")
    srch.add_argument("--limit", type=int, default=20, metavar="N", help="at most N hits (0: all; default 20)")
    srch.add_argument("--json", action="store_true", help="hits as a JSON list")
    srch.add_argument("--thumbs", metavar="DIR", help="write a thumbnail per hit into DIR")
    srch.add_argument("--models", action="append", metavar="DIR", help="where the encoder is (image search)")
    srch.set_defaults(func=cmd_search)
