#!/usr/bin/env bash
# The test suite on a machine that is busy with something else: a fresh
# clone of HEAD, then `bash scripts/test.sh` (the tests, then again against
# the C core built with ASan/UBSan) RUNS times in a row while two busy loops
# at nice 5 take both cores for the whole time. Every run must pass: a test
# asserts behaviour, never a timing, so a slow machine cannot fail it.
#
#   bash scripts/stress-ci.sh            3 runs
#   RUNS=1 bash scripts/stress-ci.sh     one
#
# The quick benchmarks are left out (OXBOOT_SKIP_BENCH=1): they measure
# speed, which two busy loops take away by design; bench/run.sh --quick is
# what CI runs for them, on an otherwise idle machine. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
repo=$(pwd)
work=$(mktemp -d)
hogs=()
cleanup() {
    for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

git clone -q "$repo" "$work/oxboot"
echo "stress-ci: fresh clone of $(git -C "$work/oxboot" rev-parse --short HEAD) in $work/oxboot" >&2
# Installed once, before the hogs start (the first test.sh would do it too).
(cd "$work/oxboot" && scripts/install-deps.sh)

for _ in 1 2; do
    nice -n 5 bash -c 'while :; do :; done' &
    hogs+=("$!")
done
echo "stress-ci: two busy loops at nice 5: ${hogs[*]}" >&2

failed=0
summary=()
for i in $(seq 1 "$RUNS"); do
    log="$work/run-$i.log"
    start=$(date +%s)
    status=0
    (cd "$work/oxboot" && OXBOOT_SKIP_BENCH=1 bash scripts/test.sh) >"$log" 2>&1 || status=$?
    took=$(($(date +%s) - start))
    # pytest's closing lines: the plain run's, then the sanitizer run's.
    counts=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed).* =+$' "$log" \
             | sed -E 's/=+ //; s/ =+$//' | paste -sd ';' -)
    summary+=("run $i: exit $status in ${took}s: ${counts:-no pytest summary}")
    echo "stress-ci: ${summary[-1]}" >&2
    if [ "$status" != 0 ]; then
        failed=1
        echo "---- run $i failed; the end of its log:" >&2
        tail -n 60 "$log" >&2
    fi
done
printf '%s\n' "${summary[@]}"
exit "$failed"
