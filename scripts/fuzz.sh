#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for a while each and prints a table of
# executions and findings. On demand, not in CI: the default is 10 minutes per target.
#
#   scripts/fuzz.sh                 every target, 600 s each
#   scripts/fuzz.sh 60              every target, 60 s each
#   scripts/fuzz.sh 300 mysql_packet authority
#
# Needs nightly and cargo-fuzz: rustup toolchain install nightly && cargo install cargo-fuzz.
# A crash leaves its input in fuzz/artifacts/TARGET/; replay it with
# `cargo +nightly fuzz run TARGET FILE`, fix the bug, and add the input as a unit test of
# the parser it broke (the regression test), as the parsers' tests with captured bytes do.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
shift || true
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi

log_dir=$(mktemp -d)
printf 'fuzzing %d targets for %d s each; logs in %s\n' "${#targets[@]}" "$seconds" "$log_dir"
cargo +nightly fuzz build >/dev/null

failed=0
rows=()
for target in "${targets[@]}"; do
  log="$log_dir/$target.log"
  mkdir -p "fuzz/corpus/$target"
  if cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    result="no crash"
  else
    result="CRASH: $(grep -o 'fuzz/artifacts/[^ ]*' "$log" | tail -n1)"
    failed=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1)
  corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
  rows+=("$(printf '%-20s %14s %8s  %s' "$target" "${runs:-?}" "$corpus" "$result")")
  printf '%s\n' "${rows[-1]}"
done

echo
printf '%-20s %14s %8s  %s\n' TARGET EXECUTIONS CORPUS RESULT
printf '%s\n' "${rows[@]}"
exit "$failed"
