#!/usr/bin/env bash
# Checks the Debian packages end to end, as CI runs it (`make package-check`, as root):
# builds them (scripts/package.sh), lints them with lintian (errors and warnings fail; overrides
# live in deploy/debian/*.lintian-overrides, each with its reason), checks the systemd units
# (systemd-analyze verify, and security with an exposure threshold), installs both packages with
# dpkg -i, runs the installed binaries against the installed configuration, checks where every
# file landed, then purges both and checks nothing is left.
# Never starts a service: the packages neither enable nor start their units. It refuses to run
# if either package is already installed, so a developer's own installation is never purged.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(tapwire-listener tapwire-replayer)
# Overall exposure from `systemd-analyze security`, in tenths (2.0 prints as 20): today the
# listener scores 1.9 (it must open packet sockets) and the replayer 1.5.
max_exposure=(25 20)

fail() { echo "check-packages: FAIL: $*" >&2; exit 1; }
# Known to dpkg in any state but purged: installed, half-installed, or its conffiles left.
present() {
  local state
  state=$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != not-installed ]
}
step() { echo "== $*"; }

[ "$(id -u)" -eq 0 ] || fail "run as root (it installs and purges the packages): sudo make package-check"
command -v apt-get >/dev/null || fail "needs a Debian or Ubuntu machine (apt-get, dpkg)"
for package in "${packages[@]}"; do
  if present "$package"; then
    fail "$package is installed on this machine (or its configuration is); this check would purge it."
  fi
done

missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  step "Installing ${missing[*]} with apt-get (nothing is started)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

step "Building the packages"
scripts/package.sh
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-1
arch=$(dpkg --print-architecture)
debs=()
for package in "${packages[@]}"; do
  debs+=("target/debian/${package}_${version}_${arch}.deb")
  [ -f "${debs[-1]}" ] || fail "${debs[-1]} was not built"
done

# dpkg -i would silently take over (and the purge below delete) files that exist unowned, such
# as a Docker user's /etc/tapwire/listener.toml: refuse instead.
for deb in "${debs[@]}"; do
  while read -r path; do
    if [ -e "$path" ] && ! [ -d "$path" ]; then
      fail "$path exists on this machine (not from a package); this check would overwrite and then delete it"
    fi
  done < <(dpkg-deb --fsys-tarfile "$deb" | tar -t | sed 's|^\./|/|')
done

step "lintian ${debs[*]}"
lintian --fail-on error,warning "${debs[@]}"

step "Unit files: systemd-analyze security (offline)"
for i in "${!packages[@]}"; do
  unit=deploy/systemd/${packages[$i]}.service
  systemd-analyze security --offline=true --threshold="${max_exposure[$i]}" --no-pager "$unit" | tail -1 \
    || fail "$unit: exposure above ${max_exposure[$i]} (tenths): the unit's hardening was weakened"
done

# From here on the machine holds the packages: purge them whatever happens.
installed=0
cleanup() {
  if [ "$installed" -eq 1 ]; then
    dpkg --purge "${packages[@]}" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "dpkg -i ${debs[*]}"
installed=1
if ! dpkg -i "${debs[@]}"; then
  step "Installing missing dependencies with apt-get -f install"
  DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq --no-install-recommends >/dev/null
fi
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package")
  [ "$status" = "install ok installed" ] || fail "$package: dpkg status is '$status'"
done
dpkg-query -W -f='${Depends}' tapwire-listener | grep -q 'libpcap0.8' \
  || fail "tapwire-listener does not depend on libpcap0.8"

step "Installed files"
for package in "${packages[@]}"; do
  side=${package#tapwire-}
  for file in "/usr/bin/$package" "/usr/lib/systemd/system/$package.service" \
    "/etc/default/$package" "/etc/tapwire/$side.toml" "/usr/share/doc/$package/copyright" \
    "/usr/share/doc/$package/changelog.Debian.gz" "/usr/share/man/man1/$package.1.gz" \
    "/usr/share/bash-completion/completions/$package" "/usr/share/zsh/vendor-completions/_$package" \
    "/usr/share/fish/vendor_completions.d/$package.fish"; do
    [ -e "$file" ] || fail "$package: $file is missing"
    dpkg -S "$file" >/dev/null || fail "$package: $file is not owned by the package"
  done
  for conffile in "/etc/default/$package" "/etc/tapwire/$side.toml"; do
    dpkg-query -W -f='${Conffiles}\n' "$package" | grep -q " $conffile " \
      || fail "$package: $conffile is not a conffile (an upgrade would overwrite local edits)"
  done
  zcat "/usr/share/man/man1/$package.1.gz" | grep -qF -- '\-\-config' \
    || fail "$package: the installed man page does not document --config"
  echo "$package: binary, unit, /etc/default/$package, /etc/tapwire/$side.toml (conffiles), copyright, changelog, man page, bash/zsh/fish completions"
done

step "systemd-analyze verify (installed units, installed binaries)"
systemd-analyze verify "${packages[@]/%/.service}" \
  || fail "systemd-analyze verify found problems in the installed units"
for package in "${packages[@]}"; do
  # Read from the unit files and links, so it needs no running systemd.
  state=$(systemctl is-enabled "$package.service" 2>&1 || true)
  [ "$state" = disabled ] || fail "$package.service is '$state' after install, not 'disabled'"
  echo "$package.service: $state (installing enables and starts nothing)"
done

step "The installed binaries, each with its /etc/default environment, as its unit runs it"
as_unit() { # PACKAGE COMMAND...: runs COMMAND in the environment the unit reads (EnvironmentFile=)
  local package=$1
  shift
  (
    set -a
    # shellcheck source=/dev/null
    . "/etc/default/$package"
    set +a
    "$@"
  )
}
# The packages were built from this checkout: --version names its commit.
revision=$(git rev-parse --short=12 HEAD)
for side in listener replayer; do
  expected="tapwire-$side ${version%-*} (revision $revision)"
  as_unit "tapwire-$side" "/usr/bin/tapwire-$side" --version | grep -xF "$expected" \
    || fail "/usr/bin/tapwire-$side --version does not say $expected"
done
for side in listener replayer; do
  as_unit "tapwire-$side" "/usr/bin/tapwire-$side" --config "/etc/tapwire/$side.toml" --check-config >/dev/null \
    || fail "/usr/bin/tapwire-$side rejects the installed /etc/tapwire/$side.toml"
  echo "/usr/bin/tapwire-$side --config /etc/tapwire/$side.toml --check-config: valid"
done

step "dpkg --purge ${packages[*]}"
dpkg --purge "${packages[@]}"
installed=0
for package in "${packages[@]}"; do
  side=${package#tapwire-}
  if present "$package"; then
    fail "$package is still known to dpkg after purge"
  fi
  for file in "/usr/bin/$package" "/usr/lib/systemd/system/$package.service" \
    "/etc/default/$package" "/etc/tapwire/$side.toml" "/usr/share/doc/$package"; do
    [ ! -e "$file" ] || fail "$package: $file is left after purge"
  done
done
[ ! -e /etc/tapwire ] || fail "/etc/tapwire is left after purge"

echo "check-packages: OK: ${debs[*]} lint clean, install, run from /usr/bin and purge cleanly"
