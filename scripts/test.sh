#!/usr/bin/env bash
# The whole test suite, as CI runs it: install everything, lint, run the
# tests, then run them again against a C core built with AddressSanitizer
# and UBSan. Run as root (the network tests create namespaces and veths).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

scripts/install-deps.sh

echo "== ruff" >&2
"$PY" -m ruff check .

echo "== tests" >&2
status=0
"$PY" -m pytest -q "$@" || status=$?
if [ "$status" = 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    exit 1
fi
[ "$status" = 0 ] || exit "$status"

if [ "${OXBOOT_SKIP_SANITIZE:-0}" != 1 ]; then
    echo "== tests against the C core built with -fsanitize=address,undefined" >&2
    scripts/sanitize.sh -q "$@"
fi

echo "== portable C core cross-compiled, tests against a build without the network core" >&2
scripts/portable-check.sh

if [ "${OXBOOT_SKIP_BENCH:-0}" != 1 ]; then
    echo "== quick benchmarks (ratios against same-run baselines, floors in bench/floors.json)" >&2
    bash bench/run.sh --quick
fi
