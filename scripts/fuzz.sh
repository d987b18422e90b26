#!/usr/bin/env bash
# Coverage-guided fuzzing of synod's decoders under libFuzzer (cargo-fuzz).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Runs each target (all of them by default; `cargo run -p synod-fuzz --bin
# fuzz-seeds -- --list` names them) for SECONDS_PER_TARGET (default 60),
# starting from the seeds the targets build and the regression corpus in
# crates/fuzz/corpus/<target>/. What libFuzzer learns is kept in
# target/fuzz/corpus/<target>/ for the next run. A crash stops the run and is
# saved under fuzz/artifacts/synod/; add it to crates/fuzz/corpus/<target>/
# with the fix, so that `cargo test -p synod-fuzz` replays it.
#
# cargo-fuzz passes unstable compiler flags (the sanitizer); the only
# toolchain here is stable, so RUSTC_BOOTSTRAP=1 lets it take them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
case "$seconds" in
  ''|*[!0-9]*) echo "fuzz.sh: SECONDS_PER_TARGET must be a whole number, not '$seconds'" >&2; exit 2 ;;
esac

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2 --quiet
fi
export RUSTC_BOOTSTRAP=1

cargo build --quiet --release -p synod-fuzz --bin fuzz-seeds
seeds=target/fuzz/seeds
rm -rf "$seeds"
target/release/fuzz-seeds "$seeds"
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(target/release/fuzz-seeds --list)
fi

(cd fuzz && cargo fuzz build --fuzz-dir . --release synod)
for target in "${targets[@]}"; do
  [ -d "$seeds/$target" ] || { echo "fuzz.sh: no target named '$target'" >&2; exit 2; }
  corpus=target/fuzz/corpus/$target
  regressions=crates/fuzz/corpus/$target
  mkdir -p "$corpus" "$regressions"
  log=target/fuzz/$target.log
  echo "== $target: ${seconds} s"
  # -malloc_limit_mb: no single allocation may pass 64 MiB whatever the input.
  if ! (cd fuzz && SYNOD_FUZZ_TARGET=$target cargo fuzz run --fuzz-dir . --release synod \
    "../$corpus" "../$seeds/$target" "../$regressions" -- \
    -max_total_time="$seconds" -max_len=65536 -malloc_limit_mb=64 -rss_limit_mb=2048 -print_final_stats=1 \
    >"../$log" 2>&1); then
    tail -40 "$log"
    echo "fuzz.sh: $target failed; the whole output is in $log" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log"
  echo "corpus: $(find "$corpus" -type f | wc -l) inputs"
done
