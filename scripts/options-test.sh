#!/usr/bin/env bash
# Options, statistics and introspection under LD_PRELOAD: each option really changes
# behaviour, bad options warn, the reports parse, malloc_trim gives memory back.
# Prints PASS/FAIL per check and `N passed, M failed`; exits non-zero on failure.
set -u
cd "$(dirname "$0")/.." || exit 2
LIB=${RSMALLOC_LIB:-$PWD/target/release/librsmalloc.so}
OUT=target/options-test
mkdir -p "$OUT"
cc -O2 -pthread -o "$OUT/probe" tests/options/probe.c -L"$(dirname "$LIB")" -Wl,-rpath,"$(dirname "$LIB")" -lrsmalloc || { echo "0 passed, 1 failed"; exit 1; }
run() { LD_PRELOAD=$LIB "$@"; }
pass=0 fail=0
check() { # name, condition result (0 = ok), detail
  if [ "$2" = 0 ]; then echo "PASS $1"; pass=$((pass + 1)); else echo "FAIL $1: $3"; fail=$((fail + 1)); fi
}

# 1. thread caches on (default) vs off: refills happen only with caches
def=$(run "$OUT/probe" counters 2>/dev/null | head -n 1)
off=$(RSMALLOC_TCACHE_BYTES=0 run "$OUT/probe" counters 2>/dev/null | head -n 1)
r_def=$(echo "$def" | sed -n 's/.*refills=\([0-9]*\).*/\1/p')
r_off=$(echo "$off" | sed -n 's/.*refills=\([0-9]*\).*/\1/p')
[ -n "$r_def" ] && [ -n "$r_off" ] && [ "$r_def" -gt 0 ] && [ "$r_off" -eq 0 ]
check "tcache_bytes=0 turns thread caches off" $? "default: '$def' off: '$off'"

# 2. arenas option, through RSMALLOC_CONF, shows in the report
rep=$(RSMALLOC_CONF="arenas:2,purge_delay_ms:100" run "$OUT/probe" counters 2>&1 >/dev/null)
echo "$rep" | grep -q "options: arenas=2 .*purge_delay_ms=100" ; check "RSMALLOC_CONF sets arenas and purge delay" $? "$(echo "$rep" | head -n 2)"
narenas=$(echo "$rep" | awk '/^arena /{on=1; next} /^class /{on=0} on' | wc -l)
[ "$narenas" -ge 1 ] && [ "$narenas" -le 2 ]; check "only 2 arenas in use" $? "$narenas arena rows"

# 3. bad values and unknown keys warn with one line naming them, and keep the defaults
w=$(RSMALLOC_ARENAS=abc run "$OUT/probe" counters 2>&1 >/dev/null)
echo "$w" | grep -q "^rsmalloc: warning: bad value for RSMALLOC_ARENAS" && ! echo "$w" | grep -q "options: arenas=abc"
check "bad RSMALLOC_ARENAS warns" $? "$(echo "$w" | head -n 2)"
echo "$w" | grep -Eq "options: arenas=[0-9]+" ; check "bad value keeps the default" $? "$(echo "$w" | grep options)"
w=$(RSMALLOC_CONF="nosuchkey:1" run "$OUT/probe" counters 2>&1 >/dev/null)
[ "$(echo "$w" | grep -c '^rsmalloc: warning: unknown option in RSMALLOC_CONF (ignored): nosuchkey$')" = 1 ]
check "unknown RSMALLOC_CONF key warns once" $? "$(echo "$w" | head -n 2)"

# 4. the report parses: header, totals, a class table of numeric rows
rows=$(echo "$rep" | awk '/^class /{on=1; next} on && NF==5' | grep -Ec '^ *[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+ +[0-9]+$')
echo "$rep" | grep -q "^___ rsmalloc statistics" && echo "$rep" | grep -q "hit rate: [0-9]*\.[0-9]%" && [ "$rows" -gt 3 ]
check "malloc_stats report parses" $? "$rows class rows"

# 5. RSMALLOC_STATS=1 prints the report at exit
ex=$(RSMALLOC_STATS=1 run python3 -c 'x=[str(i) for i in range(10000)]' 2>&1 >/dev/null | grep -c "^___ rsmalloc statistics")
[ "$ex" -ge 1 ]; check "RSMALLOC_STATS=1 reports at exit" $? "$ex reports"

# 6. malloc_trim gives cached memory back and says so
t=$(RSMALLOC_PURGE_DELAY_MS=100000 run "$OUT/probe" trim)
b=$(echo "$t" | sed -n 's/before=\([0-9]*\).*/\1/p'); a=$(echo "$t" | sed -n 's/.*after=\([0-9]*\).*/\1/p')
[ -n "$b" ] && [ -n "$a" ] && [ $((b - a)) -ge 1024 ] && echo "$t" | grep -q "trim=1"
check "malloc_trim lowers RSS by >= 1 MiB and returns 1" $? "$t"

# 7. malloc_info XML and mallinfo2
i=$(run "$OUT/probe" info)
echo "$i" | grep -q '^<malloc version="rsmalloc-' && echo "$i" | grep -q '^</malloc>' && echo "$i" | grep -Eq 'mallinfo2.arena=[1-9]'
check "malloc_info and mallinfo2" $? "$i"

# 8. rsmalloc-run preloads (and --stats reports)
o=$(scripts/rsmalloc-run --stats python3 -c 'import sys; print(open("/proc/self/maps").read().count("librsmalloc"))' 2>/tmp/rsmalloc-run.err)
[ "${o:-0}" -ge 1 ] && grep -q "^___ rsmalloc statistics" /tmp/rsmalloc-run.err
check "rsmalloc-run --stats" $? "maps count '$o'"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
