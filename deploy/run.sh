#!/usr/bin/env bash
# deploy/run.sh: set up, build and start slimd with the embedded defaults (SQLite in ./var,
# listening on 127.0.0.1:7310, GPU workers when a CUDA device is visible, else one CPU worker).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
[ -f build/build.ninja ] || meson setup build -Dcuda=auto -Dbuildtype=release
ninja -C build
mkdir -p var
exec ./build/daemon/slimd --data-dir var "$@"
