#!/usr/bin/env bash
# Replayer benchmark: tapwire-replayer fed by a synthetic listener over gRPC, replaying GETs to an
# nginx target on loopback, next to oha sending the same GETs straight to nginx with the same
# connection count; then rate accuracy at 100, 1000 and 10000 requests/s.
# Installs nginx-light (apt, as root) and oha (cargo install) if missing.
# Extra arguments go to tapwire-replay-bench, e.g. --requests 50000 --rates 1000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
source bench/nginx.sh
cargo build --release --bins --quiet
start_nginx 18090
target/release/tapwire-replay-bench --target "http://127.0.0.1:18090" "$@"
