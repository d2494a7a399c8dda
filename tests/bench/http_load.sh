#!/usr/bin/env bash
# tests/bench/http_load.sh: HTTP load on the real slimd with wrk (not a timed test; prints figures).
#   GET  /v1/jobs/{id}: requests/s and p99 (target >= 20,000/s on 2 cores)
#   POST /v1/jobs:      acknowledged-and-durable submissions/s (target >= 1,000/s), then checks that
#                       every 201 is a row in the database.
# Usage: tests/bench/http_load.sh [BUILD_DIR=build] [SECONDS=10]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
SECS=${2:-10}
DIR=$(mktemp -d /tmp/slimd-bench-XXXXXX)
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
"$BUILD/daemon/slimd" --data-dir "$DIR" --listen 127.0.0.1:0 --workers 1 --queue-limit 10000000 \
  --per-ip-connection-limit 0 --file-source-root "$PWD/tests/data" 2>"$DIR/log" &
PID=$!
for _ in $(seq 100); do grep -q 'listening on' "$DIR/log" && break; sleep 0.05; done
PORT=$(sed -n 's/.*listening on http:\/\/[0-9.]*:\([0-9]*\).*/\1/p' "$DIR/log")
URL=http://127.0.0.1:$PORT
SPEC="{\"model\":{\"source\":\"file://$PWD/tests/data/tiny-opt\"},\"method\":\"eval\",\"eval\":{\"perplexity\":[]}}"
ID=$(curl -s -X POST -H 'Content-Type: application/json' -d "$SPEC" "$URL/v1/jobs" | sed 's/.*"id":"\([^"]*\)".*/\1/')

echo "== GET /v1/jobs/$ID (wrk -t2 -c64 -d${SECS}s)"
wrk -t2 -c64 -d"${SECS}s" --latency "$URL/v1/jobs/$ID" | tee "$DIR/get.txt" | grep -E 'Requests/sec|99%|Non-2xx|Socket errors' || true

cat > "$DIR/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$SPEC'
wrk.headers["Content-Type"] = "application/json"
local threads = {}
function setup(t) table.insert(threads, t) end
function init() created = 0; other = 0 end
function response(status) if status == 201 then created = created + 1 else other = other + 1 end end
function done()
  local c, o = 0, 0
  for _, t in ipairs(threads) do c = c + t:get("created"); o = o + t:get("other") end
  io.write(string.format("created %d other %d\n", c, o))
end
LUA
echo "== POST /v1/jobs, durable (wrk -t2 -c16 -d${SECS}s)"
wrk -t2 -c16 -d"${SECS}s" --latency -s "$DIR/post.lua" "$URL/v1/jobs" | tee "$DIR/post.txt" | grep -E 'Requests/sec|99%|created|Socket errors' || true
CREATED=$(sed -n 's/^created \([0-9]*\) other.*/\1/p' "$DIR/post.txt")
ROWS=$(sqlite3 "file:$DIR/slimd.db?mode=ro" 'SELECT COUNT(*) FROM jobs')
echo "accepted $CREATED submissions; database holds $ROWS jobs (1 from the GET phase; requests in flight when wrk stopped are committed but not counted)"
[ "$ROWS" -ge $((CREATED + 1)) ] && echo "every accepted id is present" || { echo "MISMATCH"; exit 1; }
