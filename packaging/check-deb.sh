#!/usr/bin/env bash
# Builds the Debian package from a configured build directory and checks what is in it: the
# files and their modes, Depends computed from the binary's libraries, the conffile, and the
# maintainer scripts (daemon-reload, never starting the service). The package and all scratch
# files go to a temporary directory (cpack brings the build directory up to date first).
# Usage: packaging/check-deb.sh BUILD_DIR     exit 0: package is right, 1: it is not
# Needs: cpack (cmake), dpkg-deb (dpkg), dpkg-shlibdeps (dpkg-dev), file (CPack uses it to find
# the ELF files for dpkg-shlibdeps), gzip.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
build="$(cd "$1" && pwd)"
here="$(cd "$(dirname "$0")" && pwd)"
[ -f "$build/CPackConfig.cmake" ] || { echo "check-deb: $build is not a configured build dir" >&2; exit 1; }
for tool in cpack dpkg-deb dpkg-shlibdeps file; do
  command -v "$tool" >/dev/null || { echo "check-deb: $tool not found" >&2; exit 1; }
done

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failures=0
fail() { echo "check-deb: FAIL: $*" >&2; failures=$((failures + 1)); }

if ! (cd "$scratch" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$scratch/out") \
    >"$scratch/cpack.log" 2>&1; then
  cat "$scratch/cpack.log" >&2
  echo "check-deb: cpack failed" >&2
  exit 1
fi
debs=("$scratch"/out/idemproxy_*.deb)
[ -f "${debs[0]}" ] || { cat "$scratch/cpack.log" >&2; echo "check-deb: no .deb produced" >&2; exit 1; }
deb="${debs[0]}"
echo "check-deb: built $(basename "$deb")"

# --- contents ---------------------------------------------------------------------------------
root="$scratch/root"
dpkg-deb -x "$deb" "$root"
expect_file() {  # path mode
  if [ ! -f "$root$1" ]; then
    fail "missing $1"
  elif [ "$(stat -c %a "$root$1")" != "$2" ]; then
    fail "$1 has mode $(stat -c %a "$root$1"), expected $2"
  fi
}
expect_file /usr/bin/idemproxy 755
expect_file /etc/idemproxy/idemproxy.yaml 644
expect_file /lib/systemd/system/idemproxy.service 644
if [ -f "$root/usr/share/man/man1/idemproxy.1.gz" ]; then
  gzip -t "$root/usr/share/man/man1/idemproxy.1.gz" || fail "man page is not valid gzip"
else
  expect_file /usr/share/man/man1/idemproxy.1 644
fi
if [ -f "$root/lib/systemd/system/idemproxy.service" ]; then
  cmp -s "$root/lib/systemd/system/idemproxy.service" "$here/idemproxy.service" ||
    fail "installed unit differs from packaging/idemproxy.service"
fi
if [ -x "$root/usr/bin/idemproxy" ]; then
  "$root/usr/bin/idemproxy" --version >/dev/null 2>&1 || fail "idemproxy --version failed"
fi
# Nothing outside the expected trees (a stray install() rule would show up here).
allowed='^/(usr/bin/idemproxy|etc/idemproxy/idemproxy\.yaml|lib/systemd/system/idemproxy\.service|usr/share/man/man1/idemproxy\.1(\.gz)?|usr/share/doc/idemproxy/.*)$'
unexpected="$(cd "$root" && find . -type f | sed 's|^\.||' | { grep -Ev "$allowed" || true; })"
[ -z "$unexpected" ] || fail "unexpected files in the package:"$'\n'"$unexpected"

# --- control ----------------------------------------------------------------------------------
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = idemproxy ] || fail "Package is '$(field Package)'"
[ "$(field Section)" = net ] || fail "Section is '$(field Section)', expected net"
[ -n "$(field Maintainer)" ] || fail "no Maintainer"
[ -n "$(field Description)" ] || fail "no Description"
depends="$(field Depends)"
echo "check-deb: Depends: $depends"
for lib in libevent libcurl liblmdb libsystemd libcjson libyaml-cpp libssl libhiredis libc6 libstdc++; do
  grep -q "$lib" <<<"$depends" || fail "Depends lacks $lib"
done

ctrl="$scratch/control"
dpkg-deb -e "$deb" "$ctrl"
if [ -f "$ctrl/conffiles" ]; then
  grep -qx /etc/idemproxy/idemproxy.yaml "$ctrl/conffiles" ||
    fail "conffiles does not list /etc/idemproxy/idemproxy.yaml"
else
  fail "no conffiles"
fi
dpkg-deb -I "$deb" conffiles >/dev/null 2>&1 || fail "dpkg-deb -I does not show conffiles"
for script in postinst prerm postrm; do
  s="$ctrl/$script"
  if [ ! -f "$s" ]; then fail "no $script"; continue; fi
  [ -x "$s" ] || fail "$script is not executable"
  sh -n "$s" || fail "$script has a syntax error"
  if sed 's/#.*//' "$s" | grep -Eq 'systemctl.*[[:space:]](start|restart|try-restart|reload-or-restart|enable)([[:space:]]|$)'; then
    fail "$script starts or enables the service"
  fi
done
for script in postinst postrm; do
  grep -q 'daemon-reload' "$ctrl/$script" 2>/dev/null || fail "$script does not daemon-reload"
done

if [ "$failures" -ne 0 ]; then
  echo "check-deb: $failures problem(s)" >&2
  exit 1
fi
echo "check-deb: ok"
