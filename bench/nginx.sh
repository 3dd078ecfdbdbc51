# Sourced by the benchmarks that replay into nginx: installs nginx-light (apt, as root) and oha
# (cargo install) if missing, then `start_nginx PORT` runs a minimal nginx on 127.0.0.1:PORT
# answering every request with 200 "ok", stopped and cleaned up when the script exits.

if ! command -v nginx >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  else
    echo "needs nginx: sudo apt-get install -y nginx-light" >&2
    exit 1
  fi
fi
command -v oha >/dev/null || cargo install oha --locked

start_nginx() {
  local port=$1
  nginx_dir=$(mktemp -d)
  cat > "$nginx_dir/nginx.conf" <<CONF
worker_processes 1;
pid $nginx_dir/nginx.pid;
error_log $nginx_dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $nginx_dir;
  server {
    listen 127.0.0.1:$port reuseport;
    keepalive_requests 1000000;
    location / { return 200 "ok\n"; }
  }
}
CONF
  nginx -c "$nginx_dir/nginx.conf" -p "$nginx_dir" -g 'daemon off;' &
  nginx_pid=$!
  trap 'kill $nginx_pid 2>/dev/null; wait $nginx_pid 2>/dev/null; rm -rf "$nginx_dir"' EXIT
  for _ in $(seq 1 50); do
    curl -fs "http://127.0.0.1:$port/" >/dev/null && return
    sleep 0.1
  done
  echo "nginx did not start on port $port" >&2
  exit 1
}
