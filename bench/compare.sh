#!/usr/bin/env bash
# Before/after on the same machine in the same run: runs a benchmark binary from this tree's
# release build and from another build's directory (e.g. a worktree of the previous commit
# built with CARGO_TARGET_DIR), alternating A B A B so that drift in the machine hits both.
#   bench/compare.sh OTHER_BIN_DIR ROUNDS BENCH [ARGS...]
#   bench/compare.sh /work/baseline-target/release 2 tapwire-bench --rates 10000,max
set -euo pipefail
cd "$(dirname "$0")/.."
other=$1 rounds=$2 bench=$3
shift 3
scripts/ensure-deps.sh
cargo build --release --bins --quiet
for round in $(seq 1 "$rounds"); do
  for side in this other; do
    dir=target/release
    [ "$side" = other ] && dir=$other
    echo "== round $round: $side ($dir)"
    TAPWIRE_BIN_DIR="$dir" "$dir/$bench" "$@"
  done
done
