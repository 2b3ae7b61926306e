#!/usr/bin/env bash
# The whole test suite: system tools, a fresh build, then every test file with tap, then a check
# that the suite left no network namespace or link behind (every test cleans up after itself,
# also when it fails). Prints a plain closing line "tests: N passed, N failed, N skipped".
# Arguments go to tap (test files; none: every test file). .ci/run, which runs this once per Node
# version, sets PORTFERRY_TEST_BUILT=1 (it built once already) and PORTFERRY_TEST_LABEL (the
# closing line then reads "tests (LABEL): …", and .ci/run prints the one "tests:" line, summed).
set -uo pipefail
cd "$(dirname "$0")/.."
bash test/setup.sh || exit 1
[ "${PORTFERRY_TEST_BUILT:-}" = 1 ] || npm run --silent build || exit 1

snapshot() {
  command -v ip >/dev/null 2>&1 || return 0
  { ip netns list 2>/dev/null | awk '{print "netns " $1}'; ip -o link show 2>/dev/null | awk -F': ' '{print "link " $2}'; } | sort
}
before=$(snapshot)

out=$(mktemp)
trap 'rm -f "$out"' EXIT
npx tap "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
summary=$(grep -E '^# \{ total: ' "$out" | tail -1)
num() { printf '%s' "$summary" | grep -oE "$1: [0-9]+" | grep -oE '[0-9]+' || echo 0; }
passed=$(num pass); failed=$(num fail); skipped=$(num skip)

left=$(comm -13 <(printf '%s\n' "$before") <(snapshot) | grep -E '(netns|link) ' || true)
if [ -n "$left" ]; then
  echo "test/run.sh: the suite left these behind:" >&2
  printf '  %s\n' "$left" >&2
  failed=$((failed + 1)); rc=1
fi
echo "tests${PORTFERRY_TEST_LABEL:+ (${PORTFERRY_TEST_LABEL})}: ${passed} passed, ${failed} failed, ${skipped} skipped"
exit "$rc"
