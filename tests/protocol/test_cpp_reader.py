"""The C++17 reader (clients/cpp, written from docs/protocol.md) against the Python decoders and a real run.

(a) ``frametok-read --vector`` decodes every valid test vector to the same content as the vectors and the
independent Python reader, and rejects every invalid one with the same code; (b) it rebuilds patch grids
from key/delta/skip updates bit for bit as the protocol's arithmetic says (float32 sum, stored back at
float16 with round-to-nearest-even); (c) live: a real ``frametok run`` read losslessly by the C++ reader
and the Python SDK at the same time, and by a live (SUB) C++ reader: every frame exactly once, the same
rebuilt grids as the SDK's.

The binary is built with CMake (into ``build/cpp-tests``, or ``$FRAMETOK_CPP_BUILD``); without cmake,
a compiler or the development packages (libzmq3-dev, cppzmq-dev, nlohmann-json3-dev) the tests skip and
say so, unless ``FRAMETOK_REQUIRE_CPP=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frametok import Subscriber, TokenPacket, encode
from frametok.models.compression import GridUpdate

from ..conftest import ROOT, free_endpoint
from . import make_vectors
from .reader import Malformed, read

SOURCE = ROOT / "clients" / "cpp"
VECTORS = make_vectors.VECTORS_DIR
BUILD = Path(os.environ.get("FRAMETOK_CPP_BUILD", ROOT / "build" / "cpp-tests"))
REQUIRED = os.environ.get("FRAMETOK_REQUIRE_CPP") == "1"
PACKAGES = "cmake, a C++17 compiler and libzmq3-dev, cppzmq-dev, nlohmann-json3-dev"


def _unavailable(why: str) -> None:
    if REQUIRED:
        pytest.fail(f"FRAMETOK_REQUIRE_CPP=1 but {why}")
    pytest.skip(f"the C++ reader cannot be built: {why} (needs {PACKAGES})")


@pytest.fixture(scope="session")
def frametok_read() -> Path:
    """The frametok-read binary, built (incrementally) from clients/cpp."""
    cmake = shutil.which("cmake")
    if cmake is None:
        _unavailable("cmake is not installed")
    assert cmake is not None
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        _unavailable("no C++ compiler (c++, g++, clang++)")
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:  # two test sessions in one checkout build one at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        configure = subprocess.run([cmake, "-S", str(SOURCE), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release"],
                                   capture_output=True, text=True, timeout=300)
        if configure.returncode != 0:  # what CMakeLists.txt requires is missing
            tail = "\n".join((configure.stdout + configure.stderr).strip().splitlines()[-6:])
            _unavailable(f"cmake could not configure clients/cpp:\n{tail}")
        build = subprocess.run([cmake, "--build", str(BUILD), "--target", "frametok-read"],
                               capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, f"clients/cpp does not compile:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    binary = BUILD / "frametok-read"
    assert binary.is_file()
    return binary


def _run(binary: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout)


def _parts(folder: Path) -> list[bytes]:
    count = len(list(folder.glob("part-*.bin")))
    return [(folder / f"part-{i}.bin").read_bytes() for i in range(count)]


def _expected(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name / "expected.json").read_text(encoding="utf-8"))


NAMES = sorted(p.name for p in VECTORS.iterdir() if p.is_dir())
VALID = [n for n in NAMES if _expected(n)["valid"]]
INVALID = [n for n in NAMES if not _expected(n)["valid"]]


def _vector_lines(binary: Path, folders: list[Path]) -> list[dict[str, Any]]:
    result = _run(binary, "--vector", *map(str, folders))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["vector"] for line in lines] == [f.name for f in folders]
    return lines


@pytest.fixture(scope="module")
def decoded(frametok_read: Path) -> dict[str, dict[str, Any]]:
    """Every vector through one run of frametok-read --vector: name -> its output line."""
    return {line["vector"]: line for line in _vector_lines(frametok_read, [VECTORS / n for n in NAMES])}


# --------------------------------------------------------------------------- (a) the test vectors


def test_every_vector_is_decoded(decoded: dict[str, dict[str, Any]]) -> None:
    assert sorted(decoded) == NAMES and len(VALID) >= 10 and len(INVALID) >= 9


@pytest.mark.parametrize("name", VALID)
def test_cpp_decodes_valid_vector_like_python(decoded: dict[str, dict[str, Any]], name: str) -> None:
    line = decoded[name]
    assert line["valid"] is True, line.get("detail")
    assert line["content"] == _expected(name)["content"]
    assert line["content"] == read(_parts(VECTORS / name))  # the independent Python reader


@pytest.mark.parametrize("name", INVALID)
def test_cpp_rejects_invalid_vector_with_its_code(decoded: dict[str, dict[str, Any]], name: str) -> None:
    line = decoded[name]
    code = _expected(name)["error"]
    assert line["valid"] is False and line["error"] == code, line
    with pytest.raises(Malformed) as info:
        read(_parts(VECTORS / name))
    assert info.value.code == code


def test_cpp_mask_areas_are_pythons(decoded: dict[str, dict[str, Any]]) -> None:
    """(1.3) The C++ reader's mask areas (det_mask's pixels in the source frame, §5.3) are the SDK's and the
    independent Python reader's, pixel for pixel in count."""
    from frametok import decode

    from .reader import mask_area

    packet = decode(_parts(VECTORS / "frame_masks"))
    assert isinstance(packet, TokenPacket) and packet.detections is not None
    want = packet.detections.mask_areas(packet.size_wh).tolist()
    assert len(want) == 3 and min(want) > 100
    assert decoded["frame_masks"]["mask_areas"] == want
    assert want == [mask_area(_expected("frame_masks")["content"], i) for i in range(3)]
    assert decoded["frame_masks_none_found"]["mask_areas"] == []
    assert "mask_areas" not in decoded["frame_detections_f16"]


# --------------------------------------------------------------------------- (b) grid rebuilding


def _data(line: dict[str, Any], dtype: str) -> np.ndarray[Any, Any]:
    grid = line["patch_grid"]
    assert grid is not None and grid["dtype"] == dtype
    return np.array(grid["data"], np.float64).astype(dtype)


def test_cpp_rebuilds_the_vector_grids_key_delta_skip(frametok_read: Path) -> None:
    names = ["frame_grid_key", "frame_grid_delta", "frame_grid_skip"]
    lines = _vector_lines(frametok_read, [VECTORS / n for n in names])
    key, delta, _ = (read(_parts(VECTORS / n))["buffers"] for n in names)
    want = np.array(key["patches"]["data"], np.float16)
    assert np.array_equal(_data(lines[0], "float16"), want)
    bias = np.array(delta["patch_bias"]["data"], np.float16).astype(np.float32)
    want = (want.astype(np.float32) + bias).astype(np.float16)
    flat = want.reshape(-1, want.shape[-1])
    flat[delta["patch_index"]["data"]] = np.array(delta["patch_values"]["data"], np.float16)
    assert np.array_equal(_data(lines[1], "float16"), want)
    assert np.array_equal(_data(lines[2], "float16"), want)  # skip: unchanged
    assert lines[2]["patch_grid"]["crc32"] == zlib.crc32(want.tobytes())


def test_cpp_has_no_grid_for_a_delta_without_its_key(frametok_read: Path) -> None:
    lines = _vector_lines(frametok_read, [VECTORS / "frame_grid_delta", VECTORS / "frame_grid_skip"])
    assert [line["patch_grid"] for line in lines] == [None, None]


def _grid_vectors(root: Path) -> tuple[list[Path], list[np.ndarray[Any, Any]]]:
    """A float16 key holding every finite float16 value, then deltas whose biases (float32, float16) make
    the float32 sums land on ties, subnormals and beyond float16's range; the grids numpy computes."""
    rng = np.random.default_rng(14)
    bits = np.arange(65536, dtype=np.uint16).view(np.float16)
    grid = np.where(np.isfinite(bits), bits, np.float16(0)).reshape(8, 8, 1024)
    half_ulps = np.ldexp(np.float32(1), rng.integers(-26, 6, 1024)).astype(np.float32)  # ties of small values
    biases = [
        np.where(rng.random(1024) < 0.5, half_ulps, rng.standard_normal(1024).astype(np.float32) * 1e4),
        (rng.standard_normal(1024) * 1e-5).astype(np.float16),  # a float16 bias: subnormal sums
    ]
    updates = [GridUpdate("key", 0, (8, 8), values=grid)]
    wants = [grid]
    for n, bias in enumerate(biases, start=1):
        index = np.array([3, 60], np.int32)
        values = rng.standard_normal((2, 1024)).astype(np.float16)
        updates.append(GridUpdate("delta", n, (8, 8), index=index, values=values, bias=bias))
        with np.errstate(over="ignore"):  # some sums leave float16's range: inf, as the protocol's cast gives
            moved = (wants[-1].astype(np.float32) + bias.astype(np.float32)).astype(np.float16)
        moved.reshape(64, 1024)[index] = values
        wants.append(moved)
    folders = []
    for n, update in enumerate(updates):
        packet = TokenPacket(stream_id="g", frame_index=n, pts_s=None, size_wh=(64, 64), policy="file", dropped=0,
                             seq=n, grid_update=update)
        folder = root / f"grid_{n}"
        folder.mkdir()
        for i, part in enumerate(encode(packet)):
            (folder / f"part-{i}.bin").write_bytes(bytes(part))
        folders.append(folder)
    return folders, wants


def test_cpp_grid_arithmetic_is_bit_exact(frametok_read: Path, tmp_path: Path) -> None:
    folders, wants = _grid_vectors(tmp_path)
    assert np.isinf(wants[1]).any() and (np.abs(wants[2][np.isfinite(wants[2])]) < 6.1e-5).any()
    for line, want in zip(_vector_lines(frametok_read, folders), wants, strict=True):
        assert line["valid"] is True, line.get("detail")
        grid = line["patch_grid"]
        assert grid["shape"] == [8, 8, 1024]
        if grid["crc32"] != zlib.crc32(want.tobytes()):
            got = np.array([np.nan if v is None else v for v in np.ravel(grid["data"])]).astype(np.float16)
            wrong = np.flatnonzero(got.view(np.uint16) != want.ravel().view(np.uint16))
            pytest.fail(f"{line['vector']}: {wrong.size} values differ, e.g. at {wrong[:5].tolist()}: "
                        f"{got[wrong[:5]].tolist()} vs {want.ravel()[wrong[:5]].tolist()}")


def test_usage_errors_exit_2(frametok_read: Path) -> None:
    for args in ([], ["--vector"], ["tcp://127.0.0.1:1", "--bogus"], ["tcp://127.0.0.1:1", "--stream", "é"]):
        result = _run(frametok_read, *args)
        assert result.returncode == 2 and "usage: frametok-read" in result.stderr, args


# --------------------------------------------------------------------------- (c) a real run


class _Lines:
    """A running frametok-read: its stdout lines as they come, and its exit."""

    def __init__(self, binary: Path, *args: str) -> None:
        self.proc = subprocess.Popen([str(binary), *args, "--json", "--summary", "--timeout", "180"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.lines: list[dict[str, Any]] = []
        self.err: list[str] = []
        # each pipe read by a thread of its own, and only by it (communicate() would also read stdout and
        # take lines from under the pump: the tail of the output, the eos, went missing so)
        threading.Thread(target=self._pump, daemon=True).start()
        self._err_pump = threading.Thread(target=self._pump_err, daemon=True)
        self._err_pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.queue.put(line)
        self.queue.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        self.err.extend(self.proc.stderr)

    def first(self, timeout_s: float, run: subprocess.Popen[str]) -> dict[str, Any]:
        """Wait for its first line (it has joined the publisher), failing at once should ``run`` end first."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.queue.get(timeout=0.5)
                break
            except queue.Empty:
                if run.poll() is not None:
                    pytest.fail(f"frametok run exited ({run.returncode}) before a subscriber joined:\n"
                                f"{run.communicate()[1][-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"frametok-read printed nothing in {timeout_s:.0f} s")
        assert line is not None, self.finish()
        self.lines.append(json.loads(line))
        return self.lines[0]

    def finish(self, timeout_s: float = 180) -> dict[str, Any]:
        """Wait for the exit; its summary (stderr)."""
        self.proc.wait(timeout=timeout_s)
        while (line := self.queue.get(timeout=timeout_s)) is not None:  # stdout read to its end
            self.lines.append(json.loads(line))
        self._err_pump.join(timeout_s)  # stderr read to its end
        err = "".join(self.err)
        assert self.proc.returncode == 0, err
        return json.loads(err.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _sdk_grids(sub: Subscriber) -> Iterator[tuple[int, np.ndarray[Any, Any] | None]]:
    for msg in sub:
        if isinstance(msg, TokenPacket):
            yield msg.frame_index, None if msg.patch_tokens is None else np.ascontiguousarray(msg.patch_tokens)


def test_live_run_read_by_cpp_and_the_sdk_at_once(frametok_read: Path, shared_models: Path,
                                                  shared_media: Path) -> None:
    publish, lossless = free_endpoint(), free_endpoint()
    run = subprocess.Popen(
        [sys.executable, "-m", "frametok", "run", "--source", f"cam={shared_media / 'vtest_small_3s.mp4'}",
         "--models", str(shared_models), "--publish", publish, "--lossless-endpoint", lossless,
         "--wait-subscribers", "3", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    readers: list[_Lines] = []
    try:
        # one subscriber joins after the other: each gets its info before the next arrives
        cpp = _Lines(frametok_read, lossless, "--lossless", "--credit", "8")  # credit in batches of 4
        readers.append(cpp)
        assert cpp.first(180, run)["kind"] == "info"
        live = _Lines(frametok_read, publish)
        readers.append(live)
        assert live.first(60, run)["kind"] == "info"
        with Subscriber(lossless, mode="lossless", timeout_s=180) as sub:
            sdk = dict(_sdk_grids(sub))
            sdk_gaps = sum(g.missing for g in sub.gaps.values())
        summary, live_summary = cpp.finish(), live.finish()
        out, err = run.communicate(timeout=180)
    finally:
        for reader in readers:
            reader.kill()
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    frames = [line for line in cpp.lines if line["kind"] == "frame"]
    total = len(frames)
    assert total == 30 and f"{total} packets" in out
    # lossless: every frame exactly once, in order, nothing missed, and the stream's eos
    assert [f["frame"] for f in frames] == list(range(total))
    assert summary["missing"] == 0 and summary["malformed"] == 0 and summary["unsynced"] == 0
    assert summary["frames"] == total and summary["ended"] == ["cam"]
    assert [line["frames"] for line in cpp.lines if line["kind"] == "eos"] == [total]
    # (1.2) every info names the worker serving the stream and every stream of the run (the hub fills it)
    infos = [line for line in cpp.lines if line["kind"] == "info"]
    assert infos and all(i["streams"] == ["cam"] and i["worker"] == 0 for i in infos), infos
    assert sorted(sdk) == list(range(total)) and sdk_gaps == 0
    # the grids are compressed (keys and deltas), and C++ rebuilds each as the SDK does, bit for bit
    kinds = {f["grid"]["kind"] for f in frames}
    assert "key" in kinds and "delta" in kinds
    for f in frames:
        mine, theirs = f["patch_grid"], sdk[f["frame"]]
        assert mine is not None and theirs is not None, f["frame"]
        assert mine["shape"] == list(theirs.shape) and mine["dtype"] == theirs.dtype.name
        assert mine["crc32"] == zlib.crc32(theirs.tobytes()), (f["frame"], mine["sum"], float(theirs.sum(np.float64)))
        assert mine["sum"] == pytest.approx(float(theirs.sum(dtype=np.float64)), rel=1e-9)
    # live: what it got (it may lose messages, it counts them) rebuilt to the same grids, and it ended
    live_frames = [line for line in live.lines if line["kind"] == "frame"]
    assert live_frames and live_summary["ended"] == ["cam"] and live_summary["malformed"] == 0
    by_frame = {f["frame"]: f["patch_grid"] for f in frames}
    for f in live_frames:
        if f["patch_grid"] is not None:
            assert f["patch_grid"]["crc32"] == by_frame[f["frame"]]["crc32"], f["frame"]
    assert live_summary["missing"] > 0 or [f["frame"] for f in live_frames] == list(range(total))
