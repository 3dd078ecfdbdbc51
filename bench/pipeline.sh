#!/usr/bin/env bash
# Pipeline benchmark: production on loopback under fixed request rates, captured by
# tapwire-listener and replayed by tapwire-replayer to one target. Prints served vs replayed,
# drops, listener CPU seconds and peak RSS per rate. Needs root (live capture).
#   bench/pipeline.sh                       # 1k and 5k requests/s, 10 s each, GETs
#   bench/pipeline.sh --rates 1000,5000,10000,20000,max --body-bytes 16384
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
cargo build --release --bins --quiet
exec target/release/tapwire-bench "$@"
