#!/usr/bin/env bash
# Builds switchyard with profile-guided optimisation (PGO).
#
# Why: on the PostgreSQL transaction pool's hot path switchyard's user time is far more
# than its instruction count explains (one instruction per two cycles): its hot code
# is spread over tokio, the codecs and the pooler. A profile of real traffic lets the
# compiler lay the hot code out together and inline by measured use; `docs/benchmarks.md`
# ("Profile-guided build") has what it changes.
#
# How: an instrumented build serves the bench's own scenarios (real PostgreSQL, MariaDB,
# Postfix backends, real clients) for a few seconds each; the profile they leave steers a
# second release build. Needs what the test suite needs (`.ci/run` installs it), the
# bench's load generators (`apt-get install wrk sysbench postfix`) and
# `rustup component add llvm-tools`. Takes two release builds from scratch (with the
# release profile's fat LTO, about 8 and 6 minutes on 2 cores), the bench's, and about four
# minutes of training; the result is target/pgo/optimized/release/switchyard.
#
# Usage: scripts/pgo-build.sh [--skip-training]   (--skip-training: reuse the last profile)
#        PGO_TRAINING="pgpool mysql" scripts/pgo-build.sh   (train on these scenarios only)
set -euo pipefail
cd "$(dirname "$0")/.."

pgo_dir="$(pwd)/target/pgo"
profiles="$pgo_dir/profiles"
profdata="$pgo_dir/switchyard.profdata"

llvm_profdata="$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -n 1)"
if [ -z "$llvm_profdata" ]; then
    echo "llvm-profdata not found: run 'rustup component add llvm-tools'" >&2
    exit 1
fi

if [ "${1:-}" != "--skip-training" ]; then
    # Server binaries live in /usr/sbin, which a user's PATH may not hold.
    for tool in pgbench sysbench wrk mariadbd smtp-source smtp-sink; do
        if ! command -v "$tool" >/dev/null && [ ! -x "/usr/sbin/$tool" ]; then
            echo "$tool not found: the training runs the bench's scenarios (see this script's header)" >&2
            exit 1
        fi
    done
    echo "== instrumented build"
    RUSTFLAGS="-Cprofile-generate=$profiles" \
        cargo build --release -p switchyard --target-dir "$pgo_dir/instrumented"
    cargo build --release -p bench
    instrumented="$pgo_dir/instrumented/release/switchyard"
    bench="target/release/bench"

    rm -rf "$profiles" "$pgo_dir/training.log"
    mkdir -p "$profiles"
    export LLVM_PROFILE_FILE="$profiles/switchyard-%p-%m.profraw"
    train() {
        echo "== training: bench $*"
        # A row the bench could not measure says `n/a`: its path would be missing from
        # the profile, so the training stops there.
        if ! "$bench" --switchyard-bin "$instrumented" "$@" > "$pgo_dir/scenario.log" 2>&1 ||
            grep -q "n/a" "$pgo_dir/scenario.log"; then
            tail -n 20 "$pgo_dir/scenario.log" >&2
            exit 1
        fi
        cat "$pgo_dir/scenario.log" >> "$pgo_dir/training.log"
    }
    # What each training scenario runs: the PostgreSQL transaction pool (persistent and
    # connect-per-transaction clients, every query mode), session mode, MySQL, HTTP, TLS,
    # raw TCP and SMTP. PGO_TRAINING picks some of them, for a fleet that serves only
    # those: code the profile saw run little is laid out and inlined as cold.
    for scenario in ${PGO_TRAINING:-pgpool postgres mysql http tls latency connrate smtp}; do
        case "$scenario" in
            pgpool) train pgpool --pgpool-targets switchyard --pgpool-clients 16 \
                --pgpool-connect-clients 16,64 --pgpool-secs 4 --pgpool-rounds 1 --pgpool-scale 1 ;;
            postgres) train postgres --pg-targets switchyard --pg-secs 4 --pg-scale 1 ;;
            mysql) train mysql --targets switchyard --my-secs 4 --my-rounds 1 --my-threads 16 ;;
            http) train http --targets switchyard --http-secs 4 --http-rounds 1 ;;
            tls) train tls --targets switchyard --tls-secs 3 ;;
            latency) train latency --targets switchyard --latency-secs 3 --latency-warmup-secs 1 ;;
            connrate) train connrate --targets switchyard --connrate-secs 3 --connrate-warmup-secs 1 ;;
            smtp) train smtp --targets switchyard --smtp-messages 2000 ;;
            *) echo "unknown training scenario $scenario" >&2; exit 1 ;;
        esac
    done
    unset LLVM_PROFILE_FILE

    echo "== merging $(find "$profiles" -name '*.profraw' | wc -l) profiles"
    "$llvm_profdata" merge -o "$profdata" "$profiles"
fi

if [ ! -f "$profdata" ]; then
    echo "no profile at $profdata: run without --skip-training first" >&2
    exit 1
fi
echo "== optimised build"
# From scratch: cargo tracks the flags, not the profile's contents.
rm -rf "$pgo_dir/optimized"
RUSTFLAGS="-Cprofile-use=$profdata -Cllvm-args=-pgo-warn-missing-function=false" \
    cargo build --release -p switchyard --target-dir "$pgo_dir/optimized"
echo "built $pgo_dir/optimized/release/switchyard"
