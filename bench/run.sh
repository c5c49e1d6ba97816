#!/usr/bin/env bash
# Run every benchmark and publish: bench/results/<date>.json and a
# regenerated BENCHMARKS.md. Installs what it needs first. Run as root.
#   bash bench/run.sh            full run (1 GiB data set, ~15 minutes)
#   bash bench/run.sh --quick    CI's quick mode (256 MiB data, about 3 minutes)
#   bash bench/run.sh --quick --self-test
#       proves the floors bite: every benchmark runs its code slowed through
#       an option of its own (floors.json's self_test), and the run passes
#       only if each figure so slowed breaks its floor; prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
scripts/install-deps.sh
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) export OXBOOT_BENCH_QUICK=1 ;;
        --self-test) export OXBOOT_BENCH_SELF_TEST=1 ;;
        *) break ;;
    esac
    shift
done
mkdir -p bench/results
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
suffix=${OXBOOT_BENCH_QUICK:+-quick}${OXBOOT_BENCH_SELF_TEST:+-selftest}
out="bench/results/${stamp}${suffix}.json"
# pytest-benchmark's raw timings, full runs only: saved as
# bench/results/raw/<interpreter>/NNNN_<stamp>.json (stats, no per-round data:
# ~12 KB, committed with the results) and shown beside the newest earlier save.
# Quick runs save none: CI starts from a clean checkout and their small data
# is not comparable with a full run's. No --benchmark-compare-fail: these are
# absolute seconds, full runs move between machines, and unchanged code has
# measured 1.1-3.0 s on one machine (mkimage raw: the disk's fsync,
# bench/notes.md); the same-run ratios against bench/floors.json decide.
raw=()
if [ -z "${OXBOOT_BENCH_QUICK:-}${OXBOOT_BENCH_SELF_TEST:-}" ]; then
    raw=(--benchmark-storage=file://bench/results/raw --benchmark-save="$stamp")
    prev=$(printf '%s\n' bench/results/raw/*/*_*.json | awk -F_ '{print $NF "\t" $0}' \
           | sort | tail -n1 | cut -f2)  # newest by the stamp after the last "_"
    # sorted by name, each benchmark's row sits beside its earlier one
    if [ -f "$prev" ]; then raw+=(--benchmark-compare="$prev" --benchmark-sort=name); fi
fi
status=0
OXBOOT_BENCH_RESULTS="$out" "$PY" -m pytest bench -q -s -p no:cacheprovider \
    --benchmark-disable-gc --benchmark-columns=min,mean,max "${raw[@]}" "$@" || status=$?
if [ "$status" = 5 ]; then
    echo "no benchmark ran" >&2
    exit 1
fi
if [ -f "$out" ] && [ -z "${OXBOOT_BENCH_QUICK:-}${OXBOOT_BENCH_SELF_TEST:-}" ]; then
    "$PY" bench/report.py "$out" > BENCHMARKS.md
    echo "wrote $out and BENCHMARKS.md" >&2
fi
exit "$status"
