#!/usr/bin/env bash
# Builds the Debian packages of tapwire-listener and tapwire-replayer into target/debian/ with
# cargo-deb (installed with `cargo install --locked` when missing: about 5 minutes on 2 cores).
# What goes where is in listener/Cargo.toml and replayer/Cargo.toml ([package.metadata.deb]) and
# deploy/packages.md. Run: make package
# TAPWIRE_PACKAGE_PROFILE=dev packages the debug build instead (what `make test` already built):
# CI checks the packaging that way without a second, release, build of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
CARGO_DEB_VERSION=3.8.0

if ! "$CARGO" deb --version >/dev/null 2>&1; then
  echo "Installing cargo-deb $CARGO_DEB_VERSION with cargo install..."
  "$CARGO" install --locked --version "$CARGO_DEB_VERSION" cargo-deb
fi

profile=${TAPWIRE_PACKAGE_PROFILE:-release}
"$CARGO" build --profile "$profile" --locked -p tapwire-listener -p tapwire-replayer
# The man page and shell completions, printed by each binary from its own flags.
bin_dir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
mkdir -p target/docs
for package in tapwire-listener tapwire-replayer; do
  "$bin_dir/$package" --generate man | gzip -9n > "target/docs/$package.1.gz"
  "$bin_dir/$package" --generate bash > "target/docs/$package.bash"
  "$bin_dir/$package" --generate zsh > "target/docs/_$package"
  "$bin_dir/$package" --generate fish > "target/docs/$package.fish"
done
for package in tapwire-listener tapwire-replayer; do
  # --strip: the release profile keeps line tables for backtraces, which a package does not ship.
  "$CARGO" deb -p "$package" --profile "$profile" --no-build --strip
done
ls -l target/debian/*.deb
