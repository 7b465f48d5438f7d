#!/usr/bin/env bash
# Counts the instructions switchyard executes per proxied HTTP request, under callgrind.
# Unlike requests per second on this shared 2-core machine (±20 % from run to run), the
# count moves by well under 1 % between runs, so a change of a few percent in the proxy's
# own work shows in one run. It counts user space only: a change in system calls (what
# they cost the kernel) does not show here; measure those with `bench`.
#
#   scripts/instructions.sh                          target/release/switchyard, 10 s
#   scripts/instructions.sh /tmp/switchyard-old 20   another build, 20 s of load
#   PROTOCOL=tcp scripts/instructions.sh             the same load through a `tcp`
#                                                    listener: the byte relay that TCP,
#                                                    and PostgreSQL and MySQL sessions after
#                                                    login, go through
#   PROFILE=/tmp/out scripts/instructions.sh         keeps the loaded run's callgrind
#                                                    profile (for callgrind_annotate)
#
# Load: wrk -t1 -c16 keep-alive GETs of a 13-byte body, served by nginx (Debian's
# valgrind, wrk and nginx). The proxy runs one worker, logs off. The count of a run that
# serves a single request is taken off, so the figure is per request in the steady state.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=${1:-target/release/switchyard}
seconds=${2:-10}
protocol=${PROTOCOL:-http}
case $protocol in http | tcp) ;; *) echo "PROTOCOL is http or tcp" >&2; exit 1 ;; esac
for tool in valgrind callgrind_annotate wrk nginx curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (Debian: valgrind wrk nginx curl)" >&2; exit 1; }
done

dir=$(mktemp -d)
trap 'kill $(cat "$dir/nginx.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
backend=$(free_port) listen=$(free_port) admin=$(free_port)

cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$backend; keepalive_requests 1000000; location / { return 200 "hello, world\n"; } }
}
EOF
nginx -c "$dir/nginx.conf" -p "$dir"

cat > "$dir/switchyard.toml" <<EOF
workers = 1
[admin]
listen = "127.0.0.1:$admin"
[log]
level = "warn"
access = "off"
[[listener]]
name = "bench"
listen = "127.0.0.1:$listen"
protocol = "$protocol"
pool = "backend"
[[pool]]
name = "backend"
servers = [ { name = "b1", address = "127.0.0.1:$backend" } ]
EOF

# Instructions of one run of the proxy under callgrind: started, $1 requests' worth of
# load ("one": a single request; else wrk for $seconds), stopped. Prints "requests total".
run() {
  valgrind --tool=callgrind --callgrind-out-file="$dir/out" "$binary" run -c "$dir/switchyard.toml" \
    >"$dir/valgrind.log" 2>&1 &
  local proxy=$! requests=1
  for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$listen/" && break; sleep 0.2; done
  if [ "$1" != one ]; then
    requests=$(wrk -t1 -c16 -d"${seconds}s" "http://127.0.0.1:$listen/small" | awk '/requests in/ {print $1}')
    requests=$((requests + 1))
  fi
  kill -INT "$proxy"
  wait "$proxy" || true
  echo "$requests $(callgrind_annotate "$dir/out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
}

read -r _ base < <(run one)
read -r requests total < <(run load)
if [ -n "${PROFILE:-}" ]; then cp "$dir/out" "$PROFILE"; fi
echo "$binary ($protocol): $requests requests, $(( (total - base) / (requests - 1) )) instructions per request"
echo "(startup, one request and shutdown: $base instructions, taken off)"
