#!/usr/bin/env bash
# Run every benchmark and publish: bench/results/<date>.json and a
# regenerated BENCHMARKS.md. Installs what it needs first. Run as root.
#   bash bench/run.sh            full run (1 GiB data set, ~15 minutes)
#   bash bench/run.sh --quick    CI's quick mode (small data, a minute or two)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
scripts/install-deps.sh
if [ "${1:-}" = "--quick" ]; then
    export OXBOOT_BENCH_QUICK=1
    shift
fi
mkdir -p bench/results
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
suffix=${OXBOOT_BENCH_QUICK:+-quick}
out="bench/results/${stamp}${suffix}.json"
status=0
OXBOOT_BENCH_RESULTS="$out" "$PY" -m pytest bench -q -s -p no:cacheprovider \
    --benchmark-disable-gc --benchmark-columns=min,mean,max "$@" || status=$?
if [ "$status" = 5 ]; then
    echo "no benchmark ran" >&2
    exit 1
fi
if [ -f "$out" ] && [ -z "${OXBOOT_BENCH_QUICK:-}" ]; then
    "$PY" bench/report.py "$out" > BENCHMARKS.md
    echo "wrote $out and BENCHMARKS.md" >&2
fi
exit "$status"
