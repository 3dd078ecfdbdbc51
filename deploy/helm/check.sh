#!/usr/bin/env bash
# Validates the Helm chart deploy/helm/tapwire without a cluster or a helm binary:
#   1. pytest deploy/helm/tests: Helm v4's linter (strict) and template engine (helm-python-sdk)
#      on the defaults, every examples/*.yaml and tests/values-options.yaml; every rendered
#      object against the Kubernetes 1.25 and 1.37 API schemas in strict mode; typos in values
#      refused by values.schema.json; the listener DaemonSet's security fields; the rendered
#      configuration accepted by the real binaries (--check-config).
#   2. checkov (security policies) on the same rendered manifests; any failed check fails.
# Tools go into a virtualenv of its own (target/chart-check/venv, pinned by requirements.txt);
# the binaries are built with cargo if needed (or taken from TAPWIRE_BIN_DIR).
# Run: make chart-check   (or deploy/helm/check.sh)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
helm_dir=$repo/deploy/helm
work=$repo/target/chart-check
venv=$work/venv
python=${PYTHON:-python3}

started=$SECONDS
step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - started)); }

step "tools: $venv"
requirements=$helm_dir/requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/requirements.txt"
fi
"$venv/bin/pip" freeze --disable-pip-version-check | grep -iE '^(helm-python-sdk|kubernetes-validate|checkov|pytest)=='
if ! command -v openssl >/dev/null; then
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi

if [[ -z ${TAPWIRE_BIN_DIR:-} ]]; then
    step "binaries: cargo build --bin tapwire-listener --bin tapwire-replayer"
    (cd "$repo" && cargo build --quiet --bin tapwire-listener --bin tapwire-replayer)
    TAPWIRE_BIN_DIR=$repo/target/debug
fi
export TAPWIRE_BIN_DIR

step "chart tests: lint, render, Kubernetes API schemas, values schema, DaemonSet, binaries"
(cd "$helm_dir/tests" && "$venv/bin/python" -m pytest -p no:cacheprovider -v -s \
    --basetemp="$work/pytest" test_chart.py)

step "security policies: checkov on every rendered case"
rm -rf "$work/rendered"
"$venv/bin/python" "$helm_dir/tests/chart.py" "$work/rendered"
for case_dir in "$work/rendered"/*/; do
    echo "-- checkov: $(basename "$case_dir")"
    "$venv/bin/checkov" --config-file "$helm_dir/.checkov.yaml" --directory "$case_dir"
done

step "chart check passed"
