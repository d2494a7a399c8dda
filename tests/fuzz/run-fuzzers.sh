#!/usr/bin/env bash
# tests/fuzz/run-fuzzers.sh BUILD_DIR SECONDS: build every libFuzzer target with clang
# (ASan+UBSan) and run each for SECONDS seconds from its seed corpus, then write
# BUILD_DIR/fuzz-testlog.json: one meson-testlog-style JSON line per target ("OK", "FAIL" or
# "SKIP"), which .ci/run counts with the other test logs.
#
# Targets are every tests/fuzz/NAME_fuzzer.c (each must also be listed in tests/fuzz/meson.build).
# Seeds come from tests/fuzz/corpora/NAME/ (read only); the growing corpus lives in
# BUILD_DIR/fuzz-corpus/NAME/ and crash reproducers land in BUILD_DIR/fuzz-artifacts/NAME/
# (replay one with: BUILD_DIR/tests/fuzz/fuzz-NAME FILE). A dictionary tests/fuzz/NAME.dict is
# used when present. Without clang (or its libFuzzer runtime) every target is reported as SKIP
# and the script exits 0.
# Exit status: 0 when no target failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-fuzz}
seconds=${2:-60}
mkdir -p "$build"
log="$build/fuzz-testlog.json"
: >"$log"

names=()
for f in tests/fuzz/*_fuzzer.c; do
  n=$(basename "$f" _fuzzer.c)
  names+=("$n")
done

# record NAME RESULT SECONDS RC [OUTPUT_FILE]: append one testlog line (JSON built by python3)
record() {
  python3 - "$@" >>"$log" 2>/dev/null <<'PY' ||
import json, sys
name, result, dur, rc = sys.argv[1:5]
out = ""
if len(sys.argv) > 5:
    try:
        out = "".join(open(sys.argv[5], errors="replace").readlines()[-60:])
    except OSError:
        pass
print(json.dumps({"name": "fuzz/" + name, "suite": ["fuzz"], "result": result,
                  "duration": float(dur), "returncode": int(rc), "stdout": out}))
PY
    printf '{"name": "fuzz/%s", "result": "%s"}\n' "$1" "$2" >>"$log"   # no python3: the two fields that count
  printf 'fuzz/%-14s %s\n' "$1" "$2"
}

# clang with its libFuzzer runtime (compiler-rt), or every target is skipped
probe="$build/fuzz-probe"
if ! command -v clang >/dev/null 2>&1 ||
   ! printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' |
     clang -fsanitize=fuzzer,address,undefined -x c - -o "$probe" >/dev/null 2>&1; then
  echo "run-fuzzers: clang with libFuzzer not found: fuzzers skipped"
  for n in "${names[@]}"; do record "$n" SKIP 0 0; done
  exit 0
fi
rm -f "$probe"

if [ ! -f "$build/build.ninja" ]; then
  if ! CC=clang meson setup "$build" -Dfuzz=enabled -Dcuda=disabled -Dbuildtype=debugoptimized \
      >"$build/fuzz-setup.log" 2>&1; then
    cat "$build/fuzz-setup.log"
    for n in "${names[@]}"; do record "$n" FAIL 0 1 "$build/fuzz-setup.log"; done
    exit 1
  fi
fi

failed=0
for n in "${names[@]}"; do
  out="$build/fuzz-$n.log"
  if ! ninja -C "$build" -j2 "tests/fuzz/fuzz-$n" >"$out" 2>&1; then
    record "$n" FAIL 0 1 "$out"
    failed=1
    continue
  fi
  corpus="$build/fuzz-corpus/$n"
  artifacts="$build/fuzz-artifacts/$n"
  mkdir -p "$corpus" "$artifacts"
  seeds=()
  [ -d "tests/fuzz/corpora/$n" ] && seeds+=("tests/fuzz/corpora/$n")
  dict=()
  [ -f "tests/fuzz/$n.dict" ] && dict+=("-dict=tests/fuzz/$n.dict")
  start=$(date +%s)
  "$build/tests/fuzz/fuzz-$n" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" "$corpus" "${seeds[@]}" >"$out" 2>&1
  rc=$?
  dur=$(( $(date +%s) - start ))
  if [ "$rc" -eq 0 ]; then
    record "$n" OK "$dur" 0 "$out"
  else
    record "$n" FAIL "$dur" "$rc" "$out"
    tail -40 "$out"
    failed=1
  fi
done
exit "$failed"
