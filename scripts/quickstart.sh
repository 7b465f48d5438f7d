#!/usr/bin/env bash
# Builds switchyard, starts two demo HTTP backends and switchyard in front of them, sends a
# few requests through it, shows the admin status, then keeps running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

# The pg_query crate (PostgreSQL's parser, for the read/write split) needs libclang to build.
if ! ldconfig -p 2>/dev/null | grep -q 'libclang'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing libclang-dev (needed to build the pg_query crate)..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libclang-dev >/dev/null
  else
    echo "switchyard needs libclang to build: sudo apt-get install libclang-dev" >&2
    exit 1
  fi
fi

cargo build --release -p switchyard --bin switchyard --example demo_backend
bin=target/release

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

$bin/examples/demo_backend app1 127.0.0.1:9001 & pids+=($!)
$bin/examples/demo_backend app2 127.0.0.1:9002 & pids+=($!)
$bin/switchyard run -c examples/quickstart.toml & pids+=($!)

# Wait until switchyard reports both servers up (first health checks done).
for _ in $(seq 1 100); do
  if $bin/switchyard ctl status 2>/dev/null | grep -q 'app2 .* up .* ok$'; then break; fi
  sleep 0.1
done

echo
echo "== four requests through switchyard (127.0.0.1:8080), balanced round robin =="
for _ in 1 2 3 4; do
  if command -v curl >/dev/null; then curl -s http://127.0.0.1:8080/; else
    exec 3<>/dev/tcp/127.0.0.1/8080; printf 'GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n' >&3; tail -n1 <&3; exec 3>&-; fi
done
echo
echo "== switchyard ctl status =="
$bin/switchyard ctl status
echo
echo "switchyard is running: try 'curl http://127.0.0.1:8080/', 'target/release/switchyard ctl drain app app1',"
echo "or http://127.0.0.1:9900/metrics. Ctrl-C stops everything."
wait
