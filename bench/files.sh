#!/usr/bin/env bash
# File benchmark: a 100,000-request .gor file replayed with --timing asap into nginx on
# loopback, next to oha sending the same GETs straight to nginx (same connections, same run);
# then recording at 20,000 requests/s into a .gor file: captured vs written, listener peak RSS.
# Needs root (live capture). Installs nginx-light (apt, as root) and oha (cargo install) if
# missing. Extra arguments go to tapwire-files-bench, e.g. --requests 50000 --rounds 3.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
if ! command -v nginx >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  else
    echo "needs nginx: sudo apt-get install -y nginx-light" >&2
    exit 1
  fi
fi
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --bins --quiet

port=18091
dir=$(mktemp -d)
cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir;
  server {
    listen 127.0.0.1:$port reuseport;
    keepalive_requests 1000000;
    location / { return 200 "ok\n"; }
  }
}
CONF
nginx -c "$dir/nginx.conf" -p "$dir" -g 'daemon off;' &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null; wait $nginx_pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 50); do
  curl -fs "http://127.0.0.1:$port/" >/dev/null && break
  sleep 0.1
done
target/release/tapwire-files-bench --target "http://127.0.0.1:$port" "$@"
