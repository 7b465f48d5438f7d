#!/usr/bin/env bash
# Restarts the servers of one switchyard pool one at a time, with no failed request:
# for each server, drain it and wait until its last session ends, run the restart command,
# wait until health checks pass again, then put it back (`ready`). See docs/operations.md.
set -euo pipefail

usage() {
    cat >&2 <<'USAGE'
usage: rolling-restart.sh [--admin URL] [--timeout SECONDS] POOL RESTART_TEMPLATE SERVER...

  POOL               the pool the servers belong to
  RESTART_TEMPLATE   shell command that restarts one server; every {server} is replaced by
                     the server's name, e.g. 'systemctl restart app@{server}'. It should
                     return once the new process has started.
  SERVER...          server names as `switchyard ctl status` shows them, restarted in order

  --admin URL        the admin API (default: $SWITCHYARD_ADMIN, else http://127.0.0.1:9900)
  --timeout SECONDS  longest wait for each step: the drain, then health coming up (default 300)

Environment: SWITCHYARD names the switchyard binary (default: `switchyard` on PATH);
SWITCHYARD_ADMIN_TOKEN is the admin token, if the API wants one.

Exits 0 once every server was restarted and is back in service. On the first failure it
stops with a non-zero status and leaves that server drained, so a broken replica takes no
traffic while the others keep serving.
USAGE
    exit 2
}

admin=${SWITCHYARD_ADMIN:-http://127.0.0.1:9900}
timeout=300
switchyard=${SWITCHYARD:-switchyard}

while [[ $# -gt 0 ]]; do
    case $1 in
        --admin) [[ $# -ge 2 ]] || usage; admin=$2; shift 2 ;;
        --timeout) [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || usage; timeout=$2; shift 2 ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) usage ;;
        *) break ;;
    esac
done
[[ $# -ge 3 ]] || usage
pool=$1
template=$2
shift 2

log() { printf 'rolling-restart: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }
ctl() { "$switchyard" ctl --admin "$admin" "$@"; }

# Prints "STATE HEALTH LAST-CHECK-WORD" of a server, from the servers table of `ctl status`
# (columns POOL SERVER ADDRESS STATE HEALTH ...; CHECK is last). Empty if there is no such
# server.
server_row() {
    ctl status | awk -v pool="$pool" -v server="$1" '
        /^POOL / { servers = 1; next }
        servers && $1 == pool && $2 == server { print $4, $5, $NF; exit }'
}

# Waits until the server's health checks pass (health up, last check ok).
wait_healthy() {
    local server=$1 deadline=$((SECONDS + timeout)) state health check
    while true; do
        read -r state health check < <(server_row "$server") || true
        if [[ ${health:-} == up && ${check:-} == ok ]]; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            fail "$pool/$server: health is ${health:-unknown} (last check: ${check:-none}) after ${timeout}s; left drained"
        fi
        sleep 0.2
    done
}

for server in "$@"; do
    [[ -n $(server_row "$server") ]] || fail "no server $pool/$server (see: switchyard ctl status)"
done

for server in "$@"; do
    log "$pool/$server: draining"
    ctl drain "$pool" "$server" --wait --timeout "${timeout}s" >/dev/null \
        || fail "$pool/$server: did not drain within ${timeout}s; left drained"
    command=${template//\{server\}/$server}
    log "$pool/$server: restarting: $command"
    bash -c "$command" || fail "$pool/$server: restart command failed ($?); left drained"
    wait_healthy "$server"
    ctl ready "$pool" "$server" >/dev/null || fail "$pool/$server: ready failed"
    log "$pool/$server: back in service"
done
log "restarted ${*}"
