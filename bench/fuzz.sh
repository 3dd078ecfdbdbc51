#!/usr/bin/env bash
# Long fuzzing runs of the HTTP/1 request cutter and of the JSON redactor: the proptests of
# listener/tests/cutter_properties.rs (any segmentation gives the same events, only whole
# requests are emitted, nothing after a smuggling shape) and shared/tests/redact_properties.rs
# (differential against serde_json), with PROPTEST_CASES cases per property (default 200000)
# instead of the few hundred of `cargo test`. A failure prints the minimal input and is saved
# under proptest-regressions/ so that plain `cargo test` replays it from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES=${PROPTEST_CASES:-200000}
cargo test -q -p tapwire-listener --test cutter_properties --no-run
cargo test -q -p tapwire-shared --test redact_properties --no-run
for target in "tapwire-listener cutter_properties" "tapwire-shared redact_properties"; do
  set -- $target
  start=$(date +%s.%N)
  cargo test -q -p "$1" --test "$2" -- --test-threads 2
  echo "fuzz: $2: ${PROPTEST_CASES} cases per property in $(echo "$(date +%s.%N) - $start" | bc) s"
done
