#!/usr/bin/env bash
# Runs real programs with and without LD_PRELOAD of librsmalloc.so and requires identical
# output and exit status, and that rsmalloc really served malloc in the preloaded process
# (the dynamic linker's LD_DEBUG=bindings trace must bind `malloc' to librsmalloc and never
# to libc). Programs: python3, git, gcc (+ the compiled program), perl, sort.
# Prints PASS/FAIL per program and finally `N passed, M failed`; exits non-zero on failure.
#
# Usage: bash scripts/real-programs.sh [program ...]     (program: python3 git gcc perl sort)
# Environment: RSMALLOC_LIB (default <repo>/target/release/librsmalloc.so),
#              REAL_PROGRAMS_TIMEOUT (seconds per run, default 100),
#              KEEP_TMP=1 to keep the work directory.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
LIB=${RSMALLOC_LIB:-$ROOT/target/release/librsmalloc.so}
case "$LIB" in /*) ;; *) LIB=$ROOT/$LIB ;; esac
TO=${REAL_PROGRAMS_TIMEOUT:-100}

if [ ! -f "$LIB" ]; then
  echo "real-programs: library $LIB not found (run: cargo build --release)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

TMP=$(mktemp -d /tmp/rsmalloc-real.XXXXXX)
cleanup() { [ "${KEEP_TMP:-0}" = 1 ] && echo "work directory kept: $TMP" || rm -rf "$TMP"; }
trap cleanup EXIT
export LC_ALL=C TZ=UTC

pass=0
fail=0
failed=""
report() { # report NAME OK(0/1) [detail lines on stdin when failing]
  if [ "$2" = 0 ]; then
    echo "PASS $1"; pass=$((pass + 1))
  else
    echo "FAIL $1"; fail=$((fail + 1)); failed="$failed $1"
    sed 's/^/    /'
  fi
}

# loaded_check NAME CMD...: runs a short command under the preload with LD_DEBUG=bindings and
# verifies that `malloc' is bound to librsmalloc and not to libc. Prints problems on stdout.
loaded_check() {
  local name=$1; shift
  local d=$TMP/ldebug.$name
  mkdir -p "$d"
  LD_DEBUG=bindings LD_DEBUG_OUTPUT=$d/dbg LD_PRELOAD=$LIB timeout "$TO" "$@" >/dev/null 2>&1 </dev/null
  local to_rs to_other
  to_rs=$(cat "$d"/dbg.* 2>/dev/null | grep -c "to [^ ]*librsmalloc[^ ]* \[[0-9]*\]: normal symbol \`malloc'")
  # (a binding to the program itself is a non-PIE executable's canonical PLT entry for
  # malloc, which in turn is bound to the real definition: not counted)
  to_other=$(cat "$d"/dbg.* 2>/dev/null | grep "normal symbol \`malloc'" | grep -c "to [^ ]*/\(libc\.so\|ld-linux\)[^ ]* \[")
  if [ "$to_rs" -eq 0 ] || [ "$to_other" -ne 0 ]; then
    echo "rsmalloc not serving malloc in '$*' under LD_PRELOAD=$LIB:"
    echo "  $to_rs bindings of malloc to librsmalloc, $to_other to glibc"
    cat "$d"/dbg.* 2>/dev/null | grep "normal symbol \`malloc'" | grep -v librsmalloc | head -n 3
    return 1
  fi
  return 0
}

# compare NAME: compares $TMP/NAME.{plain,rs}.{out,rc,err}; prints differences.
compare() {
  local n=$1 bad=0
  if ! cmp -s "$TMP/$n.plain.rc" "$TMP/$n.rs.rc"; then
    echo "exit status differs: without rsmalloc $(cat "$TMP/$n.plain.rc"), with rsmalloc $(cat "$TMP/$n.rs.rc")"
    bad=1
  elif [ "$(cat "$TMP/$n.plain.rc")" != 0 ]; then
    echo "both runs failed with exit status $(cat "$TMP/$n.plain.rc") (broken test environment?)"
    tail -n 5 "$TMP/$n.plain.err"
    bad=1
  fi
  if ! cmp -s "$TMP/$n.plain.out" "$TMP/$n.rs.out"; then
    echo "output differs (diff without/with rsmalloc):"
    diff "$TMP/$n.plain.out" "$TMP/$n.rs.out" | head -n 20
    bad=1
  fi
  if [ ! -s "$TMP/$n.plain.out" ]; then
    echo "no output produced"
    bad=1
  fi
  if grep -q 'rsmalloc' "$TMP/$n.rs.err"; then
    echo "rsmalloc wrote to stderr:"
    grep 'rsmalloc' "$TMP/$n.rs.err" | head -n 5
    bad=1
  fi
  if [ "$bad" = 1 ] && [ -s "$TMP/$n.rs.err" ]; then
    echo "stderr with rsmalloc (last lines):"
    tail -n 8 "$TMP/$n.rs.err"
  fi
  return $bad
}

# run_pair NAME FUNC: runs FUNC (which writes its result to stdout) once without and once
# with the preload. FUNC gets the work directory as $1 and must be deterministic.
run_pair() {
  local n=$1 f=$2 mode
  for mode in plain rs; do
    rm -rf "$TMP/work.$n"; mkdir -p "$TMP/work.$n"
    if [ $mode = plain ]; then
      (cd "$TMP/work.$n" && timeout "$TO" bash -c "$(declare -f "$f"); $f \"\$PWD\"") \
        >"$TMP/$n.$mode.out" 2>"$TMP/$n.$mode.err"
    else
      (cd "$TMP/work.$n" && RS_PRELOAD=$LIB timeout "$TO" bash -c "$(declare -f "$f"); $f \"\$PWD\"") \
        >"$TMP/$n.$mode.out" 2>"$TMP/$n.$mode.err"
    fi
    echo $? >"$TMP/$n.$mode.rc"
  done
}
# Inside FUNC, `P` runs a program with the preload in the rs run and without it otherwise.
P_def='P() { if [ -n "${RS_PRELOAD:-}" ]; then LD_PRELOAD=$RS_PRELOAD "$@"; else "$@"; fi; }'

PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
GIT=$(command -v git)
GCC=$(command -v gcc)
PERL=$(command -v perl)
SORT=$(command -v sort)
export PY GIT GCC PERL SORT P_def

# ---------------------------------------------------------------- python3
prog_python3() {
  eval "$P_def"
  cat >alloc.py <<'PYEOF'
import hashlib, threading, sys, collections, json
h = hashlib.sha256()
d = {}
for i in range(200000):
    d["key%07d" % i] = ("v" * (i % 37)) + str(i * i)
lst = sorted(d.items(), key=lambda kv: (len(kv[1]), kv[0]))
for k, v in lst[::997]:
    h.update(k.encode()); h.update(v.encode())
big = [list(range(i % 300)) for i in range(20000)]
h.update(str(sum(map(len, big))).encode())
s = "".join(chr(65 + (i * 7) % 26) for i in range(1_000_000))
cnt = collections.Counter(s[i:i+3] for i in range(0, len(s) - 3, 3))
h.update(json.dumps(sorted(cnt.items())[:50]).encode())
results = [None] * 4
def work(t):
    local = {}
    for i in range(60000):
        local[(t, i)] = [str(i)] * (i % 5) + [bytes(i % 100)]
        if i % 3 == 0:
            del local[(t, i)]
    acc = hashlib.md5()
    for k in sorted(local):
        acc.update(repr(local[k]).encode())
    results[t] = acc.hexdigest()
ths = [threading.Thread(target=work, args=(t,)) for t in range(4)]
for t in ths: t.start()
for t in ths: t.join()
for r in results: h.update(r.encode())
blobs = [bytearray(n) for n in (1 << 10, 1 << 16, 1 << 20, 8 << 20)]
for b in blobs: b[-1] = 1
h.update(bytes(str([len(b) for b in blobs]), "ascii"))
print(len(d), len(big), len(cnt), results[0])
print("digest", h.hexdigest())
PYEOF
  PYTHONHASHSEED=0 PYTHONMALLOC=malloc P "$PY" alloc.py
  echo "exit $?"
}

# ---------------------------------------------------------------- git
prog_git() {
  eval "$P_def"
  export HOME=$1 GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
  export GIT_AUTHOR_NAME="Test Author" GIT_AUTHOR_EMAIL=author@example.com
  export GIT_COMMITTER_NAME="Test Committer" GIT_COMMITTER_EMAIL=committer@example.com
  mkdir repo && cd repo || exit 1
  P "$GIT" init -q . && P "$GIT" symbolic-ref HEAD refs/heads/main || exit 1
  for c in 1 2 3 4 5; do
    for f in $(seq 1 60); do
      mkdir -p "dir$((f % 7))"
      seq $((f * c)) $((f * c + 300 + f)) | sed "s/^/line c$c f$f /" >"dir$((f % 7))/file$f.txt"
    done
    export GIT_AUTHOR_DATE="2021-01-0${c}T10:00:00Z" GIT_COMMITTER_DATE="2021-01-0${c}T11:00:00Z"
    P "$GIT" add -A && P "$GIT" commit -q -m "commit number $c" || exit 1
  done
  P "$GIT" log --format='%H %T %s %an %cd'
  P "$GIT" cat-file -p 'HEAD^{tree}'
  P "$GIT" cat-file -p HEAD:dir3/file10.txt | md5sum
  P "$GIT" diff --stat HEAD~3 HEAD | tail -n 3
  P "$GIT" log -p --format=%H | md5sum
  P "$GIT" gc -q --aggressive && P "$GIT" fsck --full --no-progress && echo fsck ok
  P "$GIT" rev-list --objects --all | sort | md5sum
  P "$GIT" grep -c 'line c5 f1' | sort | md5sum
}

# ---------------------------------------------------------------- gcc
prog_gcc() {
  eval "$P_def"
  {
    echo '#include <stdio.h>'
    echo '#include <stdlib.h>'
    echo '#include <string.h>'
    for i in $(seq 1 400); do
      echo "static unsigned long f$i(unsigned long x) { unsigned long a[16]; for (int i = 0; i < 16; i++) a[i] = x * $i + i; unsigned long s = 0; for (int i = 0; i < 16; i++) s ^= a[i] << (i % 7); return s + (x % $((i + 1))); }"
    done
    echo 'struct node { struct node *next; char *s; };'
    echo 'int main(void) { unsigned long t = 1; struct node *h = NULL;'
    for i in $(seq 1 400); do echo "  t = f$i(t) + $i;"; done
    echo '  for (int i = 0; i < 100000; i++) { struct node *n = malloc(sizeof *n); n->s = malloc(1 + i % 300); memset(n->s, 97 + i % 26, i % 300); n->s[i % 300] = 0; n->next = h; h = n; }'
    echo '  unsigned long len = 0; while (h) { struct node *n = h->next; len += strlen(h->s); free(h->s); free(h); h = n; }'
    echo '  printf("%lu %lu\n", t, len); return 0; }'
  } >prog.c
  P "$GCC" -O2 -c prog.c -o prog.o || exit 1
  P objdump -d prog.o | md5sum
  md5sum <prog.o
  P "$GCC" -O2 -o prog prog.o || exit 1
  P ./prog
  P "$GCC" -O0 -g0 -S prog.c -o - | md5sum
}

# ---------------------------------------------------------------- perl
prog_perl() {
  eval "$P_def"
  P "$PERL" -MDigest::MD5=md5_hex -e '
    my %h; my @all;
    for my $i (1..300000) { $h{"k$i"} = ("x" x ($i % 61)) . $i; }
    for my $i (1..300000) { delete $h{"k$i"} if $i % 3 == 0 }
    my @k = sort { length($h{$a}) <=> length($h{$b}) or $a cmp $b } keys %h;
    my $s = join(",", @k);
    my %w; $w{$_}++ for map { substr($_, 0, 4) } values %h;
    for my $r (1..50) { push @all, [ map { $_ * $r } 1..2000 ] }
    my $big = "ab" x 4_000_000; $big =~ s/ba/BA/g;
    print scalar(@k), " ", length($s), " ", md5_hex($s), "\n";
    print join(" ", map { "$_=$w{$_}" } (sort keys %w)[0..9]), "\n";
    print scalar(@all), " ", $all[-1][-1], " ", length($big), " ", md5_hex($big), "\n";
  '
}

# ---------------------------------------------------------------- sort
prog_sort() {
  eval "$P_def"
  awk 'BEGIN { x = 12345; for (i = 0; i < 500000; i++) { x = (x * 1103515245 + 12345) % 2147483648; printf "%d %s%d line-%d\n", x % 100000, substr("qwertyuiopasdfghjklzxcvbnm", x % 20 + 1, 5), x % 977, i } }' >big.txt
  P "$SORT" big.txt | md5sum
  P "$SORT" -n -k1,1 -k3,3r --parallel=2 -S 20M big.txt | md5sum
  P "$SORT" -u -k2,2 big.txt | md5sum
  P "$SORT" -R --random-source=big.txt big.txt | md5sum
  P "$SORT" -t- -k2,2n big.txt | tail -n 3
}

declare -A LOADCMD=(
  [python3]="$PY -c pass"
  [git]="$GIT version"
  [gcc]="$GCC --version"
  [perl]="$PERL -e print"
  [sort]="$SORT /dev/null"
)
declare -A BIN=([python3]=$PY [git]=$GIT [gcc]=$GCC [perl]=$PERL [sort]=$SORT)

# Preload sanity: the library is mapped into a preloaded process.
if LD_PRELOAD=$LIB cat /proc/self/maps | grep -q librsmalloc; then
  report "preload (cat /proc/self/maps shows librsmalloc)" 0
else
  report "preload (cat /proc/self/maps shows librsmalloc)" 1 <<<"librsmalloc not mapped into 'LD_PRELOAD=$LIB cat /proc/self/maps'"
fi

progs=${*:-python3 git gcc perl sort}
for p in $progs; do
  if [ -z "${BIN[$p]:-}" ] || [ ! -x "${BIN[$p]}" ]; then
    report "$p" 1 <<<"$p is not installed (scripts/setup.sh installs it)"
    continue
  fi
  start=$(date +%s)
  run_pair "$p" "prog_$p"
  msg=$(
    ok=0
    # shellcheck disable=SC2086
    loaded_check "$p" ${LOADCMD[$p]} || ok=1
    compare "$p" || ok=1
    exit $ok
  )
  rc=$?
  report "$p ($(( $(date +%s) - start ))s)" $rc <<<"$msg"
done
[ $fail -gt 0 ] && echo "failed:$failed"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
