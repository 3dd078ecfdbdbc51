#!/usr/bin/env bash
# Capture benchmark: production on loopback at fixed rates (1k, 5k, 10k, 20k requests/s and as
# fast as possible), first with small GETs, then with 16 KiB POSTs. For each run it prints
# served, captured, replayed, drops, listener CPU (seconds and µs per request) and peak RSS.
# Needs root (live capture). Extra arguments go to every run, e.g. --seconds 5.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo build --release --bins --quiet
target/release/tapwire-bench --rates 1000,5000,10000,20000,max --max-requests 300000 "$@"
echo
target/release/tapwire-bench --rates 1000,5000,10000,20000,max --max-requests 150000 --body-bytes 16384 "$@"
