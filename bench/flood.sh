#!/usr/bin/env bash
# Flood benchmark: the listener's peak memory (VmHWM) at its default limits under hostile
# packet mixes sent on loopback to a non-local address (nothing answers them): 100,000
# connections each left with a partial request (the default --max-flows is 65,536), two
# connections with a million one-byte segments each behind a hole that never fills (one every
# other byte: nothing coalesces), and 65,536 connections holding scattered one-byte segments.
# Fails if a peak is over 64 MiB. Needs root. Extra arguments go to the benchmark binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo build --release --bins --quiet
flock /tmp/tapwire-bench.lock target/release/tapwire-flood-bench "$@"
