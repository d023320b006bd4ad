"""The ``frametok`` command line: its parser and :func:`main` (one command, its errors as exit codes); the
commands live in :mod:`.stream` (run, subscribe, view), :mod:`.files` (export, codebook, keys, models) and
:mod:`.index` (index, record, search)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..errors import FrametokError, PipelineError
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, quiet_stdout
from .files import add_file_commands
from .index import add_index_commands
from .stream import add_stream_commands

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frametok", description="Videos and cameras in, token streams out.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what every process does")
    sub = parser.add_subparsers(dest="command", required=True)

    add_stream_commands(sub)
    add_file_commands(sub)
    add_index_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a command whose output is piped into a reader that stops early (``| head``)
    exits quietly with code 0."""
    try:
        return _main(argv)
    except BrokenPipeError:
        quiet_stdout()
        return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "what", None) == "yolo" and args.out is None and not args.weights.endswith(".onnx"):
        parser.error("export yolo: --out DIR is required")
    try:
        return int(args.func(args))
    except PipelineError as exc:
        print(f"frametok: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except FrametokError as exc:
        print(f"frametok: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("frametok: interrupted", file=sys.stderr)
        return EXIT_OK

