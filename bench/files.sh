#!/usr/bin/env bash
# File benchmark: a 100,000-request .gor file replayed with --timing asap into nginx on
# loopback, next to oha sending the same GETs straight to nginx (same connections, same run);
# then recording at 20,000 requests/s into a .gor file: captured vs written, listener peak RSS.
# Needs root (live capture). Installs nginx-light (apt, as root) and oha (cargo install) if
# missing. Extra arguments go to tapwire-files-bench, e.g. --requests 50000 --rounds 3.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
source bench/nginx.sh
cargo build --release --bins --quiet
start_nginx 18091
target/release/tapwire-files-bench --target "http://127.0.0.1:18091" "$@"
