#!/usr/bin/env bash
# Builds switchyard, starts two demo HTTP backends and switchyard in front of them, sends a
# few requests through it, shows the admin status, then keeps running until Ctrl-C. When
# their servers are installed it adds a throwaway PostgreSQL, MariaDB and SMTP sink, each
# behind a listener of its protocol.
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
work=$(mktemp -d)
pg_bin=""
my_dir=""
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  if [ -n "$pg_bin" ]; then as_user postgres "$pg_bin/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true; fi
  if [ -n "$my_dir" ] && [ -s "$my_dir/mariadbd.pid" ]; then kill "$(cat "$my_dir/mariadbd.pid")" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# PostgreSQL and MariaDB refuse to run as root: as root, a server runs as its package's
# OS user (postgres, mysql), from a directory that user can read.
as_user() { # user, command...
  local user=$1; shift
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u "$user" -- "$@"); else "$@"; fi
}

# The first TCP port from $1 on which nothing listens on 127.0.0.1.
free_port() {
  local port=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

cp examples/quickstart.toml "$work/switchyard.toml"
# The PostgreSQL part, when the server binaries are installed (Debian: postgresql).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
pg_note="PostgreSQL: skipped (no server binaries; apt-get install postgresql to try it)"
if [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] && { [ "$(id -u)" != 0 ] || id postgres >/dev/null 2>&1; }; then
  mkdir -p "$work/pg"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$work"; fi
  if as_user postgres "$pg_bin/initdb" -D "$work/pg" -U postgres --auth=trust --no-sync >/dev/null 2>&1 &&
     as_user postgres "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
       -o "-p 54329 -k $work -c listen_addresses=127.0.0.1" start >/dev/null 2>&1; then
    cat examples/quickstart-postgres.toml >> "$work/switchyard.toml"
    pg_note="PostgreSQL: psql -h 127.0.0.1 -p 6432 -U postgres -c 'SELECT version()'"
  else
    pg_note="PostgreSQL: skipped (the demo server did not start; see $work/pg.log)"
    pg_bin=""
  fi
else
  pg_bin=""
fi

# The MySQL part, when MariaDB is installed (Debian: mariadb-server): a throwaway server in
# $work/my on a free port, with a user `demo` that logs in over TCP with a password.
my_note="MySQL:      skipped (no MariaDB server; apt-get install mariadb-server to try it)"
my_port=""
mariadbd=$(command -v mariadbd || ls /usr/sbin/mariadbd 2>/dev/null || true)
if [ -n "$mariadbd" ] && command -v mariadb-install-db >/dev/null && command -v mariadb >/dev/null &&
   { [ "$(id -u)" != 0 ] || id mysql >/dev/null 2>&1; }; then
  my_dir="$work/my"
  my_port=$(free_port 33069)
  mkdir -p "$my_dir/tmp"
  if [ "$(id -u)" = 0 ]; then chmod 711 "$work"; chown -R mysql "$my_dir"; fi
  my_sql() { mariadb --no-defaults --socket="$my_dir/sock" -uroot -N -B -e "$1"; }
  my_started=""
  if as_user mysql env TMPDIR="$my_dir/tmp" mariadb-install-db --no-defaults --datadir="$my_dir/data" \
       --auth-root-authentication-method=normal --skip-test-db >"$work/my-install.log" 2>&1; then
    as_user mysql "$mariadbd" --no-defaults --datadir="$my_dir/data" --socket="$my_dir/sock" \
      --pid-file="$my_dir/mariadbd.pid" --log-error="$my_dir/error.log" --tmpdir="$my_dir/tmp" \
      --port="$my_port" --bind-address=127.0.0.1 --skip-name-resolve \
      --innodb-buffer-pool-size=16M >/dev/null 2>&1 &
    for _ in $(seq 1 300); do
      if grep -q 'ready for connections' "$my_dir/error.log" 2>/dev/null; then my_started=yes; break; fi
      if ! kill -0 $! 2>/dev/null; then break; fi
      sleep 0.1
    done
  fi
  if [ -n "$my_started" ] &&
     my_sql "CREATE USER 'demo'@'%' IDENTIFIED BY 'demo-pw'; CREATE DATABASE demo;
             GRANT ALL ON demo.* TO 'demo'@'%';" >>"$work/my-install.log" 2>&1; then
    sed "s/127\.0\.0\.1:33069/127.0.0.1:$my_port/" examples/quickstart-mysql.toml >> "$work/switchyard.toml"
    my_note="MySQL:      mariadb -h 127.0.0.1 -P 6033 -u demo -pdemo-pw demo -e 'SELECT VERSION(), CURRENT_USER()'"
  else
    my_note="MySQL:      skipped (the demo MariaDB did not start; see $my_dir/error.log)"
    my_port=""
  fi
fi

# The SMTP part, when aiosmtpd is installed (Debian: python3-aiosmtpd): a server that prints
# every message it receives.
smtp_note="SMTP: skipped (apt-get install python3-aiosmtpd swaks to try it)"
smtp=""
if /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null; then
  smtp=yes
  /usr/bin/python3 -m aiosmtpd -n -l 127.0.0.1:2526 & pids+=($!)
  cat examples/quickstart-smtp.toml >> "$work/switchyard.toml"
  if command -v swaks >/dev/null; then
    smtp_note="SMTP:       swaks --server 127.0.0.1:2525 --to you@example.com   (aiosmtpd prints it)"
  else
    smtp_note="SMTP:       /usr/bin/python3 -c \"import smtplib; smtplib.SMTP('127.0.0.1', 2525).sendmail('me@example.com', ['you@example.com'], 'Subject: hi\\n\\nhello')\"   (aiosmtpd prints it)"
  fi
fi

$bin/examples/demo_backend app1 127.0.0.1:9001 & pids+=($!)
$bin/examples/demo_backend app2 127.0.0.1:9002 & pids+=($!)
$bin/switchyard run -c "$work/switchyard.toml" & pids+=($!)

# Wait until switchyard reports both servers up (first health checks done).
for _ in $(seq 1 100); do
  status=$($bin/switchyard ctl status 2>/dev/null || true)
  if grep -q 'app2 .* up .* ok$' <<<"$status" &&
     { [ -z "$smtp" ] || grep -q 'sink .* up .* ok$' <<<"$status"; } &&
     { [ -z "$my_port" ] || grep -q 'my1 .* up .* ok$' <<<"$status"; }; then break; fi
  sleep 0.1
done

get() { # host, port, Host header
  if command -v curl >/dev/null; then curl -s -H "Host: $3" "http://$1:$2/"; else
    exec 3<>"/dev/tcp/$1/$2"; printf 'GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$3" >&3; tail -n1 <&3; exec 3>&-; fi
}
echo
echo "== four HTTP requests through switchyard (127.0.0.1:8080), balanced round robin =="
for _ in 1 2 3 4; do get 127.0.0.1 8080 demo; done
echo "== Host: api.localhost is routed to the api pool (app2 only) =="
for _ in 1 2; do get 127.0.0.1 8080 api.localhost; done
echo "== the raw TCP listener (127.0.0.1:8081) balances the same servers =="
for _ in 1 2; do get 127.0.0.1 8081 demo; done
if [ -n "$my_port" ]; then
  echo "== one query through the MySQL listener (127.0.0.1:6033) to MariaDB on :$my_port =="
  mariadb --no-defaults -h 127.0.0.1 -P 6033 -u demo -pdemo-pw demo -e 'SELECT VERSION(), CURRENT_USER()'
fi
if [ -n "$smtp" ]; then
  echo "== one message through the SMTP listener (127.0.0.1:2525); aiosmtpd prints it =="
  /usr/bin/python3 -c "import smtplib; s = smtplib.SMTP('127.0.0.1', 2525); s.sendmail('me@example.com', ['you@example.com'], 'Subject: hello\r\n\r\nfrom the quick start\r\n'); s.quit()"
fi
echo
echo "== switchyard ctl status =="
$bin/switchyard ctl status
echo
echo "switchyard is running. Try:"
echo "  HTTP:       curl http://127.0.0.1:8080/   and   curl -H 'Host: api.localhost' http://127.0.0.1:8080/"
echo "  TCP:        curl http://127.0.0.1:8081/"
echo "  $pg_note"
echo "  $my_note"
echo "  $smtp_note"
echo "  Dashboard:  http://127.0.0.1:9900/   (metrics: http://127.0.0.1:9900/metrics)"
echo "  Drain:      $bin/switchyard ctl drain app app1   (then: ctl ready app app1)"
echo "Ctrl-C stops everything."
wait
