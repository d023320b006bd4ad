#!/usr/bin/env bash
# GPU check that can run on the GPU machine this workplace lends (one H200; torch 2.11 + CUDA 13, CuPy, OpenCV
# headless, onnxruntime 1.30 CPU build; no onnxruntime-gpu, pyzmq or PyAV; nothing to download; 64 MiB carried
# per call): the `torch` execution provider (frametok/models/torch_session.py) runs the same ONNX graphs on CUDA.
# Prints ONE JSON object (stdout; progress on stderr; also $OUT/gpu_check.json and $OUT/gpu_check.log when OUT is
# set): environment, decode ceiling (decode-only fps of vtest.avi: PyAV alone and frametok's decoder), parity of
# the torch provider against onnxruntime's CPU provider on bus.jpg/zidane.jpg, the models alone through the torch
# provider, pipeline fps (`frametok run --providers torch`, one stream and several, one worker on device 0), and
# 1 vs all GPUs (worker.devices [0] vs [0..n-1], one worker per GPU; with one GPU: two workers sharing it).
#
# Steps, each checked (a failed one is named in the JSON's "errors"; the script exits 1 then):
#   1. here, once (needs pip and ../shared):   bash bench/gpu_check.sh prepare [MODELS_DIR] [MEDIA_DIR]
#      downloads the wheels the device image lacks (frametok's core dependencies and the torch extra, minus the
#      image's packages: see bench/gpu_check.py wheels) for CPython 3.12 manylinux x86-64, copies YOLOv8n (real
#      weights), vtest.avi and the two photos, and DINOv2 ViT-S/14 as a skeleton (its graph without its 88 MB of
#      weights, which cannot travel beside PyAV's 36 MB wheel: redrawn there at each tensor's mean/std, so its
#      speed is DINOv2's and its tokens are not) into artifacts/gpu_check/ (git-ignored), then checks the sizes.
#   2. on the GPU machine (device tool):  run(command="bash bench/gpu_check.sh", carry=["artifacts/gpu_check"],
#      timeout_s=480): installs the wheels with pip --target into a temporary folder, checks the imports, rebuilds
#      DINOv2, measures (about 3-4 minutes).
#   3. dry run on a machine without a GPU:  GPU_CHECK_DEVICE=cpu PYTHON=.venv/bin/python bash bench/gpu_check.sh
#      the same steps on the CPU with small counts (the wheels' tags are checked against CPython 3.12 manylinux
#      rather than installed when this Python is not 3.12; the venv's packages run).
#
# Environment: GPU_CHECK_DEVICE (cuda | cpu, default cuda), PYTHON (default python3), GPU_CHECK_TIMEOUT (seconds
# for the measurements, default 420 on cuda, 1200 on cpu: past it the JSON holds what was measured),
# GPU_CHECK_FRAMES / GPU_CHECK_STREAMS / GPU_CHECK_BATCH to change the runs.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
ASSETS=$ROOT/artifacts/gpu_check
PY=${PYTHON:-python3}
LIMIT_BYTES=$((64 * 1024 * 1024))

die() { echo "gpu_check: ERROR: $*" >&2; exit 2; }
say() { echo "gpu_check: $*" >&2; }

tree_bytes() {  # what the device tool sends besides the carried folder: tracked and untracked-not-ignored files
  { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 stat -c %s 2>/dev/null |
    awk '{s += $1} END {print s + 0}'
}

prepare() {
  local models=${1:-../shared/models} media=${2:-../shared/media}
  for f in "$models/yolov8n_coco.onnx" "$models/dinov2_vits14.onnx" "$media/vtest.avi" "$media/bus.jpg" \
           "$media/zidane.jpg"; do
    [ -f "$f" ] || die "prepare: $f not found (give MODELS_DIR and MEDIA_DIR)"
  done
  rm -rf "$ASSETS" && mkdir -p "$ASSETS/wheels" "$ASSETS/models" "$ASSETS/media" || die "cannot write $ASSETS"
  local wheels
  wheels=$($PY bench/gpu_check.py wheels) || die "prepare: cannot list the wheels (bench/gpu_check.py wheels)"
  say "prepare: downloading $(echo "$wheels" | wc -l) wheels: $(echo "$wheels" | tr '\n' ' ')"
  # shellcheck disable=SC2086
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$ASSETS/wheels" $wheels 2>&1 | grep -v "is ignored: it is neither" >&2
  [ "${PIPESTATUS[0]}" -eq 0 ] || die "prepare: pip download failed"
  cp "$models/yolov8n_coco.onnx" "$ASSETS/models/" || die "prepare: cannot copy the detector"
  $PY bench/gpu_check.py strip "$models/dinov2_vits14.onnx" "$ASSETS/models/dinov2_vits14.skeleton.onnx" ||
    die "prepare: cannot make the DINOv2 skeleton"
  cp "$media/vtest.avi" "$media/bus.jpg" "$media/zidane.jpg" "$ASSETS/media/" || die "prepare: cannot copy media"
  local carried tree total
  carried=$(du -sb "$ASSETS" | cut -f1)
  tree=$(tree_bytes)
  total=$((carried + tree))
  ls -l "$ASSETS/wheels" "$ASSETS/models" "$ASSETS/media" | awk 'NF > 5 {printf "  %10d  %s\n", $5, $NF}' >&2
  say "prepare: carried $carried bytes + working tree $tree bytes = $total of $LIMIT_BYTES (64 MiB)"
  [ "$total" -le "$LIMIT_BYTES" ] || die "prepare: over the device tool's 64 MiB per call"
  say "prepare: done; on the GPU machine: run(command=\"bash bench/gpu_check.sh\", carry=[\"artifacts/gpu_check\"])"
}

if [ "${1:-}" = "prepare" ]; then
  shift
  prepare "$@"
  exit 0
fi

MODE=${GPU_CHECK_DEVICE:-cuda}
case "$MODE" in cuda|cpu) ;; *) die "GPU_CHECK_DEVICE: expected cuda or cpu, got '$MODE'" ;; esac
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX) || die "mktemp failed"
trap 'rm -rf "$WORK"' EXIT
LOG=/dev/null
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then LOG=$OUT/gpu_check.log; fi
exec 2> >(tee -a "$LOG" >&2)

# 1. what was carried
[ -d "$ASSETS/wheels" ] || die "$ASSETS/wheels missing: run \`bash bench/gpu_check.sh prepare\` on the machine you \
call from, and name artifacts/gpu_check in the device call's carry"
for f in models/yolov8n_coco.onnx media/vtest.avi media/bus.jpg media/zidane.jpg; do
  [ -f "$ASSETS/$f" ] || die "$ASSETS/$f missing: run \`bash bench/gpu_check.sh prepare\` again"
done
shopt -s nullglob
WHEELS=("$ASSETS"/wheels/*.whl)
[ "${#WHEELS[@]}" -gt 0 ] || die "no wheels in $ASSETS/wheels"
command -v "$PY" >/dev/null || die "python '$PY' not found (set PYTHON)"
PYVER=$($PY -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "$PY does not run"
say "mode $MODE, $PY is Python $PYVER, ${#WHEELS[@]} wheels"
if [ "$MODE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 ||
    say "nvidia-smi failed (the torch check below decides)"
fi

# 2. the wheels: installed (Python 3.12, as on the device), or their tags checked for it (a dry run elsewhere)
SITE=$WORK/site
if [ "$PYVER" = "3.12" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${WHEELS[@]}" \
    >&2 || die "pip install of the carried wheels failed"
  export PYTHONPATH=$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}
  say "wheels installed into $SITE"
else
  [ "$MODE" = cpu ] || die "the GPU check needs Python 3.12 (the device image's); $PY is $PYVER"
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$WORK/tagcheck" --python-version 3.12 \
    --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "${WHEELS[@]}" >&2 ||
    die "the carried wheels do not install for CPython 3.12 manylinux x86-64"
  say "dry run: the wheels install for CPython 3.12 manylinux ($(du -sm "$WORK/tagcheck" | cut -f1) MB); \
running on this Python's own packages"
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi

# 3. imports: the runtime, the transport, the decoder, the torch provider
$PY - >&2 <<'PY' || die "imports failed (see above): a wheel is missing from artifacts/gpu_check/wheels"
import importlib, sys
bad = []
for mod in ("zmq", "av", "pydantic", "msgspec", "supervision", "onnx", "onnx2torch", "torch", "onnxruntime", "cv2",
            "frametok.cli", "frametok.streamer.worker.process", "frametok.models.torch_session"):
    try:
        importlib.import_module(mod)
    except Exception as exc:
        bad.append(f"{mod}: {type(exc).__name__}: {exc}")
print("gpu_check: imports ok" if not bad else "gpu_check: cannot import\n  " + "\n  ".join(bad), file=sys.stderr)
sys.exit(1 if bad else 0)
PY

# 4. the models folder: YOLOv8n as carried; DINOv2 real when carried whole, else rebuilt from its skeleton
mkdir -p "$WORK/models" && cp "$ASSETS/models/yolov8n_coco.onnx" "$WORK/models/" || die "cannot stage the models"
if [ -f "$ASSETS/models/dinov2_vits14.onnx" ]; then
  cp "$ASSETS/models/dinov2_vits14.onnx" "$WORK/models/" || die "cannot stage DINOv2"
  WEIGHTS=real
else
  [ -f "$ASSETS/models/dinov2_vits14.skeleton.onnx" ] || die "no DINOv2 (whole or skeleton) in $ASSETS/models"
  $PY bench/gpu_check.py restore "$ASSETS/models/dinov2_vits14.skeleton.onnx" "$WORK/models/dinov2_vits14.onnx" ||
    die "cannot rebuild DINOv2 from its skeleton"
  WEIGHTS="random: DINOv2 ViT-S/14's graph, op for op, initializers redrawn at each tensor's mean/std (the real 88 MB \
do not fit a 64 MiB call); its speed is DINOv2's, its parity figure compares the same random weights"
fi
export FRAMETOK_CACHE=$WORK/cache PYTHONUNBUFFERED=1

# 5. the measurements: one JSON object on stdout
if [ "$MODE" = cuda ]; then
  FRAMES=${GPU_CHECK_FRAMES:-300} STREAMS=${GPU_CHECK_STREAMS:-1,4} BATCH=${GPU_CHECK_BATCH:-8}
  EXTRA=(--threads 0 --decode-limit-s 15)
else
  export CUDA_VISIBLE_DEVICES=""  # the dry run stays on the CPU even where a GPU is
  FRAMES=${GPU_CHECK_FRAMES:-12} STREAMS=${GPU_CHECK_STREAMS:-1,2} BATCH=${GPU_CHECK_BATCH:-4}
  EXTRA=(--threads 2 --decode-limit-s 5 --run-timeout-s 240)
fi
TIMEOUT=${GPU_CHECK_TIMEOUT:-$([ "$MODE" = cuda ] && echo 420 || echo 1200)}
timeout "$TIMEOUT" $PY bench/gpu_check.py measure --device "$MODE" --models "$WORK/models" \
  --media "$ASSETS/media" --video "$ASSETS/media/vtest.avi" --frames "$FRAMES" --streams "$STREAMS" \
  --max-batch "$BATCH" --encoder-weights "$WEIGHTS" "${EXTRA[@]}"
rc=$?
case $rc in
  0) say "done" ;;
  124) say "the measurements ran past $TIMEOUT s (GPU_CHECK_TIMEOUT): the JSON holds what was measured"; exit 124 ;;
  *) say "finished with failed steps (the JSON's errors name them)"; exit "$rc" ;;
esac
