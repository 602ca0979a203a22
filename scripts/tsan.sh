#!/usr/bin/env bash
# The ThreadSanitizer suite (preset `tsan`, clang): the unit tests and the integration tests
# that exercise the worker mailboxes, the store writer thread, waiters and reload. Fails on any
# report, including one from a proxy process whose exit status a test did not look at: reports
# are written to build/tsan/reports/ and that directory must stay empty.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset tsan >/dev/null
cmake --build --preset tsan
rm -rf build/tsan/reports
mkdir -p build/tsan/reports
status=0
ctest --preset tsan || status=1
if compgen -G "build/tsan/reports/*" >/dev/null; then
  echo "ThreadSanitizer reports:"
  cat build/tsan/reports/*
  status=1
fi
exit $status
