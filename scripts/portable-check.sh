#!/usr/bin/env bash
# The image tools must build and work on every POSIX system (Helios images
# are built on illumos, engineers use macOS); only the network core is
# Linux's. Checked here, on Linux:
#  1. every portable C source (and the headers) compiles for macOS and
#     FreeBSD with -Wall -Werror, cross-compiled by zig's clang against its
#     own copy of those systems' C headers;
#  2. the package built with OXBOOT_PORTABLE=1 (no network core) in a
#     scratch copy passes the image-tool, codec and vector tests (the tests
#     of the network core skip), and bootserver says in one line that it
#     needs Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# 0.15 is the first zig with FreeBSD's C headers.
ZIG_VERSION=0.15.2

"$PY" -m ziglang version 2>/dev/null | grep -qx "$ZIG_VERSION" ||
    "$PY" -m pip install -q "ziglang==$ZIG_VERSION"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- 1. cross-compile the portable sources ---------------------------------

# The portable sources, as the build names them (one list: csrc/_ffi_build.py).
read -r -a sources < <("$PY" - <<'EOF'
import importlib.util
spec = importlib.util.spec_from_file_location("ffi_build", "csrc/_ffi_build.py")
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
print(" ".join(mod.PORTABLE_SOURCES))
EOF
)

# Only the headers of the libraries come from this system (copied, with
# OpenSSL's per-architecture configuration beside them); the C library's
# are zig's for the target, so nothing Linux-only can slip in through them.
deps="$work/include"
mkdir -p "$deps/openssl"
multiarch=$(gcc -print-multiarch 2>/dev/null || true)
cp /usr/include/openssl/*.h "$deps/openssl/"
if [ -n "$multiarch" ] && [ -d "/usr/include/$multiarch/openssl" ]; then
    cp "/usr/include/$multiarch/openssl/"*.h "$deps/openssl/"
fi
cp /usr/include/zlib.h /usr/include/zconf.h /usr/include/libdeflate.h "$deps/"

# The build's own warning flags (csrc/_ffi_build.py), made errors.
cflags=(-std=c11 -O2 -Wall -Wextra -Wno-unused-parameter -Werror -isystem "$deps" -I csrc)
for target in x86_64-macos x86_64-freebsd; do
    echo "== portable C core for $target: ${sources[*]}" >&2
    for name in "${sources[@]}"; do
        "$PY" -m ziglang cc -target "$target" "${cflags[@]}" -c "csrc/$name.c" \
            -o "$work/$target-$name.o"
    done
    # Each header on its own, as a translation unit (where its unused static
    # inline helpers are no news).
    for header in oxboot.h internal.h; do
        "$PY" -m ziglang cc -target "$target" "${cflags[@]}" -Wno-unused-function -x c -c \
            "csrc/$header" \
            -o "$work/$target-$header.o"
    done
done

# ---- 2. the portable build's tests -------------------------------------------

echo "== tests against the package built with OXBOOT_PORTABLE=1" >&2
tree="$work/tree"
mkdir "$tree"
cp -a csrc oxboot tests contrib setup.py pyproject.toml README.md LICENSE "$tree/"
rm -f "$tree"/oxboot/_core*.so
(cd "$tree" && OXBOOT_PORTABLE=1 "$PY" setup.py -q build_ext --inplace >/dev/null 2>&1) || {
    echo "portable build failed" >&2
    (cd "$tree" && OXBOOT_PORTABLE=1 "$PY" setup.py build_ext --inplace)
    exit 1
}
export OXBOOT_PORTABLE=1 PYTHONPATH="$tree"

# A command that needs the network core: exit 1, one line, no traceback.
for cmd in "oxboot.cli.bootserver eth0 image.img any" "oxboot.cli.main netboot eth0" \
           "oxboot.cli.main bootserver eth0 image.img any" "oxboot.cli.main demo"; do
    status=0
    # shellcheck disable=SC2086 # the module and its arguments, split on purpose
    err=$(cd "$tree" && "$PY" -m $cmd 2>&1 >/dev/null) || status=$?
    if [ "$status" != 1 ] || [ "$(printf '%s\n' "$err" | wc -l)" != 1 ] ||
        [[ "$err" != "Error: "*"needs Linux"* ]]; then
        echo "python -m $cmd on the portable build: want exit 1 and one 'needs Linux'" \
             "line, got exit $status:" >&2
        printf '%s\n' "$err" >&2
        exit 1
    fi
done

# The vectors travel with the tree (tests/vectors), so the image-tool and
# vector tests always run against the portable build too.
tests=(tests/test_core.py tests/test_portable.py tests/test_codec.py tests/test_inflate.py
       tests/test_image_tools.py tests/test_vectors.py)
status=0
(cd "$tree" && "$PY" -m pytest -p no:cacheprovider -q "$@" "${tests[@]}") || status=$?
[ "$status" = 5 ] && { echo "no tests ran against the portable build" >&2; exit 1; }
exit "$status"
