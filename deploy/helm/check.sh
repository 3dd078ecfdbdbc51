#!/usr/bin/env bash
# Validates the Helm chart deploy/helm/tapwire without a cluster or a helm binary:
#   1. pytest deploy/helm/tests: Helm v4's linter (strict) and template engine (helm-python-sdk)
#      on the defaults, every examples/*.yaml and tests/values-options.yaml; every rendered
#      object against the Kubernetes 1.25 and 1.37 API schemas in strict mode; typos in values
#      refused by values.schema.json; the listener DaemonSet's security fields; the rendered
#      configuration accepted by the real binaries (--check-config).
#   2. checkov (security policies) on the same rendered manifests; any failed check fails.
# Tools go into a virtualenv of its own, in a cache directory outside the clone so that later
# runs on the same machine reuse it (named by the hash of requirements.txt, which pins them all;
# override with CHART_CHECK_VENV). The binaries are built with cargo if needed (or taken from
# TAPWIRE_BIN_DIR). Outputs (rendered manifests) go to target/chart-check.
# Run: make chart-check   (or deploy/helm/check.sh)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
helm_dir=$repo/deploy/helm
work=$repo/target/chart-check
requirements=$helm_dir/requirements.txt
python=${PYTHON:-python3}
tools_id=$(cat "$requirements" <("$python" --version) | sha256sum | cut -c1-16)
venv=${CHART_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tapwire/chart-check-$tools_id}

mkdir -p "$work"
started=$SECONDS
step() { printf '\n== %s (%ds)\n' "$*" $((SECONDS - started)); }

step "tools: $venv"
if [[ ! -f $venv/complete ]]; then
    echo "installing the pinned tools from PyPI (about 150 MB of wheels, 100 s; once per machine)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    touch "$venv/complete"
fi
"$venv/bin/pip" freeze --disable-pip-version-check | grep -iE '^(helm-python-sdk|kubernetes-validate|checkov|pytest)=='
if ! command -v openssl >/dev/null; then
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi

if [[ -z ${TAPWIRE_BIN_DIR:-} ]]; then
    # The same build as `make test`'s, so that after it this is a no-op.
    step "binaries: cargo build --bins"
    (cd "$repo" && cargo build --quiet --bins)
    TAPWIRE_BIN_DIR=${CARGO_TARGET_DIR:-$repo/target}/debug
fi
export TAPWIRE_BIN_DIR

step "chart tests: lint, render, Kubernetes API schemas, values schema, DaemonSet, binaries"
(cd "$helm_dir/tests" && "$venv/bin/python" -m pytest -p no:cacheprovider -v -s \
    --basetemp="$work/pytest" test_chart.py)

step "security policies: checkov on every rendered case"
rm -rf "$work/rendered"
"$venv/bin/python" "$helm_dir/tests/chart.py" "$work/rendered"
# One run over all cases (a failure names its file as /<case>/<template>.yaml): checkov's start-up
# dominates, one run per case took 27 s instead of 9.
# The checks the chart fails on purpose are skipped per object, each with its reason, in the
# checkov.io/skip* annotations of the templates; nothing is skipped here.
"$venv/bin/checkov" --framework kubernetes --skip-download --compact --quiet \
    --directory "$work/rendered"

step "chart check passed"
