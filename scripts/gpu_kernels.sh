#!/usr/bin/env bash
# One device-machine call: every kernel seam's reference against its fused Pallas (Triton)
# implementation on one GPU, at Gemma-2-2B and Gemma 3 1B / 4B shapes (python -m
# bin.bench_kernels: attention per layer kind on full and packed-scoring rows, forward and
# forward + backward, over a few tile sizes; the SAE statistics at Gemma Scope 16k); then,
# unless MODEL_ROWS is empty, bin.bench's model rows on Gemma-2-2B's shape (ours only) with the
# seams forced to the reference and then to the fused Triton kernels. Everything lands
# in $OUT; the tables end the output. The timeouts (330 s + 2 x 130 s) keep it inside one
# 10-minute device call; MODEL_ROWS= (empty) runs the kernel rows alone.
#   OUT=/tmp/out scripts/gpu_kernels.sh [extra bin.bench_kernels flags]
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_kernels_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import jax, sys; print('python', sys.version.split()[0], 'jax', jax.__version__); print(jax.devices())" | tee -a "$OUT/gpu.txt"
timeout "${KERNELS_TIMEOUT:-330}" $PY -m bin.bench_kernels --platform=gpu \
    --json="$OUT/kernels.json" "$@" 2>&1 | grep -v -i "warn" | tee "$OUT/kernels.log"
status=${PIPESTATUS[0]}
MODEL_ROWS=${MODEL_ROWS-residuals,analysis,scoring}
if [ -n "$MODEL_ROWS" ]; then
  for impl in reference pallas_triton; do
    echo "## XLING_ATTENTION=$impl XLING_SAE_STATS=$impl (ours only)" | tee -a "$OUT/model.log"
    XLING_ATTENTION=$impl XLING_SAE_STATS=$impl timeout "${MODEL_TIMEOUT:-130}" $PY -m bin.bench \
        --platform=gpu --config=gemma2_2b --hf=false --rows="$MODEL_ROWS" \
        --json="$OUT/model_$impl.json" 2>&1 | grep "^|" | tee -a "$OUT/model.log"
  done
fi
exit "$status"
