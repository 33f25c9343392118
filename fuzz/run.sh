#!/usr/bin/env bash
# A bounded fuzz pass over every target in fuzz_targets/ (docs/fuzzing.md): each runs for FUZZ_SECONDS
# (default 25) from its committed seeds, and the pass fails on the first finding, leaving the input that
# triggered it under fuzz/artifacts/TARGET/. Needs a nightly toolchain (cargo-fuzz builds with sanitizers);
# installs cargo-fuzz from crates.io when it is missing. FUZZ=skip leaves the pass out.
#
#   bash fuzz/run.sh                 # every target
#   bash fuzz/run.sh routes          # the targets named
#   FUZZ_SECONDS=600 bash fuzz/run.sh items_body
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=${FUZZ_SECONDS:-25}

if [ "${FUZZ:-run}" = skip ]; then
  echo "fuzz: skipped (FUZZ=skip)"
  exit 0
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: skipped: no nightly toolchain (cargo +nightly --version fails); rustup toolchain install nightly"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
  cargo +nightly install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build
for target in "${targets[@]}"; do
  log=$(mktemp)
  # One process, the time bound, and the totals printed at the end.
  if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target FAILED; the input is under fuzz/artifacts/$target/ (docs/fuzzing.md: reproducing a finding)"
    rm -f "$log"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  echo "fuzz: $target: ${runs:-?} inputs in ${seconds} s, no finding"
  rm -f "$log"
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
