#!/usr/bin/env bash
# idemproxy benchmark: one command. Installs wrk and nginx from apt if missing, builds the
# release binary if missing, then runs bench/bench.py (all of its options pass through).
#   bench/run.sh                 # full default run (~5 min): nginx + idemproxy scenarios
#   bench/run.sh --only nginx    # backend direct and nginx proxy_pass only
#   bench/run.sh --scale         # default run + 1,000,000-record scale run
#   bench/run.sh --only scale    # scale run only
#   bench/run.sh --help
# Environment: IDEMPROXY_BIN (default build/release/idemproxy), BENCH_NO_INSTALL=1,
# BENCH_NO_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v mdb_stat >/dev/null 2>&1 || need+=(lmdb-utils)
if [ ${#need[@]} -gt 0 ] && [ "${BENCH_NO_INSTALL:-0}" != 1 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "[bench] installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # nginx-light is gone from newer Debian releases; fall back to nginx
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]/nginx-light/nginx}" >/dev/null
  fi
  # the packaged nginx starts a system instance on port 80; the bench does not need it
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop nginx >/dev/null 2>&1 || true; fi
fi

# 1,000 keep-alive clients need more descriptors than the usual soft limit of 1024
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true

BIN=${IDEMPROXY_BIN:-$REPO/build/release/idemproxy}
want_idem=1
for arg in "$@"; do case "$arg" in --only=nginx|nginx|direct|proxy_pass|direct,proxy_pass|-h|--help) want_idem=0 ;; esac; done
if [ $want_idem = 1 ] && [ ! -x "$BIN" ] && [ -z "${IDEMPROXY_BIN:-}" ] && [ "${BENCH_NO_BUILD:-0}" != 1 ] \
   && command -v cmake >/dev/null 2>&1; then
  echo "[bench] $BIN missing: building it (cmake --preset release)" >&2
  if ! { cmake --preset release >/dev/null && cmake --build --preset release --target idemproxy >/dev/null; }; then
    echo "[bench] build failed (scripts/install-deps.sh installs the build dependencies);" \
         "idemproxy scenarios will be skipped" >&2
  fi
fi

# bench.py kills what it starts; this trap is the second line of defence: it kills the process
# groups bench.py recorded in $BENCH_PIDFILE (each server and wrk runs in its own group).
BENCH_PIDFILE=$(mktemp /tmp/idemproxy-bench-pids.XXXXXX)
export BENCH_PIDFILE
child=""
# shellcheck disable=SC2317  # invoked by trap
cleanup() {
  trap - EXIT INT TERM HUP
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  if [ -f "$BENCH_PIDFILE" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null || true
    done <"$BENCH_PIDFILE"
    rm -f "$BENCH_PIDFILE"
  fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM HUP

IDEMPROXY_BIN="$BIN" python3 "$REPO/bench/bench.py" "$@" &
child=$!
set +e
wait "$child"
rc=$?
set -e
child=""
exit $rc
