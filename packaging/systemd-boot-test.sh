#!/usr/bin/env bash
# Boots the built .deb under a real systemd, the way an operator installs it: a minimal Debian 12
# root (debootstrap --variant=minbase + systemd), booted with `systemd-nspawn -b
# --private-network`, driven from the host with `nsenter` into the container (the host needs no
# systemd as PID 1: --register=no --keep-unit). Inside: `apt-get install ./idemproxy_*.deb`, the
# project's fake upstream (tests/fake_upstream.py) as a unit on 127.0.0.1:9000 (what the packaged
# configuration forwards to), then
#   keys as root before the first start (fails, creates nothing) · enable --now · a POST
#   forwarded then replayed · /etc/idemproxy read-only in the sandbox · reload with a valid file
#   (new route in force) and an invalid one (reload fails, old config serves, the error at
#   priority err in the journal, from ExecReload= and from the daemon) · the watchdog over two
#   periods · restart keeping records · stop with a request in flight (answer recorded, exit 0) ·
#   the documented restore + `keys list` as root (lock.mdb stays the service's; it starts again)
#   · purge.
# The root is built once per set of packages and cached (IDEMPROXY_BOOT_CACHE, default
# /var/cache/idemproxy-systemd-root); each run boots a throw-away copy (an overlay, or a copy
# where overlayfs is not available). The Debian mirror is the one in this machine's apt sources
# (IDEMPROXY_DEBIAN_MIRROR overrides it). This script builds nothing: it takes the .deb.
#
# Usage: packaging/systemd-boot-test.sh DEB|BUILD_DIR   (BUILD_DIR: its newest idemproxy_*.deb)
# Exit: 0 pass, 1 fail, 77 skipped (not root, or no systemd-nspawn; with
# IDEMPROXY_REQUIRE_SYSTEMD_BOOT=1 those fail instead, as in CI).
# Needs: systemd-nspawn (systemd-container), nsenter, debootstrap (only to build the cache),
# dpkg-deb, flock, timeout, python3 (all in the CI image; scripts/install-deps.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source_dir="$(dirname "$here")"
started_at=$SECONDS

say() { printf 'systemd-boot-test [%3ds]: %s\n' "$((SECONDS - started_at))" "$*" >&2; }
fail() {
  say "FAIL: $*"
  exit 1
}
skip() {
  [ "${IDEMPROXY_REQUIRE_SYSTEMD_BOOT:-0}" != 1 ] || fail "$* (IDEMPROXY_REQUIRE_SYSTEMD_BOOT=1)"
  say "SKIP: $*"
  exit 77
}

[ $# -eq 1 ] || { echo "usage: $0 DEB|BUILD_DIR" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || skip "needs root (debootstrap, systemd-nspawn)"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn not found (package systemd-container)"
for tool in nsenter dpkg-deb flock timeout; do
  command -v "$tool" >/dev/null || fail "$tool not found"
done

if [ -d "$1" ]; then
  deb="$(ls -t "$1"/idemproxy_*.deb 2>/dev/null | head -n1 || true)"
  [ -n "$deb" ] || fail "no idemproxy_*.deb in $1 (run: cd $1 && cpack -G DEB)"
else
  deb="$1"
fi
[ -f "$deb" ] || fail "$deb not found"
deb="$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")"
say "package $(basename "$deb")"

# --- the cached root ---------------------------------------------------------------------------
suite=bookworm
# The first archive in this machine's apt sources that serves $suite (deb822 or one-line form).
debian_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      function flush() { if (uris != "" && (" " suites " ") ~ (" " suite " ")) { split(uris, u, " "); print u[1]; found = 1; exit } uris = ""; suites = "" }
      /^[ \t]*$/ { flush(); next }
      /^URIs:/ { uris = $0; sub(/^URIs:[ \t]*/, "", uris) }
      /^Suites:/ { suites = $0; sub(/^Suites:[ \t]*/, "", suites) }
      END { if (!found) flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2 }'
  done
}
mirror="${IDEMPROXY_DEBIAN_MIRROR:-$(debian_mirror | head -n1)}"

# What the root holds: systemd and what the test uses, plus the package's Depends (first
# alternative, no versions), so that the .deb installs with the container offline.
depends="$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:.*//' \
  -e 's/[[:space:]]//g' | grep -v '^$' || true)"
includes="$({ printf '%s\n' systemd systemd-sysv dbus ca-certificates python3 curl; echo "$depends"; } |
  grep -v '^$' | sort -u | paste -sd, -)"
cache="${IDEMPROXY_BOOT_CACHE:-/var/cache/idemproxy-systemd-root}"
cache_key="$(printf '%s\n' "$suite" minbase "$includes" | sha256sum | cut -c1-16)"
cached="$cache/$suite-$cache_key"
mkdir -p "$cache/debs"

# Unmounts whatever is mounted at or below $1 (debootstrap mounts /proc and /sys in its target;
# an interrupted run leaves them).
umount_under() {
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" || true; done
}
build_root() {
  command -v debootstrap >/dev/null || fail "debootstrap not found (and no cached root at $cached)"
  [ -n "$mirror" ] || fail "no $suite archive in /etc/apt/sources.list*; set IDEMPROXY_DEBIAN_MIRROR"
  local tmp="$cached.tmp.$$" stale
  for stale in "$cache/$suite"-*.tmp.*; do  # interrupted builds (we hold the exclusive lock)
    [ -e "$stale" ] || continue
    umount_under "$stale"
    rm -rf "$stale"
  done
  say "debootstrap $suite from $mirror into $cached (cached for later runs)"
  say "  packages: $includes"
  if ! timeout 1200 debootstrap --variant=minbase --include="$includes" --cache-dir="$cache/debs" \
      "$suite" "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1; then
    tail -n 30 "$cache/debootstrap.log" >&2
    umount_under "$tmp"
    rm -rf "$tmp"
    fail "debootstrap failed (log: $cache/debootstrap.log)"
  fi
  umount_under "$tmp"
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_Packages
  # nspawn gives the container a transient machine id when this file is empty.
  : >"$tmp/etc/machine-id"
  mv "$tmp" "$cached"
  # One root is kept: roots for other package sets (an older Depends) go.
  find "$cache" -mindepth 1 -maxdepth 1 -name "$suite-*" ! -name "$(basename "$cached")" \
    -exec rm -rf {} +
}
# Built under an exclusive lock; used under a shared one, so a run never loses its root to
# another run's pruning.
exec 9>"$cache/lock"
flock -w 1500 -x 9 || fail "the cache lock $cache/lock is held too long"
[ -d "$cached" ] || build_root
flock -s 9
say "root $cached"

# --- a throw-away copy, booted -----------------------------------------------------------------
work="$(mktemp -d /var/tmp/idemproxy-boot.XXXXXX)"
nspawn_pid=""
overlay=0
cleanup() {
  local rc=$?
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true  # nspawn: power the container off
    for _ in $(seq 1 100); do
      kill -0 "$nspawn_pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
    wait "$nspawn_pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ] && [ -f "$work/console.log" ]; then
    echo "--- container console (last 40 lines) ---" >&2
    tail -n 40 "$work/console.log" >&2 || true
  fi
  [ "$overlay" -eq 0 ] || umount "$work/root" 2>/dev/null || umount -l "$work/root" || true
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

mkdir -p "$work/root" "$work/upper" "$work/ovl"
if mount -t overlay overlay -o "lowerdir=$cached,upperdir=$work/upper,workdir=$work/ovl" \
    "$work/root" 2>/dev/null; then
  overlay=1
else
  say "overlayfs unavailable; copying the root"
  cp -a "$cached/." "$work/root/"
fi

# Test material, put in place before boot: the package, the fake upstream as a unit, and a
# watchdog period short enough to watch two of them (the shipped unit says 30s).
t=/opt/idemproxy-test
mkdir -p "$work/root$t" "$work/root/etc/systemd/system/idemproxy.service.d"
cp "$deb" "$work/root$t/"
cp "$source_dir/tests/fake_upstream.py" "$work/root$t/"
cat >"$work/root/etc/systemd/system/test-upstream.service" <<EOF
[Unit]
Description=fake payment API for the idemproxy boot test
[Service]
ExecStart=/usr/bin/python3 $t/fake_upstream.py --port 9000
EOF
watchdog_s=3
printf '[Service]\nWatchdogSec=%ss\n' "$watchdog_s" \
  >"$work/root/etc/systemd/system/idemproxy.service.d/test-watchdog.conf"

machine="idemproxy-boot-$$"
systemd-nspawn -b --register=no --keep-unit --private-network --console=read-only \
  -M "$machine" -D "$work/root" </dev/null >"$work/console.log" 2>&1 &
nspawn_pid=$!

# The container's PID 1: a process whose NSpid ends in 1, descended from nspawn.
leader=""
find_leader() {
  local s pid ppid nspid
  for s in /proc/[0-9]*/status; do
    pid="${s#/proc/}"
    pid="${pid%/status}"
    ppid="$(awk '/^PPid:/ { print $2 }' "$s" 2>/dev/null)" || continue
    nspid="$(awk '/^NSpid:/ { print $NF }' "$s" 2>/dev/null)" || continue
    if [ "$nspid" = 1 ] && [ "$pid" != 1 ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ]; then
      # The leader's parent is nspawn, or a child of nspawn.
      if [ "$ppid" = "$nspawn_pid" ] ||
          [ "$(awk '/^PPid:/ { print $2 }' "/proc/$ppid/status" 2>/dev/null)" = "$nspawn_pid" ]; then
        echo "$pid"
        return 0
      fi
    fi
  done
  return 1
}
deadline=$((SECONDS + 60))
until leader="$(find_leader)"; do
  kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited"
  [ "$SECONDS" -lt "$deadline" ] || fail "no systemd in the container after 60s"
  sleep 0.2
done

# Runs a command in the container as root, with a clean environment and a time limit.
ct() {
  timeout "${CT_TIMEOUT:-60}" nsenter -t "$leader" -a -- /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
    SYSTEMD_PAGER= SYSTEMD_COLORS=0 DEBIAN_FRONTEND=noninteractive "$@"
}
state="$(CT_TIMEOUT=120 ct systemctl is-system-running --wait || true)"
case "$state" in
  running) ;;
  degraded) say "system degraded: $(ct systemctl --failed --no-legend --plain | tr '\n' ' ')" ;;
  *) fail "system did not come up: '$state'" ;;
esac
say "booted (pid $leader on the host): $state"

# --- helpers -----------------------------------------------------------------------------------
prop() { ct systemctl show -P "$2" "$1"; }
upstream_count() {
  ct curl -sS -m 5 http://127.0.0.1:9000/__control/calls |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])'
}
# POST with a key; prints "STATUS REPLAYED" (REPLAYED: the Idempotent-Replayed value or "-").
post() {  # path key
  ct curl -sS -m 30 -o /dev/null -D - -X POST -H "Idempotency-Key: $2" \
    -H 'Authorization: Bearer boot-test' -H 'Content-Type: application/json' \
    --data '{"amount":100}' "http://127.0.0.1:8080$1" | tr -d '\r' | awk '
      NR == 1 { status = $2 }
      tolower($1) == "idempotent-replayed:" { replayed = $2 }
      END { print status, (replayed == "" ? "-" : replayed) }'
}
expect_post() {  # path key "STATUS REPLAYED" what
  local got
  got="$(post "$1" "$2")"
  [ "$got" = "$3" ] || fail "$4: POST $1 key $2 got '$got', expected '$3'"
}
poll() {  # seconds what command...
  local seconds="$1" what="$2"
  local limit=$((SECONDS + seconds))
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$limit" ] || fail "$what: not within ${seconds}s"
    sleep 0.2
  done
}
store=/var/lib/private/idemproxy
config=/etc/idemproxy/idemproxy.yaml
keys_list() { ct idemproxy keys list -c "$config"; }

# --- install -----------------------------------------------------------------------------------
CT_TIMEOUT=180 ct apt-get install -y -q --no-install-recommends "$t/$(basename "$deb")" \
  >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; fail "apt-get install ./$(basename "$deb")"; }
[ "$(ct systemctl is-enabled idemproxy || true)" = disabled ] || fail "the package enabled the service"
[ "$(ct systemctl is-active idemproxy || true)" = inactive ] || fail "the package started the service"
say "installed with apt; not enabled, not started"

# keys as root before the service ever ran: a clear failure, and no store created as root.
if ct idemproxy keys list -c "$config" >"$work/keys0.out" 2>&1; then
  fail "keys list before the first start succeeded"
fi
grep -q "cannot open the store" "$work/keys0.out" || fail "keys list: $(cat "$work/keys0.out")"
ct test ! -e /var/lib/idemproxy || fail "keys list created /var/lib/idemproxy"
say "keys list as root before the first start: '$(head -n1 "$work/keys0.out")'"

# The configurations: the packaged one; v2 adds an idempotent route; bad has an unknown key.
ct cp "$config" "$t/v1.yaml"
ct sh -c "awk '/^  - name: everything-else/ { print \"  - name: refunds\"; print \"    methods: [POST]\";
  print \"    path: /v2/refunds/*\"; print \"    upstream: payments\"; print \"    idempotency: {}\" }
  { print }' $t/v1.yaml >$t/v2.yaml && sed 's/^log:/bogus_setting: 1\nlog:/' $t/v2.yaml >$t/bad.yaml"
ct idemproxy check -c "$t/v2.yaml" >/dev/null || fail "v2.yaml is invalid"
! ct idemproxy check -c "$t/bad.yaml" >/dev/null 2>&1 || fail "bad.yaml is valid"

ct systemctl start test-upstream
poll 20 "fake upstream up" ct curl -sf -m 2 -o /dev/null http://127.0.0.1:9000/__control/calls

# --- start, forward, replay --------------------------------------------------------------------
ct systemctl enable --now idemproxy >/dev/null 2>&1 || {
  ct journalctl -u idemproxy --no-pager -n 30 >&2
  fail "systemctl enable --now idemproxy"
}
[ "$(ct systemctl is-active idemproxy)" = active ] || fail "not active after enable --now"
pid1="$(prop idemproxy MainPID)"
nofile="$(ct journalctl -u idemproxy -o cat --no-pager | grep '"event":"started"' |
  grep -o '"max_open_files":[0-9]*' | tail -n1 | cut -d: -f2 || true)"
[ -n "$nofile" ] || fail "the started line does not show max_open_files"
say "enable --now: active, MainPID $pid1, max_open_files $nofile (LimitNOFILE=$(prop idemproxy LimitNOFILE))"

expect_post /v1/payments/p1 k1 "201 -" "first POST"
expect_post /v1/payments/p1 k1 "201 true" "retried POST"
[ "$(upstream_count)" = 1 ] || fail "upstream called $(upstream_count) times, expected 1"
say "POST forwarded once, retry replayed (upstream count 1)"

# /etc/idemproxy is read-only inside the sandbox (no ConfigurationDirectory=).
opts="$(ct nsenter -t "$pid1" -m findmnt -T /etc/idemproxy -no OPTIONS)"
tr ',' '\n' <<<"$opts" | grep -qx ro || fail "/etc/idemproxy is writable in the sandbox ($opts)"
opts="$(ct nsenter -t "$pid1" -m findmnt -T /var/lib/idemproxy -no OPTIONS)"
tr ',' '\n' <<<"$opts" | grep -qx rw || fail "the store is not writable in the sandbox ($opts)"
say "sandbox: /etc/idemproxy read-only, the store read-write"

# --- reload ------------------------------------------------------------------------------------
expect_post /v2/refunds/r1 r0 "201 -" "v1: /v2/refunds passes through"
expect_post /v2/refunds/r1 r0 "201 -" "v1: /v2/refunds passes through (again)"
ct cp "$t/v2.yaml" "$config"
ct systemctl reload idemproxy || fail "systemctl reload with a valid file failed"
n=0
refunds_idempotent() {
  n=$((n + 1))
  [ "$(post /v2/refunds/r1 "r-$n")" = "201 -" ] && [ "$(post /v2/refunds/r1 "r-$n")" = "201 true" ]
}
poll 15 "the reloaded route in force" refunds_idempotent
[ "$(prop idemproxy MainPID)" = "$pid1" ] || fail "reload changed the main process"
say "reload (valid): new idempotent route in force, same process"

ct cp "$t/bad.yaml" "$config"
if ct systemctl reload idemproxy >"$work/reload.out" 2>&1; then
  fail "systemctl reload with an invalid file succeeded"
fi
[ "$(ct systemctl is-active idemproxy)" = active ] || fail "invalid reload: service not active"
[ "$(prop idemproxy MainPID)" = "$pid1" ] || fail "invalid reload: main process changed"
refunds_idempotent || fail "invalid reload: the previous configuration no longer serves"
ct journalctl -p err -u idemproxy -o cat --no-pager >"$work/err.log"
grep -q '"event":"reload-rejected".*bogus_setting' "$work/err.log" ||
  fail "reload-rejected not in journalctl -p err -u idemproxy: $(cat "$work/err.log")"
! grep -q '"event":"started"' "$work/err.log" || fail "info lines are filed as errors"
say "reload (invalid): systemctl reload failed ('$(head -n1 "$work/reload.out")'), old config serves"
# The daemon's own error lines: a SIGHUP that bypasses the check finds the invalid file.
ct systemctl kill -s SIGHUP --kill-who=main idemproxy
daemon_error_logged() {
  ct journalctl -p err "_PID=$pid1" -o cat --no-pager | grep -q '"event":"reload-rejected"'
}
poll 15 "the daemon's reload-rejected at priority err" daemon_error_logged
refunds_idempotent || fail "rejected SIGHUP reload: the previous configuration no longer serves"
ct cp "$t/v2.yaml" "$config"
say "journal: reload-rejected at priority err, from ExecReload= and from the daemon"

# --- watchdog: two periods, no restart ---------------------------------------------------------
declare -A pings=()
watch_from=$SECONDS
watched_two_periods() {
  [ "$(prop idemproxy MainPID)" = "$pid1" ] || fail "watchdog: the main process changed"
  [ "$(prop idemproxy NRestarts)" = 0 ] || fail "watchdog: the service was restarted"
  pings["$(prop idemproxy WatchdogTimestampMonotonic)"]=1
  [ "$((SECONDS - watch_from))" -gt $((2 * watchdog_s)) ] && [ "${#pings[@]}" -ge 4 ]
}
poll $((4 * watchdog_s + 10)) "watchdog pings over two periods" watched_two_periods
! ct journalctl -u idemproxy --no-pager | grep -qi 'watchdog timeout' || fail "watchdog timeout"
say "watchdog: ${#pings[@]} pings seen over $((SECONDS - watch_from))s (WatchdogSec=${watchdog_s}s), no restart"

# --- restart keeps records ---------------------------------------------------------------------
calls="$(upstream_count)"
ct systemctl restart idemproxy
pid2="$(prop idemproxy MainPID)"
[ "$pid2" != "$pid1" ] || fail "restart did not start a new process"
expect_post /v1/payments/p1 k1 "201 true" "replay after restart"
[ "$(upstream_count)" = "$calls" ] || fail "the replay after restart reached the upstream"
say "restart: new process $pid2, k1 still replayed"

# --- stop with a request in flight -------------------------------------------------------------
before="$(upstream_count)"
ct curl -sS -m 5 -o /dev/null -X POST --data '[{"delay_ms": 3000}]' \
  http://127.0.0.1:9000/__control/script
post /v1/payments/slow slow-1 >"$work/slow.out" 2>&1 &
slow_pid=$!
upstream_has() { [ "$(upstream_count)" -gt "$before" ]; }
poll 15 "the slow request reaching the upstream" upstream_has
ct systemctl stop idemproxy || fail "systemctl stop failed"
wait "$slow_pid" || fail "the in-flight client failed: $(cat "$work/slow.out")"
[ "$(cat "$work/slow.out")" = "201 -" ] || fail "in-flight request got '$(cat "$work/slow.out")'"
[ "$(prop idemproxy ExecMainStatus)" = 0 ] || fail "stop: exit status $(prop idemproxy ExecMainStatus)"
[ "$(prop idemproxy Result)" = success ] || fail "stop: result $(prop idemproxy Result)"
say "stop with a request in flight: client got 201, exit 0"

# --- the documented restore, then keys as root, then the service again --------------------------
keys_list >"$work/keys1.out" || fail "keys list (service stopped): $(cat "$work/keys1.out")"
grep -Eq '^payments +slow-1 +completed +201' "$work/keys1.out" ||
  fail "the in-flight answer was not recorded: $(cat "$work/keys1.out")"
ct sh -ec "umask 077; mkdir /root/backup; cp $store/data.mdb /root/backup/
  mv $store/data.mdb $store/data.mdb.broken
  for f in wal wal.lock; do [ ! -e $store/\$f ] || mv $store/\$f $store/\$f.broken; done
  rm -f $store/lock.mdb
  install -m 600 /root/backup/data.mdb $store/data.mdb
  chown --reference=$store $store/data.mdb"
keys_list >"$work/keys2.out" || fail "keys list after restore: $(cat "$work/keys2.out")"
owner="$(ct stat -c %u "$store")"
for f in data.mdb lock.mdb; do
  [ "$(ct stat -c %u "$store/$f")" = "$owner" ] ||
    fail "keys list as root left $f owned by uid $(ct stat -c %u "$store/$f"), not $owner"
done
[ "$owner" != 0 ] || fail "the store directory is root's"
ct systemctl start idemproxy || {
  ct journalctl -u idemproxy --no-pager -n 20 >&2
  fail "the service does not start after keys list as root"
}
expect_post /v1/payments/slow slow-1 "201 true" "replay of the request answered during stop"
expect_post /v1/payments/p1 k1 "201 true" "replay after restore"
keys_list >"$work/keys3.out" || fail "keys list while running"
grep -q 'k1' "$work/keys3.out" || fail "keys list while running: $(cat "$work/keys3.out")"
say "restore + keys list as root: store stays uid $owner's; service starts and replays; keys list while running"

# --- purge -------------------------------------------------------------------------------------
CT_TIMEOUT=120 ct apt-get purge -y -q idemproxy >"$work/purge.log" 2>&1 ||
  { cat "$work/purge.log" >&2; fail "apt-get purge"; }
[ "$(ct systemctl is-active idemproxy || true)" != active ] || fail "still active after purge"
ct test ! -e /lib/systemd/system/idemproxy.service || fail "unit left after purge"
ct test ! -e "$config" || fail "$config left after purge"
ct test -f "$store/data.mdb" || fail "purge removed the store (it must be kept)"
say "purge: stopped, unit and config gone, store kept"

say "PASS ($((SECONDS - started_at))s)"
