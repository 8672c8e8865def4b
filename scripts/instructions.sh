#!/usr/bin/env bash
# Instructions per malloc+free pair, counted with valgrind --tool=callgrind,
# for each allocator (preloaded like in scripts/bench.sh) and a "bump" floor
# (bench-programs/bump.c: malloc bumps a pointer, free does nothing).
#
#   bash scripts/instructions.sh        # writes bench-results/instructions.md and prints it
#
# Programs (one thread):
#   fastpath N          N malloc+free pairs of 16..256 bytes in a plain loop
#   small-loop 1 N      N iterations of the small-loop bench (ring of 64 live blocks)
# Each is also run with N=0: that is the fixed cost (process start-up, dynamic
# linking, allocator initialisation), so (Ir(N) - Ir(0)) / N is the marginal cost
# of one loop iteration (the loop itself included - see the bump row for the floor).
#
# Knobs: N=1000000, ALLOCATORS="bump glibc rsmalloc jemalloc tcmalloc mimalloc",
#        RSMALLOC_LIB=target/release/librsmalloc.so, OUT=bench-results
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
N=${N:-1000000}
ALLOCATORS=${ALLOCATORS:-"bump glibc rsmalloc jemalloc tcmalloc mimalloc"}
RSMALLOC_LIB=${RSMALLOC_LIB:-$ROOT/target/release/librsmalloc.so}
OUT=${OUT:-$ROOT/bench-results}
BP=$ROOT/bench-programs
BUILD=$BP/build
say() { printf '%s\n' "instructions: $*" >&2; }

if ! command -v valgrind >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing valgrind"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1; }
  fi
  command -v valgrind >/dev/null 2>&1 || { say "valgrind missing (apt-get install valgrind); nothing to measure"; exit 1; }
fi
make -s -C "$BP" >/dev/null || { say "building bench-programs failed"; exit 1; }

find_lib() {
  local n p d
  for n in "$@"; do
    p=$(ldconfig -p 2>/dev/null | awk -v n="$n" '$1 == n { print $NF; exit }')
    if [ -z "$p" ]; then
      for d in /usr/lib/*-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do [ -e "$d/$n" ] && { p=$d/$n; break; }; done
    fi
    [ -n "$p" ] && [ -e "$p" ] && { printf '%s\n' "$p"; return 0; }
  done
  return 1
}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/rsmalloc-instr.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# ir LIB PROG ARGS... -> prints total Ir, or nothing on failure
ir() {
  local lib=$1; shift
  local f=$TMP/cg.out
  rm -f "$f"
  local envargs=(-u LD_PRELOAD)
  [ -n "$lib" ] && envargs=("LD_PRELOAD=$lib")
  if ! env "${envargs[@]}" valgrind --tool=callgrind --callgrind-out-file="$f" \
      "$@" >"$TMP/stdout" 2>"$TMP/stderr"; then
    return 1
  fi
  grep -q checksum= "$TMP/stdout" || return 1
  awk '/^summary:/ { print $2; found = 1; exit } /^totals:/ { t = $2 } END { if (!found && t != "") print t }' "$f"
}

mkdir -p "$OUT"
ROWS=$TMP/rows
RS_INFO=""
: >"$ROWS"
for a in $ALLOCATORS; do
  case $a in
    bump) lib=$BUILD/libbump.so ;;
    glibc) lib="" ;;
    rsmalloc) lib=MISSING # measure a snapshot, so a rebuild during the run does not matter
              if [ -r "$RSMALLOC_LIB" ] && cp "$RSMALLOC_LIB" "$TMP/librsmalloc.so"; then
                lib=$TMP/librsmalloc.so
                RS_INFO="rsmalloc: $RSMALLOC_LIB built $(date -r "$RSMALLOC_LIB" '+%Y-%m-%d %H:%M:%S'), sha256 $(sha256sum "$lib" | cut -c1-12)"
              fi ;;
    jemalloc) lib=$(find_lib libjemalloc.so.2 libjemalloc.so) || lib=MISSING ;;
    tcmalloc) lib=$(find_lib libtcmalloc_minimal.so.4 libtcmalloc.so.4) || lib=MISSING ;;
    mimalloc) lib=$(find_lib libmimalloc.so.2 libmimalloc.so.2.0 libmimalloc.so) || lib=MISSING ;;
    *) say "unknown allocator $a; skipped"; continue ;;
  esac
  if [ "$lib" = MISSING ]; then
    say "$a missing; skipped"
    echo "$a missing" >>"$ROWS"
    continue
  fi
  for prog in fastpath small-loop; do
    if [ "$prog" = fastpath ]; then argsN=("$BUILD/fastpath" "$N"); args0=("$BUILD/fastpath" 0)
    else argsN=("$BUILD/small-loop" 1 "$N"); args0=("$BUILD/small-loop" 1 0); fi
    say "$a: $prog N=$N"
    irN=$(ir "$lib" "${argsN[@]}") || irN=""
    if [ -z "$irN" ]; then
      say "$a $prog FAILED under callgrind: $(tail -n 3 "$TMP/stderr" | tr '\n' ' ')"
      echo "$a $prog FAIL" >>"$ROWS"
      continue
    fi
    ir0=$(ir "$lib" "${args0[@]}") || ir0=""
    echo "$a $prog $irN ${ir0:-NA}" >>"$ROWS"
  done
done

MD=$OUT/instructions.md
python3 - "$ROWS" "$N" "$(valgrind --version 2>/dev/null)" "$RS_INFO" >"$MD" <<'EOF'
import sys, os, platform, datetime
rows_file, n, vg, rs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("# Instructions per malloc+free pair (callgrind)")
print()
print("Machine: %s, %d cores, Linux %s, %s; %s; %s" % (cpu, os.cpu_count() or 0, platform.release(),
      " ".join(platform.libc_ver()), vg, datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")))
if rs:
    print()
    print(rs + ".")
print()
print("N = %d pairs, 1 thread. *Ir/pair* = total Ir / N (nothing subtracted); *Ir at N=0* is the "
      "fixed cost (start-up, dynamic linking, allocator init); *marginal* = (Ir(N) - Ir(N=0)) / N, "
      "which still includes the loop itself (the bump row is that floor). Ratios are to bump." % n)
rows = [l.split() for l in open(rows_file) if l.strip()]
bump = {}
for r in rows:
    if r[0] == "bump" and len(r) == 4:
        t, z = int(r[2]), (int(r[3]) if r[3] != "NA" else None)
        bump[r[1]] = (t / n, (t - z) / n if z is not None else None)
for prog, what in (("fastpath", "fastpath N: malloc(16..256) + write 1 byte + free, in a loop"),
                   ("small-loop", "small-loop 1 N: ring of 64 live blocks, free oldest + malloc(16..256)")):
    print()
    print("## %s" % what)
    print()
    print("| allocator | total Ir | Ir/pair | ratio to bump | Ir at N=0 | marginal Ir/pair | marginal ratio to bump |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        if len(r) == 2:
            print("| %s | missing | | | | | |" % r[0]); continue
        if r[1] != prog: continue
        if r[2] == "FAIL":
            print("| %s | **FAIL** (crashed or wrong output under callgrind) | | | | | |" % r[0]); continue
        t = int(r[2]); z = int(r[3]) if r[3] != "NA" else None
        per = t / n; marg = (t - z) / n if z is not None else None
        b = bump.get(prog, (None, None))
        f = lambda x, s: "—" if x is None else format(x, s)
        print("| %s | %d | %.1f | %s | %s | %s | %s |" % (
            r[0], t, per, f(per / b[0] if b[0] else None, ".2f"), f(z, "d"), f(marg, ".1f"),
            f(marg / b[1] if (b[1] and marg is not None) else None, ".2f")))
EOF
cat "$MD"
say "wrote $MD"
