#!/usr/bin/env bash
# Runs every C test of c-tests/ twice: the binary linked against librsmalloc.so
# (c-tests/build/NAME.linked) and the plain binary with LD_PRELOAD of the library
# (c-tests/build/NAME.plain). Prints `PASS name (linked)` / `FAIL name (preload)` per run
# and finally `N passed, M failed`; exits non-zero if any run failed.
#
# Usage (from anywhere; after `cargo build --release && make -C c-tests`):
#   bash scripts/c-tests.sh [test-name ...]
# Environment:
#   RSMALLOC_LIB   library to preload (default: <repo>/target/release/librsmalloc.so)
#   C_TESTS_TIMEOUT  per-run timeout in seconds (default 120)
#   C_TESTS_MODES    "linked preload" (default), or just one of them
# Full output of each run is kept in c-tests/build/logs/NAME.MODE.log.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
LIB=${RSMALLOC_LIB:-$ROOT/target/release/librsmalloc.so}
TIMEOUT=${C_TESTS_TIMEOUT:-120}
MODES=${C_TESTS_MODES:-linked preload}
BUILD=$ROOT/c-tests/build
LOGS=$BUILD/logs

if [ ! -f "$LIB" ]; then
  echo "c-tests: library $LIB not found (run: cargo build --release)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
case "$LIB" in /*) ;; *) LIB=$ROOT/$LIB ;; esac

if [ $# -gt 0 ]; then
  names="$*"
else
  names=$(cd "$ROOT/c-tests" && ls -- *.c 2>/dev/null | sed 's/\.c$//' | sort)
fi
if [ -z "$names" ]; then
  echo "c-tests: no tests found in c-tests/" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
mkdir -p "$LOGS"

pass=0
fail=0
failed_runs=""
for name in $names; do
  for mode in $MODES; do
    case $mode in
      linked) bin=$BUILD/$name.linked; envs=() ;;
      preload) bin=$BUILD/$name.plain; envs=("LD_PRELOAD=$LIB") ;;
      *) echo "c-tests: unknown mode $mode" >&2; exit 2 ;;
    esac
    log=$LOGS/$name.$mode.log
    if [ ! -x "$bin" ]; then
      echo "FAIL $name ($mode)"
      echo "    missing binary $bin (run: make -C c-tests)"
      fail=$((fail + 1)); failed_runs="$failed_runs $name($mode)"
      continue
    fi
    # Run from the build directory so that relative paths and core files stay there.
    # (the explicit `exit` keeps bash from reporting "Aborted" etc. on the terminal: the
    # subshell, whose stderr is the log, reports it instead)
    (cd "$BUILD" && env "${envs[@]}" timeout -k 10 "$TIMEOUT" "$bin"; exit $?) >"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
      echo "PASS $name ($mode)"
      pass=$((pass + 1))
    else
      if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then why="timed out after ${TIMEOUT}s"
      elif [ $rc -gt 128 ]; then why="killed by signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null))"
      else why="exit status $rc"; fi
      echo "FAIL $name ($mode): $why"
      # Show the failure lines (or the end of the output) to make the report self-contained.
      if grep -q '^FAIL' "$log"; then
        grep '^FAIL' "$log" | head -n 25 | sed 's/^/    /'
        nf=$(grep -c '^FAIL' "$log")
        [ "$nf" -gt 25 ] && echo "    ... $((nf - 25)) more FAIL lines in $log"
      fi
      tail -n 5 "$log" | grep -v '^FAIL' | sed 's/^/    | /'
      fail=$((fail + 1)); failed_runs="$failed_runs $name($mode)"
    fi
  done
done
[ $fail -gt 0 ] && echo "failed:$failed_runs (logs in c-tests/build/logs/)"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
