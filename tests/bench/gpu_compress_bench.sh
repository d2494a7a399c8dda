#!/bin/bash
# tests/bench/gpu_compress_bench.sh: SLiM compression wall time on a LLaMA-2-7B-shaped model on the
# GPU, beside the reference implementation's published single-H100 times (ALGORITHMS.md §9.3).
# usage: gpu_compress_bench.sh BINDIR [LAYERS] [CONFIG...]
#   BINDIR holds compress-bench and t-kernels-cuda (and lib/ with shared libraries the machine lacks);
#   LAYERS (default 32) keeps that many of LLaMA-2-7B's 32 blocks: the published time and the target
#   are then scaled by LAYERS/32 (compression is block by block, so time is linear in blocks; the
#   embedding/head are not compressed). CONFIG: wanda-slimquant, sparsegpt-optq, slim (default: all).
# Calibration is 128 x 2048 tokens, as the paper. The model (random, bf16 safetensors written by
# transformers) stays in $WORK between calls so that each configuration can run in its own device
# call (one call is limited to 10 minutes); KEEP=0 removes it at the end.
# Peak backend memory is the caching allocator's high-water mark (compress-bench prints it).
# PRECISION=bf16 (default: the reference's own precision; linears on TF32 tensor cores, exact for
# bf16 values) or PRECISION=f32 (exact f32 GEMMs throughout).
set -u
BIN=$(cd "$1" && pwd); shift
L=${1:-32}; shift || true
CONFIGS=${*:-wanda-slimquant sparsegpt-optq slim}
HERE=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=$BIN/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
WORK=${TMPDIR:-/tmp}/slim-gpu-compress
D=$WORK/llama7b-$L
mkdir -p "$WORK"
date -u +"%Y-%m-%d %H:%M UTC"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ ! -f "$WORK/kernels.ok" ]; then
  "$BIN/t-kernels-cuda" >"$WORK/kernels.log" 2>&1; rc=$?
  echo "t-kernels-cuda rc=$rc ($(grep -c '\[       OK \]' "$WORK/kernels.log") ok)"
  [ $rc -eq 0 ] || { cat "$WORK/kernels.log"; exit 1; }
  touch "$WORK/kernels.ok"
fi
if [ ! -f "$D/config.json" ]; then
  t0=$(date +%s)
  python3 "$HERE/hf_forward.py" make "llama7b:$L" "$D" bf16 || exit 1
  echo "wrote $D in $(( $(date +%s) - t0 )) s"
fi
# name in compress-bench, published minutes for LLaMA-2-7B, target minutes
row() {
  case $1 in
    wanda-slimquant) echo "wanda 2:4 + slim-quant-4|8|2" ;;
    sparsegpt-optq)  echo "sparsegpt 2:4 + optq-4|25|5" ;;
    slim)            echo "wanda 2:4 + slim-quant + slim-lora|39|6" ;;
    *) echo "unknown configuration $1" >&2; return 1 ;;
  esac
}
TABLE=$WORK/table-$L.txt
for C in $CONFIGS; do
  R=$(row "$C") || exit 2
  NAME=${R%%|*}; REST=${R#*|}; PUB=${REST%%|*}; TGT=${REST#*|}
  OUT=$WORK/$C-$L.log
  "$BIN/compress-bench" --model "$D" --backend cuda --nsamples 128 --seqlen 2048 --forward-samples 4 \
      --bf16 "$([ "${PRECISION:-bf16}" = bf16 ] && echo 1 || echo 0)" --only "$NAME" >"$OUT" 2>&1
  cat "$OUT"
  LINE=$(grep -F "  $NAME " "$OUT" | head -1)
  SECS=$(echo "$LINE" | awk '{for (i = 1; i <= NF; i++) if ($(i+1) == "s") { print $i; exit }}')
  PEAK=$(echo "$LINE" | sed -n 's/.*peak backend \([0-9.]* GiB\).*/\1/p')
  awk -v n="$NAME" -v s="${SECS:-nan}" -v p="$PUB" -v t="$TGT" -v l="$L" -v pk="${PEAK:-?}" 'BEGIN {
    f = l / 32; printf "| %s | %s | %.1f min | %.2f min | %.2f min | %s |\n", n, l, s / 60, p * f, t * f, pk }' >>"$TABLE"
done
echo "precision ${PRECISION:-bf16}"
echo "| configuration | blocks | slimd | published (scaled) | target (scaled) | peak GPU memory |"
echo "|---|---|---|---|---|---|"
cat "$TABLE"
[ "${KEEP:-1}" = 0 ] && rm -rf "$WORK"
exit 0
