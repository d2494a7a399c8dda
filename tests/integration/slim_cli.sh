#!/bin/bash
# tests/integration/slim_cli.sh: the offline tool end to end on stories260K, from text.
#   slim info; slim eval from text and from ids (same ids -> same perplexity); slim compress with
#   Wanda 2:4 and SliceGPT 25%, each output reloaded by slim eval; exit codes and messages of bad
#   usage, a missing model folder, a spec with an unknown field and a missing dataset.
# usage: slim_cli.sh SLIM_BINARY TEST_DATA_DIR      (exit 77 = skipped: no python3 to read JSON)
set -u
SLIM=$1
DATA=$2
M=$DATA/stories260K
HERE=$(cd "$(dirname "$0")" && pwd)
command -v python3 >/dev/null || { echo "skip: python3 not found"; exit 77; }
T=$(mktemp -d /tmp/slim-cli-XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0

fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }

# run NAME WANT_RC CMD...: stdout to $T/NAME.out, stderr to $T/NAME.err; checks the exit status
run() {
    local name=$1 want=$2
    shift 2
    "$@" >"$T/$name.out" 2>"$T/$name.err"
    local rc=$?
    if [ "$want" = nonzero ] && [ $rc -ne 0 ]; then ok "$name exits $rc"; return 0; fi
    if [ "$rc" = "$want" ]; then ok "$name exits $rc"; return 0; fi
    fail "$name exits $rc, want $want"
    sed 's/^/    /' "$T/$name.err" | tail -5
    return 1
}

# has NAME FILE TEXT: FILE ($T/NAME.out or .err) contains TEXT literally
has() {
    if grep -qF -- "$3" "$T/$1.$2"; then ok "$1 $2 mentions '$3'"; else fail "$1 $2 lacks '$3'"; sed 's/^/    /' "$T/$1.$2" | tail -5; fi
}

# The JSON checks run in one python3 at the end (its start-up is slow on a loaded machine):
# json_check NAME [FILES...] queues the check NAME of slim_cli_checks.py on the files.
checks=()
json_check() { checks+=("$*"); }

# ---- slim info ----
if run info 0 "$SLIM" info "$M"; then
    has info out "architecture llama"
    has info out "parameters   260032 stored (260032 by the dense config)"
fi

# ---- slim eval: text, JSON, ids ----
if run eval_text 0 "$SLIM" eval "$M" --text "$M/tinystories-sample.txt" --seqlen 64; then
    json_check text_ppl "$T/eval_text.out"
fi

# The first story as text, and as the ids llama2.c gave it (tinystories-ids.json up to the second BOS):
# the tokenizer reproduces those ids, so both runs must score the same windows.
python3 "$HERE/slim_cli_checks.py" prep "$M" "$T" || fail "prep: could not cut story 1 from the sample"
run story_text 0 "$SLIM" eval "$M" --text "$T/story1.txt" --seqlen 64 --json
run story_ids 0 "$SLIM" eval "$M" --ids "$T/story1-ids.json" --seqlen 64 --json
json_check same_ppl "$T/story_text.out" "$T/story_ids.out"
# the fixture's own {"ids": [...]} file is accepted as is
run ids_fixture 0 "$SLIM" eval "$M" --ids "$M/tinystories-ids.json" --seqlen 64 --json
json_check ids_ppl "$T/ids_fixture.out"

# ---- slim compress: Wanda 2:4 and SliceGPT 25%, calibrated on a text dataset in --data-dir ----
mkdir -p "$T/data"
cp "$M/tinystories-sample.txt" "$T/data/tinystories.txt"
cat >"$T/wanda.json" <<'EOF'
{"method": "slim",
 "pruning": {"method": "wanda", "pattern": "2:4"},
 "calibration": {"dataset": "tinystories", "nsamples": 8, "seqlen": 64},
 "eval": {"perplexity": ["tinystories"], "seqlen": 64}}
EOF
cat >"$T/slicegpt.json" <<'EOF'
{"method": "slicegpt",
 "slicegpt": {"sparsity": 0.25},
 "calibration": {"dataset": "tinystories", "nsamples": 8, "seqlen": 64},
 "eval": {"perplexity": ["tinystories"], "seqlen": 64}}
EOF
run eval_dense 0 "$SLIM" eval "$M" --text "$M/tinystories-sample.txt" --seqlen 64 --json

for method in wanda slicegpt; do
    run "compress_$method" 0 "$SLIM" compress "$M" "$T/$method.json" "$T/out-$method" --data-dir "$T/data" || continue
    # the output folder carries the model's tokenizer: no --tokenizer needed
    run "eval_$method" 0 "$SLIM" eval "$T/out-$method" --text "$M/tinystories-sample.txt" \
        --seqlen 64 --json || continue
    json_check compressed "$method" "$T/compress_$method.out" "$T/eval_dense.out" "$T/eval_$method.out"
done
[ -f "$T/out-wanda/slim_config.json" ] && ok "wanda output is a slim checkpoint" || fail "no slim_config.json in the wanda output"
run info_wanda 0 "$SLIM" info "$T/out-wanda" && has info_wanda out "compressed   " && has info_wanda out "dense bytes (ratio"
run info_slicegpt 0 "$SLIM" info "$T/out-slicegpt" && has info_slicegpt out "sliced       SliceGPT 25%: residual width 48 of 64"

# ---- errors ----
run usage_none 2 "$SLIM"
run usage_eval 2 "$SLIM" eval "$M" --seqlen 64
run usage_eval_both 2 "$SLIM" eval "$M" --text "$M/tinystories-sample.txt" --ids "$T/story1-ids.json"
run usage_compress 2 "$SLIM" compress "$M"
run usage_command 2 "$SLIM" frobnicate
run missing_info 1 "$SLIM" info "$T/no-such-model" && has missing_info err "$T/no-such-model"
run missing_eval 1 "$SLIM" eval "$T/no-such-model" --ids "$T/story1-ids.json" --seqlen 64 &&
    has missing_eval err "$T/no-such-model"
run missing_compress 1 "$SLIM" compress "$T/no-such-model" "$T/wanda.json" "$T/out-x" --data-dir "$T/data" &&
    has missing_compress err "$T/no-such-model"
echo '{"method": "slim", "pruning": {"method": "wanda", "patern": "2:4"}}' >"$T/unknown.json"
run unknown_field nonzero "$SLIM" compress "$M" "$T/unknown.json" "$T/out-y" && has unknown_field err "/pruning/patern"
sed 's/"tinystories", "nsamples"/"no-such-set", "nsamples"/' "$T/wanda.json" >"$T/nodata.json"
run missing_dataset 1 "$SLIM" compress "$M" "$T/nodata.json" "$T/out-z" --data-dir "$T/data" &&
    has missing_dataset err "no-such-set"

# ---- the queued JSON checks ----
printf '%s\n' "${checks[@]}" | python3 "$HERE/slim_cli_checks.py" check
fails=$((fails + $?))

echo "$fails failure(s)"
[ $fails -eq 0 ]
