import sys

import frametok


def test_all_is_pinned() -> None:
    assert sorted(frametok.__all__) == sorted([
        "PROTOCOL_VERSION", "Config", "ConfigError", "Detections", "EndOfStream", "ExportError",
        "FrametokError", "GapReport", "Message", "ModelError", "PipelineError", "ProtocolError",
        "RunSummary", "SourceError", "StatusMessage", "StreamInfo", "Subscriber", "Timestamps",
        "TokenPacket", "__version__", "decode", "encode", "load_config", "run_pipeline",
        "Hit", "Index", "IndexOptions", "Indexer", "open_index",
    ])
    for name in frametok.__all__:
        assert hasattr(frametok, name), name


def test_index_all_is_pinned() -> None:
    import frametok.index

    assert sorted(frametok.index.__all__) == sorted([
        "SCHEMA_VERSION", "ClassFilter", "Hit", "Index", "IndexOptions", "IndexReport", "Indexer",
        "RecordReport", "open_index", "parse_filter", "record", "write_thumbs",
    ])


def test_optional_stores_are_imported_lazily() -> None:
    import subprocess

    code = "import sys, frametok; print(','.join(m for m in ('lancedb', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_error_tree() -> None:
    for err in (frametok.ConfigError, frametok.SourceError, frametok.ModelError, frametok.ProtocolError,
                frametok.PipelineError, frametok.ExportError):
        assert issubclass(err, frametok.FrametokError)
    assert issubclass(frametok.ExportError, frametok.ModelError)


def test_runtime_imports_no_torch() -> None:
    import subprocess

    code = ("import sys, frametok, frametok.cli, frametok.streamer.worker.process, frametok.exporters, frametok.demo;"
            "print(','.join(m for m in ('torch','ultralytics','timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
