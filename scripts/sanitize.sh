#!/usr/bin/env bash
# Build the C core with ASan+UBSan in a scratch copy of the tree and run the
# test suite against it. Python itself is not instrumented, so the ASan
# runtime is preloaded; leak checking is off (CPython keeps memory on exit).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The whole tree (the tests read bench/floors.json, man/, docs/ ...), less
# build output: the C core is built again, instrumented.
tar -C . --exclude=./.git --exclude='*.so' --exclude='*.o' --exclude=__pycache__ \
    --exclude='*.egg-info' --exclude=./build --exclude=./dist --exclude=./oxboot/_core.c \
    -cf - . | tar -C "$work" -xf -
(cd "$work" && OXBOOT_SANITIZE=1 "$PY" setup.py -q build_ext --inplace >/dev/null 2>&1) || {
    echo "sanitizer build failed" >&2
    (cd "$work" && OXBOOT_SANITIZE=1 "$PY" setup.py build_ext --inplace)
    exit 1
}
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
status=0
(cd "$work" && \
    LD_PRELOAD="$asan $ubsan" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    OXBOOT_SANITIZED=1 PYTHONPATH="$work" \
    "$PY" -m pytest -p no:cacheprovider "$@") || status=$?
[ "$status" = 5 ] && { echo "no tests ran under the sanitizers" >&2; exit 1; }
exit "$status"
