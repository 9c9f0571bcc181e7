#!/usr/bin/env bash
# `make gpu-check`: every GPU path in one pass, on one CUDA device.
#   1. the parity tests on CUDA (official fixtures, the CPU tolerances; compiled = CUDA graphs);
#   2. the default tiny run with hardware=gpu in fp32, bf16-mixed and compiled, and PSNR of each against a
#      CPU run of the same seeds (CPU_RUN; images depend only on their seeds, so they should agree); tiny_llamagen
#      with and without ADSA;
#   3. optionally (SBS=path/to/side_by_side.py): the side-by-side timing against the official code;
#   4. MAR-B and tiny_mar wall-clock of MAR and LazyMAR on the GPU (lazygen.bench --device cuda).
# Each step has its own time limit and appends to one log, so a failure does not hide the steps after it.
# OUT (default runs/gpu_check) receives gpu_check.log (every metrics.json too), summary.txt, comparison.md
# and the benchmarks' JSON.
set -u
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_check}
RUNS=${RUNS:-/tmp/lazygen_gpu_runs}
CPU_RUN=${CPU_RUN:-}
mkdir -p "$OUT" "$RUNS"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
export OUT PYTHONUNBUFFERED=1 WANDB_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME LIMIT_S COMMAND...: run, log, one summary line, the log's tail on the console
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "===== $name: $*" >>"$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "$name: rc=$rc in $(($(date +%s) - start)) s" | tee -a "$OUT/summary.txt"
}

nvidia-smi -L | tee -a "$LOG"
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())" | tee -a "$LOG"

step parity_cuda 240 $PY -m pytest tests/parity --device cuda -q -p no:cacheprovider
tail -n 3 "$LOG"

for v in fp32 bf16 compiled; do
  case $v in
    fp32) extra=() ;;
    bf16) extra=(hardware.precision=bf16-mixed) ;;
    compiled) extra=(hardware.compile=true) ;;
  esac
  step "tiny_mar_gpu_$v" 240 $PY -m lazygen hardware=gpu logger=none callbacks.progress_bar=false \
    "hydra.run.dir=$RUNS/$v" "${extra[@]}"
  grep -E "latency|fid|class_acc|compile" "$RUNS/$v/metrics.json" | tr -d '\n' | tee -a "$OUT/summary.txt"
  echo | tee -a "$OUT/summary.txt"
  cat "$RUNS/$v/metrics.json" >>"$LOG" 2>/dev/null
done
for c in none adsa; do  # LlamaGen's GPU path: a network-free tokenizer, the token grid in pinned memory
  step "tiny_llamagen_gpu_$c" 120 $PY -m lazygen model=tiny_llamagen cache=$c hardware=gpu logger=none \
    callbacks.progress_bar=false "hydra.run.dir=$RUNS/llamagen_$c"
  grep -E "latency|fid\"|class_acc\"" "$RUNS/llamagen_$c/metrics.json" | tr -d '\n' | tee -a "$OUT/summary.txt"
  echo | tee -a "$OUT/summary.txt"
done
if [ -n "$CPU_RUN" ]; then  # PSNR of the GPU images against the CPU run of the same seeds
  CPU_RUN=$(cd "$CPU_RUN" && pwd)
  (cd "$RUNS" && step compare_cpu_gpu 120 $PY -m lazygen.compare "$CPU_RUN" "$RUNS/fp32" "$RUNS/bf16" "$RUNS/compiled")
  cp "$RUNS/comparison.md" "$OUT/comparison.md" 2>/dev/null && cat "$OUT/comparison.md"
fi

if [ -n "${SBS:-}" ]; then
  step side_by_side 300 $PY "$SBS"
  tail -n 7 "$LOG"
fi

step bench_cuda_fp32 150 $PY -m lazygen.bench --models --latency-models tiny_mar mar_b --device cuda --batch 32 \
  --mar-batch 8 --out "$OUT/bench_cuda_fp32.json"
step bench_cuda_bf16 150 $PY -m lazygen.bench --models --latency-models mar_b --device cuda --mar-batch 8 \
  --set hardware.precision=bf16-mixed --out "$OUT/bench_cuda_bf16.json"
grep '"latency"' "$LOG"
cat "$OUT/summary.txt"
