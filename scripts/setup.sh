#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine: the packages that `make test` and `make bench` use.
# Installs only when running as root with apt available; otherwise lists what is missing and goes on.
set -u
PKGS="build-essential g++ python3 perl git gcc sqlite3 redis-server redis-tools valgrind
      libjemalloc2 libtcmalloc-minimal4 libmimalloc2.0 gnuplot-nox"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || true
  # shellcheck disable=SC2086
  apt-get install -y -qq $missing >/dev/null 2>&1 || echo "setup: some packages failed to install:$missing"
else
  echo "setup: not root or no apt; missing:$missing (tests and benches that need them are skipped or report it)"
fi
exit 0
