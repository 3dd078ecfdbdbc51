#!/usr/bin/env bash
# Installs the system packages tapwire needs to build and test: libpcap's headers (the pcap crate
# links against libpcap) and the network tools the end-to-end tests use. As root on Debian or
# Ubuntu it installs them with apt-get; otherwise it prints the exact command and fails.
set -euo pipefail

missing=()
if ! [ -e /usr/include/pcap/pcap.h ] && ! [ -e /usr/include/pcap.h ]; then
  missing+=(libpcap-dev)
fi
if ! command -v pkg-config >/dev/null; then
  missing+=(pkg-config)
fi
# The end-to-end tests build network namespaces (ip), turn off segmentation offloads so segments
# really are MTU-sized (ethtool), upload with a real client (curl), and render the comparison
# report in headless Chromium (chromium).
for tool in ip:iproute2 ethtool:ethtool curl:curl chromium:chromium; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "Installing ${missing[*]} with apt-get..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "Installed ${missing[*]}."
else
  echo "tapwire needs these system packages: ${missing[*]}. Install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
