#!/bin/bash
# tests/gpu/run_gpu_suite.sh: the GPU test suite of issue #6 in one call on a machine with a GPU.
#
#   here:    meson setup build-hc -Dcuda=enabled && meson compile -C build-hc
#            tests/gpu/run_gpu_suite.sh --pack build-hc .carry/gpu-suite
#   device:  tests/gpu/run_gpu_suite.sh .carry/gpu-suite          (from the repository root, with
#            .carry/gpu-suite carried; about 30 MB packed)
#   The pack also holds compress-bench and gpu-forward-bench, so the same carried folder serves
#   tests/bench/gpu_bench.sh .carry/gpu-suite opt125m llama7b:4          (forward vs transformers)
#   tests/bench/gpu_compress_bench.sh .carry/gpu-suite 32 wanda-slimquant (one config per call)
#
# DIR is either a meson build folder (executables under tests/unit/) or a folder made by --pack
# (the executables, stripped, and lib/ with every shared library they need that is neither glibc
# nor CUDA's: the device machine has the CUDA runtime but not libcmocka, libjansson, LAPACKE ...).
# LD_LIBRARY_PATH gets DIR/lib, then LIBDIR (second argument; default DIR/../lib, e.g. .carry/lib),
# then /usr/local/cuda/lib64. tests/data is read from the working directory (SLIM_TEST_DATA
# overrides: point it at the full fixture set for the OPT configurations).
#
# Runs, each with a 300 s limit (the device allows 10 minutes a call):
#   t-kernels-cuda       every CUDA op against the CPU backend
#   t-core-gpu_parity    every SLiM configuration, SliceGPT and the dense perplexity, cuda vs cpu
#   t-core-{prune,quant,lowrank,jsq,memory,checkpoint,compress} with SLIM_TEST_DEVICE=cuda: the core
#                        unit tests that take their backend from test_backend_name()
# and prints one line per executable, then `N passed, N failed, N skipped` (exit 1 on a failure).
# Full logs go to $OUT/gpu-suite when OUT is set (the device tool brings them back), else to
# ${TMPDIR:-/tmp}/slim-gpu-suite.
#
# What can hold on a GPU: every core test above is written for any backend. The ones most
# exposed to GPU rounding are t-core-compress (float32 masks must equal the SLiM reference's with
# zero mismatches; the CPU does, and the GPU's float sums differ from OpenBLAS's as torch's do)
# and the bit-for-bit checks of prune/quant ops against host loops (the CUDA kernels use
# non-contracted arithmetic to match). None is skipped by design: SKIP below lists executables
# that cannot hold on a GPU, with the reason, should one turn up.
# (t-core-checkpoint's job test once ran its job on "cpu" and evaluated the checkpoint on the
# backend under test to 1e-12; it now runs the job on the backend under test.)
set -u
SKIP=()   # entries "t-core-NAME|reason"

if [ "${1:-}" = --pack ]; then
  BUILD=${2:?usage: $0 --pack BUILD DEST}; DEST=${3:?usage: $0 --pack BUILD DEST}
  # The device image has OpenBLAS (36 MB) and jansson: earlier runs there went without them. The
  # runner's ldd check names any library still missing; PACK_SKIP="" packs everything.
  PACK_SKIP=${PACK_SKIP-libopenblas.so.0 libjansson.so.4}
  mkdir -p "$DEST/lib"
  # the tests, and the benchmarks gpu_bench.sh / gpu_compress_bench.sh run from the same folder
  for f in unit/t-kernels-cuda unit/t-core-gpu_parity unit/t-core-prune unit/t-core-quant unit/t-core-lowrank \
           unit/t-core-jsq unit/t-core-memory unit/t-core-checkpoint unit/t-core-compress bench/compress-bench \
           bench/gpu-forward-bench; do
    t=${f#*/}
    cp "$BUILD/tests/$f" "$DEST/$t" && strip -s "$DEST/$t" || exit 1
    ldd "$BUILD/tests/$f" | awk '$3 ~ /^\// { print $1, $3 }' | while read -r name path; do
      case $name in
        libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libgcc_s.so*|libstdc++.so*) continue ;;
        libcuda*|libcublas*|libcusolver*|libcusparse*|libnvJitLink*|libnvidia*|libcurand*) continue ;;
      esac
      [[ " $PACK_SKIP " == *" $name "* ]] && continue
      [ -f "$DEST/lib/$name" ] || cp -L "$path" "$DEST/lib/$name"
    done
  done
  du -sh "$DEST"
  echo "(the working tree and carried folders that travel to the device are limited to 64 MiB together)"
  exit 0
fi

DIR=$(cd "${1:?usage: $0 DIR [LIBDIR]   or   $0 --pack BUILD DEST}" && pwd)
LIBDIR=${2:-$DIR/../lib}
BIN=$DIR; [ -d "$DIR/tests/unit" ] && BIN=$DIR/tests/unit
export LD_LIBRARY_PATH=$DIR/lib:$LIBDIR:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export SLIM_TEST_DATA=${SLIM_TEST_DATA:-$PWD/tests/data}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}   # the CPU reference as CI computes it
LOGS=${OUT:+$OUT/gpu-suite}; LOGS=${LOGS:-${TMPDIR:-/tmp}/slim-gpu-suite}
mkdir -p "$LOGS"
date -u +"%Y-%m-%d %H:%M UTC"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
missing=$(ldd "$BIN"/t-* 2>/dev/null | grep "not found" | sort -u)
[ -n "$missing" ] && echo "missing libraries: $missing"

passed=0 failed=0 skipped=0
run() {   # NAME DEVICE-ENV...
  local t=$1; shift
  for s in "${SKIP[@]}"; do
    if [ "${s%%|*}" = "$t" ]; then
      printf '%-22s SKIP  %s\n' "$t" "${s#*|}"; skipped=$((skipped + 1)); return
    fi
  done
  local log=$LOGS/$t.log t0=$SECONDS
  env "$@" timeout 300 "$BIN/$t" >"$log" 2>&1
  local rc=$? secs=$((SECONDS - t0))
  local ok fl sk
  ok=$(grep -c '^\[       OK \]' "$log"); fl=$(grep '^\[  FAILED  \] test' "$log" | sort -u | wc -l); sk=$(grep '^\[  SKIPPED \] test' "$log" | sort -u | wc -l)
  if [ $rc -eq 77 ]; then
    printf '%-22s SKIP  (exit 77: %s)\n' "$t" "$(head -1 "$log")"; skipped=$((skipped + 1))
  elif [ $rc -eq 0 ]; then
    printf '%-22s PASS  %d ok, %d skipped, %d s\n' "$t" "$ok" "$sk" "$secs"; passed=$((passed + 1))
  else
    printf '%-22s FAIL  rc %d, %d ok, %d failed, %d skipped, %d s; log %s\n' "$t" $rc "$ok" "$fl" "$sk" "$secs" "$log"
    grep -E '^\[  (ERROR|FAILED) |^\[   LINE   \]|error' "$log" | head -20 | sed 's/^/    /'
    failed=$((failed + 1))
  fi
}

# SLIM_GPU_SUITE_DEVICE=cpu checks this script without a GPU: the core tests on cpu, the parity
# harness as its cpu-vs-cpu selftest
DEV=${SLIM_GPU_SUITE_DEVICE:-cuda}
PARITY_ENV=(); [ "$DEV" = cpu ] && PARITY_ENV=(SLIM_PARITY_SELFTEST=1)
run t-kernels-cuda
if [ $skipped -gt 0 ] && [ "$DEV" != cpu ]; then   # exit 77: no CUDA in this build or no visible GPU
  SKIP+=("t-core-gpu_parity|no GPU (t-kernels-cuda skipped)")
  for t in prune quant lowrank jsq memory checkpoint compress; do SKIP+=("t-core-$t|no GPU (t-kernels-cuda skipped)"); done
fi
run t-core-gpu_parity "${PARITY_ENV[@]}"
grep '^parity ' "$LOGS/t-core-gpu_parity.log" 2>/dev/null | sed 's/^/    /'
for t in prune quant lowrank jsq memory checkpoint compress; do
  run "t-core-$t" SLIM_TEST_DEVICE="$DEV"
done
echo "$passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
