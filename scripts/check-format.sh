#!/usr/bin/env bash
# Fails when a tracked C/C++ file differs from .clang-format (CI runs it). Fix: clang-format -i.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.cpp' '*.h' '*.c')
[ "${#files[@]}" -gt 0 ] || exit 0
clang-format --dry-run --Werror "${files[@]}"
echo "clang-format: ${#files[@]} files clean"
