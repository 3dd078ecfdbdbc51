#!/usr/bin/env bash
# Link benchmark: the gRPC link between listeners and replayers at scale. Three runs, each
# printing its table:
#   1. 20 synthetic listeners -> one replayer -> one target: records/s and records/s per replayer
#      core (records / replayer CPU seconds), and whether the target served every record;
#   2. live capture on lo, one listener sharding client connections over two replayers at 5k and
#      10k requests/s: each replayer's share and CPU, then captured -> acknowledged -> delivered;
#   3. capture-to-replay latency at 5k requests/s: p50/p90/p99/max from a request's arrival at
#      production to its arrival at the target.
# Needs root (live capture).
#   bench/link.sh                                  # all three
#   bench/link.sh latency --rates 1000,5000        # one of them, with its own options
#   bench/link.sh replayers --help
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo build --release --bins --quiet
bench=target/release/tapwire-link-bench
if [ $# -gt 0 ]; then
  exec "$bench" "$@"
fi
"$bench" listeners
echo
"$bench" replayers
echo
"$bench" latency
