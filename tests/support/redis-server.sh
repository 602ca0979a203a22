#!/usr/bin/env bash
# A throwaway redis-server for the tests, on a unix socket inside its own directory (no TCP
# port), with the append-only file on and fsynced on every write (as docs/operations.md asks).
#   redis-server.sh start DIR    start (reusing the AOF in DIR); prints the store.redis.url
#   redis-server.sh stop DIR     SIGKILL it (the AOF stays)
#   redis-server.sh pid DIR      the server's pid
set -euo pipefail
cmd=${1:?command} dir=${2:?directory}
command -v redis-server >/dev/null || { echo "redis-server.sh: redis-server is not installed" >&2; exit 77; }
sock=$dir/redis.sock
alive() { [ -f "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; }
case $cmd in
  start)
    mkdir -p "$dir"
    chmod 0700 "$dir"
    if ! alive; then
      rm -f "$sock"
      redis-server --port 0 --unixsocket "$sock" --unixsocketperm 700 --dir "$dir" \
        --appendonly yes --appendfsync always --save '' --daemonize yes \
        --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
      # Ready when it answers on the socket (the pid file and the socket appear first).
      for _ in $(seq 1 400); do
        [ "$(redis-cli -s "$sock" ping 2>/dev/null || true)" = PONG ] && break
        sleep 0.05
      done
      [ "$(redis-cli -s "$sock" ping 2>/dev/null || true)" = PONG ] ||
        { cat "$dir/redis.log" >&2; exit 1; }
    fi
    echo "unix://$sock"
    ;;
  stop)
    if alive; then
      pid=$(cat "$dir/redis.pid")
      kill -CONT "$pid" 2>/dev/null || true
      kill -KILL "$pid"
      while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    fi
    rm -f "$dir/redis.pid" "$sock"
    ;;
  pid) cat "$dir/redis.pid" ;;
  *) echo "redis-server.sh: unknown command $cmd" >&2; exit 2 ;;
esac
