#!/usr/bin/env bash
# Comparison benchmark: a .gor file of GETs over many distinct endpoints replayed by
# tapwire-replayer to three builds in one process (baseline, baseline2, candidate), alternating
# plain (--target x3) and compared (--baseline/--baseline2/--candidate --diff-log) runs, as fast
# as possible and at 5,000 requests/s: requests/s per target, CPU seconds, peak RSS, and the
# compare/plain ratios. No root needed.
#   bench/compare-targets.sh                                  # 100,000 GETs, 1,000 endpoints
#   bench/compare-targets.sh --memory-run 10m --memory-endpoints 10000 --memory-rate 5000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo build --release --bins --quiet
flock /tmp/tapwire-bench.lock target/release/tapwire-compare-bench "$@"
