#!/bin/bash
# tests/bench/gpu_bench.sh: slimd's CUDA forward pass beside transformers on the same GPU, in one run.
# usage: gpu_bench.sh BINDIR [MODELS...]   (BINDIR holds t-kernels-cuda and gpu-forward-bench,
#        and lib/ with any shared libraries the machine lacks; MODELS: opt125m llama7b:4 ...)
# Runs the GPU kernel tests first (a wrong backend is not worth timing), then for each model:
# writes a random fp32 model with transformers, times transformers' forward+loss at seqlen 2048,
# times slimd's (exact FP32 by default, cuBLAS pedantic FP32, the chunked-GEMM attention path
# SLIM_CUDA_ATTN=gemm, the register-tiled SLIM_CUDA_ATTN=tiled, then TF32 GEMMs), and prints one table
# (kernel timings of one layer go to stderr). Copy the lines into RESULTS.md.
set -u
BIN=$(cd "$1" && pwd); shift
MODELS=${*:-opt125m}
HERE=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=$BIN/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
WORK=${TMPDIR:-/tmp}/slim-gpu-bench
mkdir -p "$WORK"
date -u +"%Y-%m-%d %H:%M UTC"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$BIN/t-kernels-cuda" >"$WORK/kernels.log" 2>&1; rc=$?
echo "t-kernels-cuda rc=$rc ($(grep -c '\[       OK \]' "$WORK/kernels.log") ok)"
[ $rc -eq 0 ] || { cat "$WORK/kernels.log"; exit 1; }
TABLE=$WORK/table.txt; : >"$TABLE"
for M in $MODELS; do
  D=$WORK/${M/:/-}
  python3 "$HERE/hf_forward.py" make "$M" "$D" || exit 1
  echo "== $M (seqlen 2048, batch 1, fp32)" >>"$TABLE"
  python3 "$HERE/hf_forward.py" time "$D" 2048 5 >>"$TABLE" || exit 1
  "$BIN/gpu-forward-bench" "$D" --backend cuda --seqlen 2048 --reps 5 >>"$TABLE" || exit 1
  for V in pedantic:SLIM_CUDA_PEDANTIC=1 attn-gemm:SLIM_CUDA_ATTN=gemm attn-tiled:SLIM_CUDA_ATTN=tiled tf32:SLIM_CUDA_TF32=1; do
    env "${V#*:}" "$BIN/gpu-forward-bench" "$D" --backend cuda --seqlen 2048 --reps 5 2>"$WORK/stderr.txt" |
      sed "s/^slimd /slimd-${V%%:*} /" >>"$TABLE"
    grep 'attention/layer' "$WORK/stderr.txt" | sed "s/^/  (${V%%:*}) /" >&2
  done
  [ -n "${KEEP:-}" ] || rm -rf "$D"   # KEEP=1 leaves the model folders for further runs
done
cat "$TABLE"
