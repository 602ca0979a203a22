#!/usr/bin/env bash
# Builds the libFuzzer targets (preset `fuzz`: clang, ASan + UBSan) and runs each for a bounded
# time from its seed corpus (tests/fuzz/corpus/<target>/). Fails on any crash, leak, timeout or
# sanitizer report; the reproducer is left in build/fuzz/findings/.
# Usage: bash scripts/fuzz.sh [seconds per target (default 20)] [target...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
shift || true
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(key path canonical_json record config upstream_head upstream_response)
fi
findings=build/fuzz/findings
mkdir -p "$findings"
# One target per core at a time (each fuzzer is single-threaded).
parallel=$(nproc)

run_one() {  # fuzz_$1 for $seconds; writes its exit status (1: a finding) to $findings/$1.rc
  local t=$1 work
  work=$(mktemp -d)  # new inputs land here, not in the checked-in seeds
  local rc=0
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "build/fuzz/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$findings/$t-" "$work" "tests/fuzz/corpus/$t" \
    >"$findings/$t.log" 2>&1 || rc=1
  rm -rf "$work"
  echo $rc >"$findings/$t.rc"
}

for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || true; done
  echo "== fuzz_$t: ${seconds}s"
  rm -f "$findings/$t.rc"
  run_one "$t" &
done
wait
status=0
for t in "${targets[@]}"; do
  if [ "$(cat "$findings/$t.rc" 2>/dev/null)" = 0 ]; then
    echo "fuzz_$t: $(grep -E 'stat::number_of_executed_units' "$findings/$t.log" | tr -s ' ')"
  else
    echo "fuzz_$t FAILED:"
    tail -40 "$findings/$t.log"
    status=1
  fi
done
exit $status
