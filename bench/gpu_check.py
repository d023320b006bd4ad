"""The Python half of bench/gpu_check.sh (run that; its header says how). Subcommands:

    wheels                      name==version of each wheel the GPU machine lacks (frametok's core dependencies,
                                the torch extra and what they need, minus what the device image has)
    strip SRC DST               DST: SRC's graph with its large float initializers emptied (shape, dtype, mean
                                and std kept): DINOv2's 88 MB do not fit a 64 MiB call
    restore SKELETON DST        DST: the skeleton's initializers drawn again (seeded normal, each at its tensor's
                                mean and std): the same graph, op for op, with random weights (speed, not tokens)
    measure --models DIR ...    the measurements; prints ONE JSON object (also $OUT/gpu_check.json when OUT is set)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRIP_MIN_ELEMENTS = 4096

# the device image's Python packages (the device tool's KINDS.md, read 2026-11-17): carried only when missing
_IMAGE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal
annotated-doc anyio attrs botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox
etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-
cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-
cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-
curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-
nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
IMAGE_PACKAGES = frozenset(_IMAGE_LIST.split())
# carried although the image has them: pydantic 2.14 needs a recent typing-extensions
CARRY_ANYWAY = {"typing-extensions"}
# imported by the runtime before pyproject names them (the wire format's header parser)
EXTRA_ROOTS = ("msgspec",)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# the device's Python, for environment markers (pyzmq needs cffi only on PyPy, ...)
DEVICE_MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
                  "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
                  "platform_machine": "x86_64", "os_name": "posix", "extra": ""}


def _req_name(req: str) -> str | None:
    """The distribution a Requires-Dist / dependency line names; None when its marker excludes the device's
    Python (an extra's requirement, a PyPy-only one, ...)."""
    from packaging.requirements import Requirement

    parsed = Requirement(req)
    if parsed.marker is not None and not parsed.marker.evaluate(DEVICE_MARKERS):
        return None
    return _norm(parsed.name)


def wheels() -> list[str]:
    """name==version (this environment's versions) of the wheels the device image lacks."""
    from importlib import metadata

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = [*project["dependencies"], *project["optional-dependencies"]["torch"], *EXTRA_ROOTS]
    todo = [n for n in (_req_name(r) for r in roots) if n]
    seen: set[str] = set()
    out: list[str] = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in IMAGE_PACKAGES and name not in CARRY_ANYWAY:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            print(f"gpu_check: {name} is not installed here: cannot pin its version (skipped)", file=sys.stderr)
            continue
        out.append(f"{name}=={dist.version}")
        todo += [n for n in (_req_name(r) for r in dist.requires or []) if n]
    return sorted(out)


# --------------------------------------------------------------------------- the DINOv2 skeleton


def strip(src: Path, dst: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    stripped = 0
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and arr.size >= STRIP_MIN_ELEMENTS:
            stats = {"mean": float(arr.mean()), "std": float(arr.std()), "dtype": str(arr.dtype)}
            name, dims, dtype = init.name, list(init.dims), init.data_type
            init.Clear()
            init.name, init.data_type, init.doc_string = name, dtype, "frametok-skeleton " + json.dumps(stats)
            init.dims.extend(dims)
            stripped += arr.size
    onnx.save(model, str(dst))
    print(f"{dst}: {stripped:,} weights stripped, {dst.stat().st_size:,} bytes", file=sys.stderr)


def restore(skeleton: Path, dst: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(skeleton))
    filled = 0
    for i, init in enumerate(model.graph.initializer):
        if not init.doc_string.startswith("frametok-skeleton "):
            continue
        stats = json.loads(init.doc_string.removeprefix("frametok-skeleton "))
        rng = np.random.default_rng(i)
        arr = rng.normal(stats["mean"], stats["std"], size=tuple(init.dims)).astype(stats["dtype"])
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
        filled += arr.size
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    print(f"{dst}: {filled:,} weights drawn, {dst.stat().st_size:,} bytes", file=sys.stderr)


# --------------------------------------------------------------------------- measurements


class _Stopped(BaseException):
    """SIGTERM (the shell script's timeout): the measurements stop, the JSON is still printed."""


def _on_term(signum: int, frame: Any) -> None:
    raise _Stopped(f"stopped by signal {signum} (GPU_CHECK_TIMEOUT)")


def _step(results: dict[str, Any], errors: list[str], name: str, fn: Callable[[], Any]) -> Any:
    """Run one measurement; a failure is recorded (and printed) and the others still run."""
    t0 = time.perf_counter()
    print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
    try:
        value = fn()
    except BaseException as exc:  # SystemExit from a failed run too: record it, go on
        if isinstance(exc, (KeyboardInterrupt, _Stopped)):
            errors.append(f"{name}: {exc}")
            results[name] = {"error": str(exc)}
            raise
        msg = f"{type(exc).__name__}: {exc}"
        print(f"gpu_check: {name} FAILED: {msg}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        errors.append(f"{name}: {msg}")
        results[name] = {"error": msg}
        return None
    results[name] = value
    print(f"gpu_check: {name} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return value


def environment(device: str) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    env: dict[str, Any] = {
        "python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count(),
        "gpu_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers(),
        "cpus": os.cpu_count(), "mode": device,
    }
    from importlib import metadata

    for dist in ("av", "pyzmq", "onnx2torch", "pydantic", "msgspec", "supervision"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = "missing"
    try:
        env["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as exc:
        env["nvidia_smi"] = f"unavailable ({exc})"
    if device == "cuda" and not env["cuda_available"]:
        raise RuntimeError("GPU_CHECK_DEVICE=cuda but PyTorch sees no CUDA device (set GPU_CHECK_DEVICE=cpu for a "
                           "dry run)")
    return env


def decode_ceiling(video: Path, limit_s: float) -> dict[str, Any]:
    """Decode-only frames/s of ``video``: PyAV alone (threaded decode + RGB conversion), and frametok's decoder
    (what each producer runs: the same plus its checks). One stream's ceiling; producers decode in parallel."""
    import av

    from frametok.streamer.source.decode import decode_frames

    t0, n = time.perf_counter(), 0
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        size = (stream.codec_context.width, stream.codec_context.height)
        codec = stream.codec_context.name
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
            if time.perf_counter() - t0 > limit_s:
                break
    pyav = n / (time.perf_counter() - t0)
    t0, m = time.perf_counter(), 0
    for _ in decode_frames(str(video)):
        m += 1
        if time.perf_counter() - t0 > limit_s:
            break
    ours = m / (time.perf_counter() - t0)
    return {"video": video.name, "codec": codec, "size_wh": size, "frames": n, "pyav_rgb_fps": round(pyav, 1),
            "frametok_decode_fps": round(ours, 1)}


def _photo(path: Path) -> Any:
    import cv2

    bgr = cv2.imread(str(path))
    if bgr is None:
        raise FileNotFoundError(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def parity(models: Path, media: Path, threads: int) -> dict[str, Any]:
    """The torch provider (on this machine's GPU, or CPU) against onnxruntime's CPU provider on the same photos:
    the fp32 gates of tests/models/test_torch_provider.py."""
    from frametok.exporters._common import box_iou
    from frametok.models.detector import Detector
    from frametok.models.encoder import Encoder
    from frametok.models.session import create_session
    from frametok.registry import resolve_model

    df = resolve_model("yolov8n", "detector", [models], allow_online=False)
    ef = resolve_model("dinov2_vits14", "encoder", [models], allow_online=False)
    photos = [p for p in (media / "bus.jpg", media / "zidane.jpg") if p.exists()]
    if not photos:
        raise FileNotFoundError(f"no bus.jpg / zidane.jpg in {media}")
    d_ort = Detector(df.manifest, create_session(df, ("cpu",), threads))  # type: ignore[arg-type]
    d_pt = Detector(df.manifest, create_session(df, ("torch",), threads))  # type: ignore[arg-type]
    out: dict[str, Any] = {"provider": d_pt.session.get_providers()[0], "detector": {}, "encoder": {}}
    worst_iou, worst_score, max_box, max_cls = 1.0, 0.0, 0.0, 0.0
    counts = []
    for p in photos:
        batch = np.empty((1, 3, *d_ort.input_hw), np.float32)
        info = d_ort.preprocess(_photo(p), batch[0])
        a, b = d_ort.infer(batch), d_pt.infer(batch)
        max_box = max(max_box, float(np.abs(a[:, :4] - b[:, :4]).max()))
        max_cls = max(max_cls, float(np.abs(a[:, 4:] - b[:, 4:]).max()))
        da, db = d_ort.postprocess(a[0], info), d_pt.postprocess(b[0], info)
        counts.append([len(da), len(db)])
        for x, y in ((da, db), (db, da)):
            for box, cls, score in zip(x.xyxy, x.class_id, x.score, strict=True):
                same = np.flatnonzero(y.class_id == cls)
                ious = box_iou(box[None], y.xyxy[same])[0] if len(same) else np.zeros(1)
                k = int(np.argmax(ious))
                worst_iou = min(worst_iou, float(ious[k]))
                worst_score = max(worst_score, abs(float(score) - float(y.score[same[k]])) if len(same) else 1.0)
    out["detector"] = {"photos": [p.name for p in photos], "detections_ort_torch": counts,
                       "raw_box_max_abs": round(max_box, 5), "raw_score_max_abs": round(max_cls, 6),
                       "min_iou": round(worst_iou, 4), "max_score_diff": round(worst_score, 5),
                       "pass": worst_iou >= 0.9 and worst_score <= 0.02 and all(c[0] > 0 for c in counts)}
    e_ort = Encoder(ef.manifest, create_session(ef, ("cpu",), threads))  # type: ignore[arg-type]
    e_pt = Encoder(ef.manifest, create_session(ef, ("torch",), threads))  # type: ignore[arg-type]
    batch = np.empty((len(photos), 3, *e_ort.input_hw), np.float32)
    for i, p in enumerate(photos):
        e_ort.preprocess(_photo(p), batch[i])
    a, b = e_ort.infer(batch), e_pt.infer(batch)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    out["encoder"] = {"token_cosine_min": round(float(cos.min()), 6), "pass": float(cos.min()) >= 0.999}
    return out


def trim(video: Path, frames: int, out: Path) -> Path:
    """The first ``frames`` frames of ``video`` re-encoded: bench/pipeline.py's clip, so both benches read the same."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pipeline import trim_video  # type: ignore[import-not-found]

    return Path(trim_video(video, frames, out))


def models_loop(clip: Path, models: Path, max_batch: int, threads: int) -> dict[str, Any]:
    """The models alone through the torch provider on decoded frames, batch ``max_batch``: the ceiling the
    pipeline's fps is read against (pre-processing and NMS included in ``fps``, not in ``models_only_fps``)."""
    from frametok.models.detector import Detector
    from frametok.models.encoder import Encoder
    from frametok.models.session import create_session
    from frametok.registry import resolve_model
    from frametok.streamer.source.decode import decode_frames

    df = resolve_model("yolov8n", "detector", [models], allow_online=False)
    ef = resolve_model("dinov2_vits14", "encoder", [models], allow_online=False)
    det = Detector(df.manifest, create_session(df, ("torch",), threads))  # type: ignore[arg-type]
    enc = Encoder(ef.manifest, create_session(ef, ("torch",), threads))  # type: ignore[arg-type]
    frames = [f.frame_rgb for f in decode_frames(str(clip))]
    det_batch = np.empty((max_batch, 3, *det.input_hw), np.float32)
    enc_batch = np.empty((max_batch, 3, *enc.input_hw), np.float32)
    det.infer(det_batch.copy())  # warm-up at the batch shape (cuDNN picks its kernels per shape)
    enc.infer(enc_batch.copy())
    t_models = 0.0
    t0 = time.perf_counter()
    for start in range(0, len(frames), max_batch):
        chunk = frames[start:start + max_batch]
        n = len(chunk)
        infos = [det.preprocess(f, det_batch[i]) for i, f in enumerate(chunk)]
        for i, f in enumerate(chunk):
            enc.preprocess(f, enc_batch[i])
        a = time.perf_counter()
        raw = det.infer(det_batch[:n])
        tokens = enc.infer(enc_batch[:n])
        t_models += time.perf_counter() - a
        [det.postprocess(raw[i], info) for i, info in enumerate(infos)]
        enc.split(tokens)
    total = time.perf_counter() - t0
    return {"provider": det.session.get_providers()[0], "precision": [det.precision, enc.precision],
            "frames": len(frames), "max_batch": max_batch, "fps": round(len(frames) / total, 2),
            "models_only_fps": round(len(frames) / t_models, 2)}


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def pipeline(clip: Path, models: Path, streams: int, max_batch: int, threads: int, devices: list[int] | None,
             workers: int, want: str, timeout_s: float) -> dict[str, Any]:
    """``frametok run --providers torch`` on ``streams`` copies of ``clip`` (file mode: every frame), ``devices``
    as ``worker.devices`` (one worker each) or ``workers`` processes; frames/s from first to last packet."""
    from frametok import EndOfStream, StreamInfo, Subscriber, TokenPacket

    endpoint = _free_endpoint()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as cfg:
        cfg.write("worker:\n  providers: [torch]\n")
        if devices is not None:
            cfg.write(f"  devices: [{', '.join(map(str, devices))}]\n")
        else:
            cfg.write(f"  count: {workers}\n")
    args = [sys.executable, "-m", "frametok", "run", cfg.name, "--models", str(models), "--publish", endpoint,
            "--wait-subscribers", "1", "--no-progress", "--max-batch", str(max_batch), "--threads", str(threads)]
    for i in range(streams):
        args += ["--source", f"s{i}={clip}"]
    times: list[float] = []
    used: dict[str, set[str]] = {}
    ended = 0
    deadline = time.monotonic() + timeout_s
    log_path = Path(tempfile.mkstemp(prefix="gpu_check_run_", suffix=".log")[1])
    with Subscriber(endpoint, timeout_s=1.0) as sub, log_path.open("w") as log:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        try:
            while ended < streams:
                msg = sub.recv(1.0)
                if msg is None:
                    if proc.poll() is not None:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no end of stream after {timeout_s:.0f} s ({len(times)} packets)")
                    continue
                if isinstance(msg, StreamInfo):
                    for role, m in msg.models.items():
                        used.setdefault(role, set()).update(m.get("providers", []))
                elif isinstance(msg, TokenPacket):
                    times.append(time.perf_counter())
                elif isinstance(msg, EndOfStream):
                    ended += 1
            out, _ = proc.communicate(timeout=max(10.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    os.unlink(cfg.name)
    err = log_path.read_text()
    log_path.unlink()
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise RuntimeError(f"frametok run exited {proc.returncode}: {tail}")
    providers = {role: sorted(p) for role, p in used.items() if p}  # the tracker has none
    flat = [p for ps in providers.values() for p in ps]
    if not flat or not all(p.startswith(f"torch:{want}") for p in flat):
        raise RuntimeError(f"the models did not run on torch:{want}: {providers}")
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    busy = re.search(r"models busy (\d+)%", summary)
    return {"streams": streams, "workers": len(devices) if devices is not None else workers, "devices": devices,
            "packets": len(times), "fps": round(fps, 2), "providers": providers,
            "models_busy": int(busy.group(1)) / 100 if busy else None, "summary": summary}


def measure(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {"check": "frametok gpu_check", "encoder_weights": args.encoder_weights}
    errors: list[str] = []
    t0 = time.perf_counter()
    signal.signal(signal.SIGTERM, _on_term)
    with contextlib.suppress(_Stopped):  # the step that was running is in errors
        _measure(args, results, errors)
    results["headline"] = _headline(results)
    results["errors"] = errors
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(results, indent=1, default=str)
    print(text, flush=True)
    out = os.environ.get("OUT")
    if out and Path(out).is_dir():
        (Path(out) / "gpu_check.json").write_text(text + "\n")
    return 1 if errors else 0


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the check is for, in one place (None where a step failed or did not run)."""
    def get(*keys: str) -> Any:
        node: Any = results
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    runs = get("pipeline") or {}
    multi = get("multi_gpu") or {}
    return {
        "provider": get("models_loop", "provider"),
        "pipeline_fps": {k.split("_")[0] + "_streams": v.get("fps") for k, v in runs.items() if isinstance(v, dict)},
        "models_loop_fps": get("models_loop", "fps"),
        "decode_ceiling_fps_per_stream": get("decode", "frametok_decode_fps"),
        "pyav_decode_fps": get("decode", "pyav_rgb_fps"),
        "parity_pass": [get("parity", "detector", "pass"), get("parity", "encoder", "pass")],
        "multi_gpu": {"gpus": multi.get("gpus"), "scaling_ratio": multi.get("scaling_ratio"),
                      "skipped": multi.get("skipped")},
    }


def _measure(args: argparse.Namespace, results: dict[str, Any], errors: list[str]) -> None:
    want = args.device
    env = _step(results, errors, "environment", lambda: environment(want))
    if env is None and want == "cuda":
        return  # no GPU (or no torch): nothing below would measure what this check is for
    gpus = int(env["gpus"]) if env and want == "cuda" else 0
    _step(results, errors, "decode", lambda: decode_ceiling(args.video, args.decode_limit_s))
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        clip = _step(results, errors, "clip", lambda: str(trim(args.video, args.frames, Path(tmp) / "clip.mp4")))
        if clip is not None:
            clip_path = Path(clip)
            results["clip"] = {"frames_per_stream": args.frames, "from": args.video.name}
            _step(results, errors, "models_loop", lambda: models_loop(clip_path, args.models, args.max_batch,
                                                                       args.threads))
            # known (CPU dry runs): this in-process loop ran 5-20x slower than a fresh process's (2.9 fps) and
            # the pipeline; cause not found yet: read the pipeline figures, not this one, until it is
            _step(results, errors, "parity", lambda: parity(args.models, args.media, args.threads))
            run: dict[str, Any] = {}
            results["pipeline"] = run
            streams = [int(s) for s in args.streams.split(",")]
            for s in streams:
                _step(run, errors, f"{s}_streams", functools.partial(
                    pipeline, clip_path, args.models, s, args.max_batch, args.threads, [0], 1, want,
                    args.run_timeout_s))
            # 1 vs all GPUs: worker.devices [0] against [0..n-1] (one worker each), the same streams
            all_devices = list(range(gpus)) if gpus else list(range(args.simulate_devices))
            multi: dict[str, Any] = {"gpus": gpus, "simulated_on_cpu": not gpus,
                                     "streams": max(streams[-1], 2 * len(all_devices))}
            results["multi_gpu"] = multi
            if len(all_devices) < 2:
                multi["skipped"] = f"{gpus} GPU visible: 1 vs all GPUs is the same run"
                _step(multi, errors, "two_workers_one_gpu", lambda: pipeline(
                    clip_path, args.models, multi["streams"], args.max_batch, args.threads, None, 2, want,
                    args.run_timeout_s))
            else:
                one = _step(multi, errors, "one_gpu", lambda: pipeline(
                    clip_path, args.models, multi["streams"], args.max_batch, args.threads, [0], 1, want,
                    args.run_timeout_s))
                every = _step(multi, errors, "all_gpus", lambda: pipeline(
                    clip_path, args.models, multi["streams"], args.max_batch, args.threads, all_devices, 1, want,
                    args.run_timeout_s))
                if one and every and one["fps"]:
                    multi["scaling_ratio"] = round(every["fps"] / one["fps"], 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("wheels")
    for name in ("strip", "restore"):
        p = sub.add_parser(name)
        p.add_argument("src", type=Path)
        p.add_argument("dst", type=Path)
    m = sub.add_parser("measure")
    m.add_argument("--models", type=Path, required=True)
    m.add_argument("--media", type=Path, required=True)
    m.add_argument("--video", type=Path, required=True)
    m.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    m.add_argument("--frames", type=int, default=300, help="frames per stream (the video is trimmed)")
    m.add_argument("--streams", default="1,4", help="stream counts, one worker on device 0")
    m.add_argument("--max-batch", type=int, default=8)
    m.add_argument("--threads", type=int, default=0)
    m.add_argument("--decode-limit-s", type=float, default=20.0)
    m.add_argument("--run-timeout-s", type=float, default=150.0)
    m.add_argument("--simulate-devices", type=int, default=2,
                   help="without a GPU: the 'all GPUs' run uses this many workers on the CPU (devices 0..N-1)")
    m.add_argument("--encoder-weights", default="real")
    args = parser.parse_args()
    if args.cmd == "wheels":
        print("\n".join(wheels()))
        return 0
    if args.cmd == "strip":
        strip(args.src, args.dst)
        return 0
    if args.cmd == "restore":
        restore(args.src, args.dst)
        return 0
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
