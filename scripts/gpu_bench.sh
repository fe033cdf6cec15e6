#!/usr/bin/env bash
# One device-machine call: the software there, then bin.bench on Gemma-2-2B's shape (both stacks,
# bf16, batch 32 x 256, the LoRA step recomputing per $LORA_REMAT, default full, to fit 80 GB)
# with a profile of our rows summarised per kernel; then our residual and analysis rows under
# the XLA flag variants named in $XLA_VARIANTS (';'-separated, informational). DUMP_HLO=1 also keeps XLA's optimised HLO of the
# residual and analysis programs. Everything lands in $OUT; the tables end the output.
#   OUT=/tmp/out scripts/gpu_bench.sh [extra bin.bench flags]
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_bench_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import jax, flax, optax, orbax.checkpoint, torch, transformers, peft, sys
print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__,
      'optax', optax.__version__, 'torch', torch.__version__, 'transformers',
      transformers.__version__, 'peft', peft.__version__); print(jax.devices())" | tee -a "$OUT/gpu.txt"
dump=""
if [ "${DUMP_HLO:-0}" = 1 ]; then
  dump="--xla_dump_to=/tmp/xla_dump --xla_dump_hlo_as_text --xla_dump_hlo_module_re=jit_residuals|jit_batch_stats"
fi
flags=$(echo ${XLA_FLAGS:-} $dump)  # XLA reads a blank XLA_FLAGS as a file name
if [ -n "$flags" ]; then export XLA_FLAGS="$flags"; else unset XLA_FLAGS; fi
timeout "${BENCH_TIMEOUT:-420}" $PY -m bin.bench --platform=gpu \
    --config=gemma2_2b --lora_remat=${LORA_REMAT:-full} --json="$OUT/gemma2_2b.json" \
    --profile_dir=/tmp/bench_profile "$@" 2>&1 | grep -v -i "warn" | tee "$OUT/bench.log"
status=${PIPESTATUS[0]}
if [ -d /tmp/bench_profile ]; then
  $PY -m bin.trace_summary /tmp/bench_profile --top 14 > "$OUT/trace_summary.txt"
  tar czf "$OUT/profile.tgz" -C /tmp bench_profile
fi
if [ -d /tmp/xla_dump ]; then
  (cd /tmp/xla_dump && tar czf "$OUT/hlo.tgz" *after_optimizations.txt)
fi
IFS=';' read -ra variants <<< "${XLA_VARIANTS:-}"
for i in "${!variants[@]}"; do
  echo "## XLA_FLAGS=${variants[$i]} (ours only)" | tee -a "$OUT/variants.log"
  XLA_FLAGS="${variants[$i]}" timeout "${VARIANT_TIMEOUT:-90}" $PY -m bin.bench --platform=gpu \
      --config=gemma2_2b --hf=false --rows=residuals,analysis --json="$OUT/variant_$i.json" \
      2>&1 | grep "^| \(residuals\|analysis\)" | tee -a "$OUT/variants.log"
done
exit "$status"
