#!/usr/bin/env bash
# deploy/setup.sh: install every Debian package slimd needs to build, run and test.
# Idempotent: apt-get skips what is already installed. Run as root (or with sudo).
#   deploy/setup.sh           build + runtime + test dependencies
#   SLIMD_SETUP_NODE=1 ...    also install Debian's node/npm when the machine has none, for the
#                             tokenizer parity test (it skips without node; Debian 12's npm could
#                             not install the reference packages on a fresh machine here)
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
pkgs=(
  build-essential pkg-config meson ninja-build git ca-certificates
  libopenblas-dev liblapacke-dev
  libjansson-dev libsqlite3-dev sqlite3 libmicrohttpd-dev libcurl4-openssl-dev
  libcmocka-dev libssl-dev
  clang libclang-rt-dev libomp-dev
  curl wrk
)
# node/npm and python3 only when the machine has none (a preinstalled node conflicts with Debian's)
command -v python3 >/dev/null || pkgs+=(python3)
if [ "${SLIMD_SETUP_NODE:-0}" = 1 ] && ! command -v node >/dev/null; then pkgs+=(nodejs npm); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: all ${#pkgs[@]} packages present"
