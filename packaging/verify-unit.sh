#!/usr/bin/env bash
# Checks packaging/idemproxy.service with systemd-analyze: `verify` must print nothing, and the
# offline `security` exposure score must stay at or below 2.5 (it is 1.5 today).
# `verify` insists that ExecStart= binaries exist, so it checks a temporary copy of the unit
# with /usr/bin/idemproxy replaced by BINARY (default /bin/true; pass the built binary).
# Usage: packaging/verify-unit.sh [BINARY]        exit 0: clean, 1: any warning or error
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
unit="$here/idemproxy.service"
binary="${1:-/bin/true}"
command -v systemd-analyze >/dev/null || { echo "verify-unit: systemd-analyze not found" >&2; exit 1; }
[ -x "$binary" ] || { echo "verify-unit: $binary is not executable" >&2; exit 1; }
binary="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
sed "s|/usr/bin/idemproxy|$binary|g" "$unit" >"$scratch/idemproxy.service"

status=0
# --man=no: the man page is only installed with the package.
if ! out="$(cd "$scratch" && systemd-analyze verify --man=no "$scratch/idemproxy.service" 2>&1)"; then
  status=1
fi
if [ -n "$out" ]; then
  status=1
fi
[ -z "$out" ] || printf '%s\n' "$out" >&2

# Exposure is reported as 0.0–10.0; --threshold takes tenths.
if ! sec="$(cd "$scratch" && systemd-analyze security --offline=yes --threshold=25 \
    "$scratch/idemproxy.service" 2>&1)"; then
  printf '%s\n' "$sec" | tail -n 40 >&2
  echo "verify-unit: security exposure above 2.5" >&2
  status=1
fi

if [ "$status" -eq 0 ]; then
  echo "verify-unit: $unit is clean ($(printf '%s\n' "$sec" | grep -o 'exposure level.*' | head -n1))"
fi
exit "$status"
