#!/usr/bin/env bash
# Installs the dependencies, builds idemproxy and runs every test (unit + integration).
# Usage: bash scripts/test.sh [preset]   (preset: dev (default), asan, release)
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-dev}"
bash scripts/install-deps.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset"
ctest --preset "$preset"
