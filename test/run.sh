#!/usr/bin/env bash
# The whole test suite: system tools, a fresh build, then every test file with tap.
# Prints a plain closing line "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
bash test/setup.sh || exit 1
npm run --silent build || exit 1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
npx tap "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
summary=$(grep -E '^# \{ total: ' "$out" | tail -1)
num() { printf '%s' "$summary" | grep -oE "$1: [0-9]+" | grep -oE '[0-9]+' || echo 0; }
echo "tests: $(num pass) passed, $(num fail) failed, $(num skip) skipped"
exit "$rc"
