#!/usr/bin/env bash
# Load-tests POST /token with wrk from a second process, through the sandbox:
# wrk -> loopback gateway -> the person's tsnet node -> tailnet (userspace
# WireGuard over loopback DERP/direct) -> tsidp. It measures the whole path a
# tailnet caller takes, not tsidp alone (see BenchmarkToken for that).
#
#   scripts/load.sh [DURATION] [CONNECTIONS] [AUDIENCE-ALG]
#
# Record the figures in docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-15s}
conns=${2:-16}
alg=${3:-ES256}
command -v wrk >/dev/null || { echo "load.sh: wrk is not installed (apt-get install wrk)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/tsidp-load-XXXXXX)
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
cat > "$tmp/tsidp.yaml" <<YAML
audiences:
  - name: load
    allow: ["*"]
    algorithm: $alg
YAML
go build -o "$tmp/tsidp" ./cmd/tsidp
"$tmp/tsidp" sandbox --config "$tmp/tsidp.yaml" --listen 127.0.0.1:18484 --listen-tagged 127.0.0.1:18485 > "$tmp/out" 2>&1 &
pid=$!
for _ in $(seq 1 300); do grep -q "Press Ctrl-C" "$tmp/out" && break; sleep 0.1; done
grep -q "Press Ctrl-C" "$tmp/out" || { cat "$tmp/out"; exit 1; }

cat > "$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&audience=load"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
done = function(summary, latency, requests)
  io.write(string.format("non-2xx or errors: %d\n", summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
curl -sf -d audience=load http://127.0.0.1:18484/token > /dev/null
wrk -t2 -c"$conns" -d"$dur" --latency -s "$tmp/post.lua" http://127.0.0.1:18484/token
