#!/usr/bin/env bash
# Runs the libFuzzer target fuzz/fuzz_targets/ops.rs for a bounded time (default 60 s).
# Installs cargo-fuzz from crates.io if it is missing. cargo-fuzz needs nightly compiler
# flags: on a stable toolchain they are unlocked with RUSTC_BOOTSTRAP=1. Runs without a
# sanitizer (-s none): the target links rsmalloc, whose malloc then serves the whole process.
# Corpus: fuzz/corpus/ops (kept between runs; not committed); a crash leaves its input in
# fuzz/artifacts/ops/ and the script exits non-zero.
# Usage: scripts/fuzz.sh [SECONDS]
set -u
cd "$(dirname "$0")/../fuzz" || exit 2
SECS=${1:-60}
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz || {
    echo "FAIL fuzz: cannot install cargo-fuzz"; echo "0 passed, 1 failed"; exit 1; }
fi
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz build -s none ops; then
  echo "FAIL fuzz: build failed"; echo "0 passed, 1 failed"; exit 1
fi
mkdir -p corpus/ops
start=$(date +%s)
cargo fuzz run -s none ops corpus/ops -- -max_total_time="$SECS" -rss_limit_mb=4096 -max_len=4096 \
  -print_final_stats=1 >fuzz.log 2>&1
rc=$?
grep -E '^(#[0-9]+ *DONE|stat::number_of_executed_units|Done )' fuzz.log | tail -n 3
if [ $rc -eq 0 ]; then
  echo "PASS fuzz ops ($(( $(date +%s) - start ))s)"
  echo "1 passed, 0 failed"
else
  echo "FAIL fuzz ops: exit status $rc; end of fuzz/fuzz.log:"
  grep -v '^"' fuzz.log | tail -n 30 | sed 's/^/    /'
  echo "0 passed, 1 failed"
fi
exit $rc
