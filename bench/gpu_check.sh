#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU and onnxruntime-gpu, run the pipeline bench with the
# CUDA provider (and TensorRT when onnxruntime offers it), in under five minutes, and print which
# providers really ran (onnxruntime falls back to the CPU silently; the bench reads what each
# session reports). Prints one JSON object per provider set.
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
