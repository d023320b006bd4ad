#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU and onnxruntime-gpu, run the pipeline bench with the
# CUDA provider (and TensorRT when onnxruntime offers it), in under five minutes, and print which
# providers really ran (onnxruntime falls back to the CPU silently; the bench reads what each
# session reports). Prints one JSON object per provider set; then, when onnxconverter-common is
# installed (the export extra), the same with fp16 graphs (`frametok export ... --half` into a temporary
# folder, then `--precision fp16`).
#
#   bash bench/gpu_check.sh [MODELS_DIR] [VIDEO]
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${1:-../shared/models}
VIDEO=${2:-../shared/media/vtest.avi}
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: no GPU visible"
$PY - <<'PY'
import onnxruntime as ort
print("onnxruntime", ort.__version__, "available providers:", ort.get_available_providers())
PY
sets=("cuda,cpu")
if $PY -c "import onnxruntime as o, sys; sys.exit('TensorrtExecutionProvider' not in o.get_available_providers())"; then
  sets+=("tensorrt,cuda,cpu")
fi
for providers in "${sets[@]}"; do
  echo "== providers: $providers"
  timeout 140 $PY bench/pipeline.py --models "$MODELS" --video "$VIDEO" --streams 1,4 --frames 120 \
    --max-batch 8 --providers "$providers" || echo "bench with $providers failed or timed out ($?)"
done

# fp16: the same models converted (parity-checked against fp32 on the shared photos), then run in fp16
if $PY -c "import onnxconverter_common" 2>/dev/null; then
  HALF=$(mktemp -d)
  trap 'rm -rf "$HALF"' EXIT
  MEDIA=$(dirname "$VIDEO")
  samples=()
  for f in bus.jpg zidane.jpg chelsea.png coffee.png; do
    [ -f "$MEDIA/$f" ] && samples+=(--sample "$MEDIA/$f")
  done
  if timeout 120 $PY -m frametok export yolo "$MODELS/yolov8n_coco.onnx" --out "$HALF" --half "${samples[@]}" &&
     timeout 120 $PY -m frametok export encoder "$MODELS/dinov2_vits14.onnx" --out "$HALF" --prefix-tokens 1 \
       --context cls --half "${samples[@]}"; then
    for providers in "${sets[@]}"; do
      echo "== providers: $providers, precision fp16"
      timeout 140 $PY bench/pipeline.py --models "$HALF" --video "$VIDEO" --streams 1,4 --frames 120 \
        --max-batch 8 --providers "$providers" --precision fp16 || echo "fp16 bench with $providers failed ($?)"
    done
  else
    echo "fp16 export failed: no fp16 bench"
  fi
else
  echo "onnxconverter-common not installed (pip install 'frametok[export]'): no fp16 bench"
fi
