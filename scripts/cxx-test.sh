#!/usr/bin/env bash
# The C++ test, linked with -lrsmalloc and under LD_PRELOAD.
set -u
cd "$(dirname "$0")/.." || exit 2
LIBDIR=$PWD/target/release
OUT=target/cxx-test
mkdir -p "$OUT"
c++ -std=c++17 -O2 -pthread -o "$OUT/linked" tests/cxx/cxx_test.cc -L"$LIBDIR" -Wl,-rpath,"$LIBDIR" -Wl,--no-as-needed -lrsmalloc -ldl || exit 1
c++ -std=c++17 -O2 -pthread -o "$OUT/plain" tests/cxx/cxx_test.cc -ldl || exit 1
pass=0 fail=0
if "$OUT/linked"; then echo "PASS cxx (linked)"; pass=$((pass + 1)); else echo "FAIL cxx (linked)"; fail=$((fail + 1)); fi
if LD_PRELOAD=$LIBDIR/librsmalloc.so "$OUT/plain"; then echo "PASS cxx (preload)"; pass=$((pass + 1)); else echo "FAIL cxx (preload)"; fail=$((fail + 1)); fi
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
