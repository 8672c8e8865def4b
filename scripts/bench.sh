#!/usr/bin/env bash
# Compare rsmalloc with glibc malloc, jemalloc, tcmalloc and mimalloc on the
# programs in bench-programs/, at 1, 2 and 8 threads.
#
#   bash scripts/bench.sh              # full run (RUNS=5, default sizes; < 10 min on 2 cores)
#   QUICK=1 bash scripts/bench.sh      # about a minute (RUNS=2, sizes / 5)
#
# Environment knobs (all optional):
#   RUNS=5            runs per (program, threads, allocator); QUICK default 2
#   QUICK=1           smaller sizes and fewer runs
#   SCALE=5           divide every program's default SIZE by this (QUICK default 5, else 1)
#   THREADS="1 2 8"   thread counts
#   PROGRAMS="..."    subset of programs (default: all, see bench-programs/Makefile)
#   ALLOCATORS="glibc rsmalloc jemalloc tcmalloc mimalloc"
#   TIMEOUT=30        seconds before a run is killed and recorded as FAIL:timeout (QUICK default 15)
#   RSMALLOC_LIB=...  path of the rsmalloc .so (default target/release/librsmalloc.so)
#   OUT=bench-results output directory
#
# Runs are interleaved: round 1 runs every (program, threads) under every
# allocator in turn, then round 2, ... A run that crashes, exits non-zero, times
# out, fails to preload or prints a checksum different from glibc's is
# recorded as FAIL (with details in latest-failures.log), never dropped.
# Writes OUT/latest.csv, OUT/latest.md, OUT/latest.png and prints the table.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  RUNS=${RUNS:-2}; SCALE=${SCALE:-5}; TIMEOUT=${TIMEOUT:-15}
else
  RUNS=${RUNS:-5}; SCALE=${SCALE:-1}; TIMEOUT=${TIMEOUT:-30}
fi
THREADS=${THREADS:-"1 2 8"}
ALLOCATORS=${ALLOCATORS:-"glibc rsmalloc jemalloc tcmalloc mimalloc"}
RSMALLOC_LIB=${RSMALLOC_LIB:-$ROOT/target/release/librsmalloc.so}
OUT=${OUT:-$ROOT/bench-results}
BP=$ROOT/bench-programs
BUILD=$BP/build

say() { printf '%s\n' "bench: $*" >&2; }
is_root_with_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
apt_install() { # apt_install PKG...: best effort, quiet
  is_root_with_apt || return 1
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 && return 0
  apt-get update -qq >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

# --- tools ------------------------------------------------------------------
for tool in make cc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    apt_install build-essential || { say "missing $tool (install build-essential); cannot build the bench programs"; exit 1; }
  fi
done
command -v python3 >/dev/null 2>&1 || apt_install python3 || say "python3 missing: only latest.csv will be written"
command -v gnuplot >/dev/null 2>&1 || apt_install gnuplot-nox || say "gnuplot missing (package gnuplot-nox): no latest.png"

if ! make -s -C "$BP" >/dev/null; then say "building bench-programs failed"; exit 1; fi
PROGRAMS=${PROGRAMS:-$(make -s -C "$BP" list)}
RUNNER=$BUILD/runner

# --- allocators ---------------------------------------------------------------
find_lib() { # find_lib NAME...: first of the given sonames known to the dynamic linker
  local n p
  for n in "$@"; do
    p=$(ldconfig -p 2>/dev/null | awk -v n="$n" '$1 == n && /x86-64|64bit|AArch64/ { print $NF; exit }')
    [ -z "$p" ] && p=$(ldconfig -p 2>/dev/null | awk -v n="$n" '$1 == n { print $NF; exit }')
    if [ -z "$p" ]; then
      for d in /usr/lib/*-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
        [ -e "$d/$n" ] && { p=$d/$n; break; }
      done
    fi
    [ -n "$p" ] && [ -e "$p" ] && { printf '%s\n' "$p"; return 0; }
  done
  return 1
}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/rsmalloc-bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
declare -A LIB=()
RS_INFO=""
ACTIVE=()
MISSING=()
for a in $ALLOCATORS; do
  case $a in
    glibc)    p="" ;;
    rsmalloc) p=""
              if [ -r "$RSMALLOC_LIB" ]; then # snapshot it: a rebuild during the run must not mix builds
                RS_INFO="$(basename "$RSMALLOC_LIB") built $(date -r "$RSMALLOC_LIB" '+%Y-%m-%d %H:%M:%S'), sha256 $(sha256sum "$RSMALLOC_LIB" | cut -c1-12)"
                cp "$RSMALLOC_LIB" "$TMP/librsmalloc.so" && p=$TMP/librsmalloc.so
              fi ;;
    jemalloc) p=$(find_lib libjemalloc.so.2 libjemalloc.so) || p="" ;;
    tcmalloc) p=$(find_lib libtcmalloc_minimal.so.4 libtcmalloc.so.4 libtcmalloc_minimal.so) || p="" ;;
    mimalloc) p=$(find_lib libmimalloc.so.2 libmimalloc.so.2.0 libmimalloc.so.2.1 libmimalloc.so) || p="" ;;
    *) say "unknown allocator '$a' (known: glibc rsmalloc jemalloc tcmalloc mimalloc); skipped"; continue ;;
  esac
  if [ "$a" != glibc ] && [ -z "$p" ]; then
    case $a in
      rsmalloc) say "rsmalloc missing: $RSMALLOC_LIB not found (run cargo build --release); skipped" ;;
      *) say "$a missing (not found by ldconfig; scripts/setup.sh installs it); skipped" ;;
    esac
    MISSING+=("$a")
    continue
  fi
  LIB[$a]=$p
  ACTIVE+=("$a")
done
[ "${#ACTIVE[@]}" -gt 0 ] || { say "no allocator to run"; exit 1; }
for a in "${ACTIVE[@]}"; do say "$(printf '%-9s %s' "$a" "${LIB[$a]:-(system malloc, no preload)}")"; done
[ -n "$RS_INFO" ] && say "rsmalloc: $RSMALLOC_LIB ($RS_INFO), copied to $TMP"

# --- sizes ----------------------------------------------------------------------
declare -A SIZE=()
for p in $PROGRAMS; do
  [ -x "$BUILD/$p" ] || { say "no program $BUILD/$p"; exit 1; }
  d=$("$BUILD/$p" --default-size) || { say "$p --default-size failed"; exit 1; }
  s=$(( d / SCALE )); [ "$s" -ge 1 ] || s=1
  SIZE[$p]=$s
done

# --- run ------------------------------------------------------------------------
mkdir -p "$OUT"
CSV=$OUT/latest.csv.tmp
FAILLOG=$OUT/latest-failures.log
echo "program,threads,allocator,run,wall_s,cpu_s,maxrss_kb,status,size,checksum" >"$CSV"
: >"$FAILLOG"
declare -A REF=()     # program -> glibc checksum (checksums do not depend on the thread count)
nthr=$(wc -w <<<"$THREADS"); nprog=$(wc -w <<<"$PROGRAMS")
total=$(( RUNS * nprog * nthr * ${#ACTIVE[@]} ))
say "$nprog programs x $nthr thread counts x ${#ACTIVE[@]} allocators x $RUNS runs = $total runs (timeout ${TIMEOUT}s each, sizes / $SCALE)"
LOAD0=$(cut -d" " -f1-3 /proc/loadavg 2>/dev/null || echo "?")
start=$(date +%s)
i=0; nfail=0
for run in $(seq 1 "$RUNS"); do
  for p in $PROGRAMS; do
    for t in $THREADS; do
      for a in "${ACTIVE[@]}"; do
        i=$((i + 1))
        out=$TMP/out; err=$TMP/err
        res=$("$RUNNER" -t "$TIMEOUT" -p "${LIB[$a]}" -o "$out" -- "$BUILD/$p" "$t" "${SIZE[$p]}" 2>"$err")
        st=$(sed -n 's/.*status=\([^ ]*\).*/\1/p' <<<"$res")
        wall=$(sed -n 's/.*wall_s=\([^ ]*\).*/\1/p' <<<"$res")
        cpu=$(sed -n 's/.*cpu_s=\([^ ]*\).*/\1/p' <<<"$res")
        rss=$(sed -n 's/.*maxrss_kb=\([^ ]*\).*/\1/p' <<<"$res")
        sum=$(sed -n 's/.*checksum=\([0-9a-f]*\).*/\1/p' "$out" 2>/dev/null | head -n 1)
        status=OK
        case $st in
          OK) ;;
          TIMEOUT) status=FAIL:timeout ;;
          SIG*) status=FAIL:crash-$st ;;
          EXIT*) status=FAIL:exit-${st#EXIT} ;;
          *) status=FAIL:runner; wall=${wall:-0}; cpu=${cpu:-0}; rss=${rss:-0} ;;
        esac
        if [ "$status" = OK ] && grep -q "cannot be preloaded\|ERROR: ld.so" "$err"; then status=FAIL:preload; fi
        if [ "$status" = OK ]; then
          if [ -z "$sum" ]; then
            status=FAIL:no-checksum
          elif [ "$a" = glibc ] && [ -z "${REF[$p]:-}" ]; then
            REF[$p]=$sum
          elif [ -n "${REF[$p]:-}" ] && [ "$sum" != "${REF[$p]}" ]; then
            status=FAIL:checksum
          fi
        fi
        echo "$p,$t,$a,$run,${wall:-0},${cpu:-0},${rss:-0},$status,${SIZE[$p]},${sum:-}" >>"$CSV"
        if [ "$status" != OK ]; then
          nfail=$((nfail + 1))
          {
            echo "=== $p threads=$t allocator=$a run=$run size=${SIZE[$p]}: $status (wall ${wall:-?}s)"
            shown=${LIB[$a]}; [ "$a" = rsmalloc ] && shown=$RSMALLOC_LIB
            echo "command: LD_PRELOAD=$shown $BUILD/$p $t ${SIZE[$p]}"
            [ "$status" = FAIL:checksum ] && echo "checksum $sum, glibc $p checksum ${REF[$p]}"
            echo "stdout: $(head -c 300 "$out" 2>/dev/null)"
            echo "stderr (last lines):"; tail -n 5 "$err" 2>/dev/null
          } >>"$FAILLOG"
        fi
        el=$(( $(date +%s) - start ))
        printf 'bench: [%d/%d %3ds] run %d/%d %-14s T=%-2s %-9s %7ss %s\n' \
          "$i" "$total" "$el" "$run" "$RUNS" "$p" "$t" "$a" "${wall:-?}" "$status" >&2
      done
    done
  done
done
mv "$CSV" "$OUT/latest.csv"
el=$(( $(date +%s) - start ))
if [ "$nfail" = 0 ]; then
  say "done: $total runs in ${el}s, no FAIL"
  rm -f "$FAILLOG"
else
  say "done: $total runs in ${el}s, $nfail FAIL (details: $FAILLOG)"
fi

# --- report -----------------------------------------------------------------------
if command -v python3 >/dev/null 2>&1; then
  python3 "$ROOT/scripts/bench_report.py" --csv "$OUT/latest.csv" --out "$OUT" \
    --missing "${MISSING[*]:-}" --elapsed "$el" --runs "$RUNS" --scale "$SCALE" \
    --rsmalloc "$RS_INFO" --load "$LOAD0 at start, $(cut -d" " -f1-3 /proc/loadavg 2>/dev/null || echo "?") at end" \
    || say "bench_report.py failed"
else
  say "python3 missing: wrote $OUT/latest.csv only"
fi
exit 0
