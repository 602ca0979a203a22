#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests, on a unix socket inside its own directory (no
# TCP port). PostgreSQL refuses to run as root, so as root the cluster runs as `nobody`, and
# `nobody` may not be able to reach DIR (a clone under /root or under a 0700 `mktemp -d`): as
# root, DIR is a symbolic link to a directory of the cluster's own in /tmp (a short socket path
# too), which `destroy` removes.
#   pg-cluster.sh start DIR   initdb (first time) and start; prints the libpq connection string
#   pg-cluster.sh stop DIR [MODE]   pg_ctl stop -m MODE (default fast)
#   pg-cluster.sh restart DIR       start again after a stop (same data)
#   pg-cluster.sh destroy DIR       stop (immediate) if running, then delete the cluster and DIR
#   pg-cluster.sh pid DIR           the postmaster's pid
# PG_CLUSTER_OPTIONS: more server options (-c name=value ...), after the defaults (fsync=off:
# a benchmark turns it back on).
set -euo pipefail
cmd=${1:?command} link=${2:?directory}
dir=$link
[ -L "$link" ] && dir=$(readlink -f "$link")
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$bin/initdb" ] || { echo "pg-cluster.sh: no PostgreSQL server installed" >&2; exit 77; }
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    setpriv --reuid=nobody --regid=nogroup --clear-groups --reset-env -- "$@"
  else
    "$@"
  fi
}
start() {
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses='' -c unix_socket_directories='$dir' -c fsync=off -c full_page_writes=off -c max_connections=200 ${PG_CLUSTER_OPTIONS:-}" \
    start >/dev/null
}
case $cmd in
  start)
    if [ "$(id -u)" -eq 0 ] && [ ! -d "$dir" ]; then
      rm -f "$link"  # a link left dangling (/tmp was emptied)
      mkdir -p "$(dirname "$link")"
      # /tmp itself, not $TMPDIR: /tmp is always world-traversable, and destroy matches it.
      base=$(mktemp -d /tmp/idemproxy-pg.XXXXXX)
      chmod 0711 "$base"
      dir=$base/cluster
      mkdir "$dir"
      ln -s "$dir" "$link"
    fi
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown nobody:nogroup "$dir"
    chmod 0700 "$dir"
    if [ ! -d "$dir/data" ]; then
      as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C --no-sync \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    # Already running (a fixture shared by several tests): reuse it.
    as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1 || start
    echo "host=$dir user=postgres dbname=postgres"
    ;;
  restart) start ;;
  destroy)
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ -L "$link" ]; then
      rm -f "$link"
      case $dir in /tmp/idemproxy-pg.*/cluster) rm -rf "$(dirname "$dir")" ;; esac
    else
      rm -rf "$dir"
    fi
    ;;
  stop) as_owner "$bin/pg_ctl" -D "$dir/data" -m "${3:-fast}" -w stop >/dev/null ;;
  pid) head -n1 "$dir/data/postmaster.pid" ;;
  *) echo "pg-cluster.sh: unknown command $cmd" >&2; exit 2 ;;
esac
