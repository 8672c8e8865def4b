#!/usr/bin/env bash
# Real programs' own test suites and workloads with librsmalloc.so preloaded:
#   python   CPython's regression tests (python3 -m test): a set chosen to pass without the
#            preload (checked when this script was written; on a failure with the preload the
#            failed tests are re-run without it to tell an environment problem from ours);
#   redis    redis-server on 127.0.0.1 (a free port): redis-benchmark (bounded), then a
#            deterministic data set written, BGSAVE (fork), read back and compared key by
#            key with a digest, DEBUG RELOAD, read back again, shutdown;
#   sqlite   a scripted sqlite3 workload (recursive-CTE inserts, indexes, updates, deletes,
#            large blobs, VACUUM); its PRAGMA integrity_check and query results must equal
#            those of the same run without the preload;
#   cargo    the project's own `cargo test --release --features check-invariants`, with the
#            library preloaded into cargo, rustc and the test harness.
# Each suite also proves rsmalloc served the process (rsmalloc_version is checked through
# LD_DEBUG bindings for python, redis and sqlite3). Prints PASS/FAIL per suite and finally
# `N passed, M failed`; exits non-zero on failure. Installs what it needs with apt when root
# (libpython3.11-testsuite, redis-server, redis-tools, sqlite3); otherwise skips the suite
# with a message.
# Usage: bash scripts/real-suites.sh [python redis sqlite cargo]
# Environment: RSMALLOC_LIB (default <repo>/target/release/librsmalloc.so),
#              KEEP_TMP=1 keeps the work directory.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
LIB0=${RSMALLOC_LIB:-$ROOT/target/release/librsmalloc.so}
case "$LIB0" in /*) ;; *) LIB0=$ROOT/$LIB0 ;; esac
if [ ! -f "$LIB0" ]; then
  echo "real-suites: library $LIB0 not found (run: cargo build --release)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
TMP=$(mktemp -d /tmp/rsmalloc-suites.XXXXXX)
cleanup() {
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null
  [ "${KEEP_TMP:-0}" = 1 ] && echo "work directory kept: $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT
# Preload a copy: a cargo build during the cargo suite may rewrite the original.
LIB=$TMP/librsmalloc.so
cp "$LIB0" "$LIB"
export LC_ALL=C.UTF-8 TZ=UTC

pass=0; fail=0; skip=0; failed=""
report() { # NAME STATUS(0 pass, 1 fail, 2 skip) ; details on stdin
  case $2 in
    0) echo "PASS $1"; pass=$((pass + 1)); sed "s/^/    /" ;;
    2) echo "SKIP $1"; skip=$((skip + 1)); sed 's/^/    /' ;;
    *) echo "FAIL $1"; fail=$((fail + 1)); failed="$failed $1"; sed 's/^/    /' ;;
  esac
}

apt_install() { # PKG...: installs missing Debian packages when root; 0 if all present after
  local missing="" p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "real-suites: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y -qq $missing >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1; apt-get install -y -qq $missing >/dev/null 2>&1; }
  fi
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
  done
  return 0
}

# served_by_rsmalloc CMD...: the dynamic linker binds malloc of CMD to librsmalloc, never libc.
served_by_rsmalloc() {
  local d=$TMP/ldd.$RANDOM
  mkdir -p "$d"
  LD_DEBUG=bindings LD_DEBUG_OUTPUT=$d/dbg LD_PRELOAD=$LIB timeout 60 "$@" >/dev/null 2>&1 </dev/null
  local rs other
  rs=$(cat "$d"/dbg.* 2>/dev/null | grep -c "to [^ ]*librsmalloc[^ ]* \[[0-9]*\]: normal symbol \`malloc'")
  other=$(cat "$d"/dbg.* 2>/dev/null | grep "normal symbol \`malloc'" | grep -c "to [^ ]*/\(libc\.so\|ld-linux\|libjemalloc\)[^ ]* \[")
  if [ "$rs" -eq 0 ] || [ "$other" -ne 0 ]; then
    echo "rsmalloc does not serve malloc in '$*' ($rs bindings to librsmalloc, $other to libc/jemalloc)"
    return 1
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------------------------------- python
# The set: passes without the preload on Debian 12's python3.11 (checked: 13 tests, ~3 min at -j2).
PY_TESTS="test_threading test_gc test_dict test_list test_set test_unicode test_bytes test_re
          test_json test_pickle test_subprocess test_fork1 test_concurrent_futures"
suite_python() {
  local py="" c
  apt_install libpython3.11-testsuite >/dev/null 2>&1 || true
  for c in /usr/bin/python3 "$(command -v python3 2>/dev/null)"; do
    [ -x "$c" ] && "$c" -c 'import test.test_gc, test.libregrtest' 2>/dev/null && { py=$c; break; }
  done
  if [ -z "$py" ]; then
    report "python regression tests" 2 <<<"no python3 with its test package (Debian: libpython3.11-testsuite; needs root to install)"
    return
  fi
  local start=$SECONDS msg rc
  msg=$(
    served_by_rsmalloc "$py" -c pass || exit 1
    # shellcheck disable=SC2086
    cd "$TMP" && LD_PRELOAD=$LIB PYTHONMALLOC=malloc timeout 900 "$py" -m test -j2 --timeout 600 $PY_TESTS \
      >"$TMP/python.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
      echo "python -m test exit status $rc with the preload; summary:"
      sed -n '/^== Tests result/,$p' "$TMP/python.log" | head -n 30
      grep -E "rsmalloc|Fatal Python|Segmentation|core dumped" "$TMP/python.log" | head -n 10
      bad=$(sed -n '/tests\? failed:/,/^$/p; /tests\? skipped:/,/^$/p' "$TMP/python.log" | grep -o 'test_[a-z0-9_]*' | sort -u | tr '\n' ' ')
      if [ -n "$bad" ]; then
        # shellcheck disable=SC2086
        if timeout 600 "$py" -m test $bad >"$TMP/python.plain.log" 2>&1; then
          echo "the same tests pass without the preload: $bad"
        else
          echo "they fail without the preload too (environment?): $bad"
        fi
      fi
      exit 1
    fi
    sed -n '/^== Tests result/,$p' "$TMP/python.log" | grep -E "Tests result|tests OK|Total duration" | tr '\n' ' '
    echo
  )
  rc=$?
  report "python regression tests: $(echo $PY_TESTS | wc -w) tests at -j2 with PYTHONMALLOC=malloc ($py, $((SECONDS - start))s)" $rc <<<"$msg"
}

# -------------------------------------------------------------------------------------- redis
suite_redis() {
  if ! apt_install redis-server redis-tools >/dev/null 2>&1; then
    report "redis" 2 <<<"redis-server/redis-tools not installed (needs root to install)"; return
  fi
  local start=$SECONDS port msg rc
  msg=$(
    served_by_rsmalloc redis-server --version || exit 1
    port=$(free_port)
    mkdir -p "$TMP/redis"
    LD_PRELOAD=$LIB redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$TMP/redis" --enable-debug-command yes --daemonize no >"$TMP/redis/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    bad=0
    timeout 120 redis-benchmark -h 127.0.0.1 -p "$port" -n 100000 -c 20 -P 16 -r 100000 -d 200 -q \
      -t set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,lrange_100,mset >"$TMP/redis/bench.log" 2>&1 \
      || { echo "redis-benchmark (small values) failed"; bad=1; }
    timeout 120 redis-benchmark -h 127.0.0.1 -p "$port" -n 3000 -c 8 -r 3000 -d 200000 -q -t set,get \
      >>"$TMP/redis/bench.log" 2>&1 || { echo "redis-benchmark (200 KB values) failed"; bad=1; }
    redis-cli -p "$port" flushall >/dev/null
    timeout 300 python3 "$ROOT/scripts/redis_check.py" "$port" write || bad=1
    [ "$(redis-cli -p "$port" bgsave)" = "Background saving started" ] || { echo "BGSAVE refused"; bad=1; }
    timeout 300 python3 "$ROOT/scripts/redis_check.py" "$port" verify || bad=1
    for _ in $(seq 1 100); do
      redis-cli -p "$port" info persistence | grep -q 'rdb_bgsave_in_progress:0' && break; sleep 0.2
    done
    redis-cli -p "$port" info persistence | grep -q 'rdb_last_bgsave_status:ok' || { echo "BGSAVE (forked child) failed"; bad=1; }
    [ "$(redis-cli -p "$port" debug reload)" = "OK" ] || { echo "DEBUG RELOAD failed"; bad=1; }
    timeout 300 python3 "$ROOT/scripts/redis_check.py" "$port" verify || bad=1
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "redis-server did not exit after SHUTDOWN"; kill -9 "$pid"; bad=1; fi
    wait "$pid"; src=$?
    [ $src -eq 0 ] || { echo "redis-server exit status $src"; bad=1; }
    if grep -q -E "rsmalloc|crashed|Segmentation|Assertion" "$TMP/redis/server.log"; then
      echo "server log:"; grep -E "rsmalloc|crashed|Segmentation|Assertion" "$TMP/redis/server.log" | head -n 5; bad=1
    fi
    grep -E "^(SET|GET|LPUSH|HSET|ZADD|MSET)" "$TMP/redis/bench.log" | tr -s ' ' | head -n 8 | tr '\n' ';'; echo
    exit $bad
  )
  rc=$?
  report "redis-server: redis-benchmark, data set written, BGSAVE, read back, DEBUG RELOAD, read back ($((SECONDS - start))s)" $rc <<<"$msg"
}

# ------------------------------------------------------------------------------------- sqlite
SQLITE_WORK="
PRAGMA journal_mode=WAL;
PRAGMA cache_size=-20000;
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v TEXT, n INTEGER, b BLOB);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)
INSERT INTO t(k, v, n, b)
SELECT printf('key%08d', (x * 7919) % 1000003),
       substr(printf('%x', x * 2654435761 % 4294967296) || replace(printf('%.*c', x % 300, 'v'), ' ', 'v'), 1, 400),
       (x * 2654435761) % 100000, zeroblob(x % 50)
FROM c;
CREATE INDEX t_k ON t(k);
CREATE INDEX t_n ON t(n, k);
UPDATE t SET v = upper(v) || n WHERE n % 7 = 0;
DELETE FROM t WHERE n % 11 = 3;
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20)
INSERT INTO t(k, v, n, b) SELECT printf('blob%02d', x), 'big', x, zeroblob(x * 300000) FROM c;
UPDATE t SET b = CAST(printf('%.*c', 2000000, 'z') AS BLOB) WHERE k = 'blob05';
CREATE TABLE agg AS SELECT n % 100 AS g, count(*) AS c, sum(length(v)) AS s, group_concat(k, ',') AS ks
  FROM t GROUP BY n % 100;
DELETE FROM t WHERE id IN (SELECT id FROM t WHERE n % 5 = 1 ORDER BY k LIMIT 30000);
REINDEX;
VACUUM;
PRAGMA integrity_check;
SELECT count(*), sum(n), sum(length(v)), sum(length(b)), max(k), min(v) FROM t;
SELECT g, c, s, length(ks), substr(ks, 1, 40) FROM agg ORDER BY g;
SELECT k, n FROM t WHERE n BETWEEN 500 AND 520 ORDER BY k LIMIT 10;
SELECT count(DISTINCT k), count(DISTINCT v) FROM t;
SELECT n % 13, count(*), total(length(v)) FROM t GROUP BY 1 ORDER BY 1;
SELECT hex(substr(group_concat(v, ''), 1, 64)) FROM (SELECT v FROM t ORDER BY n, k LIMIT 3000);
SELECT k, length(b), hex(substr(b, 1000, 4)) FROM t WHERE k LIKE 'blob%' ORDER BY k;
"
suite_sqlite() {
  if ! apt_install sqlite3 >/dev/null 2>&1; then
    report "sqlite3" 2 <<<"sqlite3 not installed (needs root to install)"; return
  fi
  local start=$SECONDS msg rc
  msg=$(
    served_by_rsmalloc sqlite3 :memory: "select 1" || exit 1
    mkdir -p "$TMP/sqlite"; cd "$TMP/sqlite" || exit 1
    bad=0
    timeout 300 sqlite3 plain.db <<<"$SQLITE_WORK" >plain.out 2>plain.err; prc=$?
    LD_PRELOAD=$LIB timeout 300 sqlite3 rs.db <<<"$SQLITE_WORK" >rs.out 2>rs.err; rrc=$?
    [ $prc -eq 0 ] && [ $rrc -eq 0 ] || { echo "exit status: without rsmalloc $prc, with $rrc"; cat rs.err | head -n 5; bad=1; }
    sed -n 2p rs.out | grep -qx ok || { echo "PRAGMA integrity_check with rsmalloc: $(sed -n 2p rs.out)"; bad=1; }
    if ! cmp -s plain.out rs.out; then echo "query results differ (without/with rsmalloc):"; diff plain.out rs.out | head -n 10; bad=1; fi
    [ "$(wc -l <rs.out)" -gt 100 ] || { echo "too little output"; bad=1; }
    echo "integrity_check $(sed -n 2p rs.out); $(wc -l <rs.out) result lines, md5 $(md5sum <rs.out | cut -c1-12) both runs"
    exit $bad
  )
  rc=$?
  report "sqlite3 workload: same integrity_check and results as without rsmalloc ($((SECONDS - start))s)" $rc <<<"$msg"
}

# -------------------------------------------------------------------------------------- cargo
suite_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    report "cargo test" 2 <<<"cargo not found"; return
  fi
  local start=$SECONDS msg rc
  msg=$(
    LD_PRELOAD=$LIB timeout 900 cargo test --release --features check-invariants --target-dir target/checked \
      >"$TMP/cargo.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
      echo "cargo test exit status $rc with the preload:"; grep -E "FAILED|panicked|rsmalloc|error" "$TMP/cargo.log" | head -n 15
      tail -n 5 "$TMP/cargo.log"
      exit 1
    fi
    grep -E "^test result" "$TMP/cargo.log" | awk '{p += $4; f += $6} END { printf "%d tests passed, %d failed\n", p, f }'
  )
  rc=$?
  report "cargo test --release --features check-invariants under LD_PRELOAD ($((SECONDS - start))s): $(tail -n 1 <<<"$msg")" $rc <<<"$msg"
}

suites=${*:-python redis sqlite cargo}
for s in $suites; do
  case $s in
    python|redis|sqlite|cargo) "suite_$s" ;;
    *) echo "real-suites: unknown suite $s (python redis sqlite cargo)" >&2; exit 2 ;;
  esac
done
[ $fail -gt 0 ] && echo "failed:$failed"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
