#!/usr/bin/env bash
# Install what oxboot, its tests and its demo need on a fresh Debian/Ubuntu
# machine (run as root): system packages, then the package itself (editable,
# which compiles the C core in place) with its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

# iproute2: netns/veth; nftables: loss injection; netsniff-ng: trafgen (the
# benchmark baseline); e2fsprogs: mke2fs -d for filesystem images; libssl-dev
# and zlib1g-dev: headers for the C core; gcc: to compile it; util-linux: setpriv.
# groff-base (groff's man macros, without X11) and man-db: the manual pages'
# rendering test. tshark (with dumpcap): the Wireshark dissector's test
# (contrib/wireshark/oxboot.lua) captures a boot and decodes it. tmux: the
# live status table's test in a real terminal. librust-flate2-dev and
# librust-sha2-dev: the crates (the golden vectors' versions) the benchmarks
# rebuild the original tools with (bench/originals.py), with Debian's cargo
# where no Rust toolchain is installed.
PKGS=(gcc libssl-dev zlib1g-dev libdeflate-dev iproute2 nftables netsniff-ng e2fsprogs util-linux openssl
      groff-base man-db tshark tmux librust-flate2-dev librust-sha2-dev)
if ! command -v cargo >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    PKGS+=(cargo)
fi
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing system packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # wireshark-common asks whether non-root users may capture: answer it
    # beforehand (no), so the install never stops at a question.
    echo "wireshark-common wireshark-common/install-setuid boolean false" |
        debconf-set-selections
    apt-get update -q >/dev/null
    apt-get install -y -q "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    "setuptools>=65" "cffi>=1.16" wheel
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    --no-build-isolation -e ".[test]"
# An editable install writes no bytecode, and where PYTHONDONTWRITEBYTECODE
# is set no run does either: compiled once here, as a wheel's install does,
# so that every command does not compile its modules again (~10 ms).
"$PY" -m compileall -q oxboot
