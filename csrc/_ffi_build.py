"""cffi build script for the oxboot C core (API mode, compiled at install).

The cdef is ``oxboot.h`` itself (:func:`cdef_from_header`); ``oxboot._core``
is the compiled module and ``oxboot._native`` the typed layer above it. The portable part (the
image tools' core) is built everywhere, the network core only on Linux;
``lib.OX_HAS_NET`` says which build this is.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

# Relative to the project root, where setuptools runs this (as the sources).
HEADER = Path("csrc/oxboot.h")


def cdef_from_header(text: str, net: bool) -> str:
    """The cdef is oxboot.h itself, so that every declaration and constant
    is written once: without its comments and preprocessor lines, each
    ``#define NAME value`` as ``#define NAME ...`` (API mode: the compiler
    takes the header's value), and the declarations of the sections marked
    "; Linux" only for the network core."""
    lines = ["#define OX_HAS_NET ..."]
    for section in re.split(r"(?m)^(?=/\* ---- )", text):
        # The constants of every section (the header defines them on every
        # system), the declarations only where their code is built.
        declare = net or "; Linux" not in section.split("\n", 1)[0]
        for line in re.sub(r"/\*.*?\*/", "", section, flags=re.S).splitlines():
            if m := re.match(r"#define (OX_\w+)\s+\S", line):
                lines.append(f"#define {m.group(1)} ...")
            elif declare and not line.startswith("#"):
                lines.append(line)
    return "\n".join(lines)


PORTABLE_SOURCES = ["sha256", "sys", "frame", "mactable", "deflate"]

# The network core: raw sockets (AF_PACKET, AF_XDP), packet rings, socket
# filters and the server's and the sled's receive loops. Linux only.
NET_SOURCES = ["tx_sendmmsg", "rx_sled", "police", "sockfilter", "serve", "txring", "rxring",
               "xsk"]

# OXBOOT_SANITIZE=1 builds the core with AddressSanitizer and UBSan, for CI.
_sanitize = os.environ.get("OXBOOT_SANITIZE") == "1"
_cflags = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
_lflags: list[str] = []
if _sanitize:
    _cflags += ["-O1", "-g", "-fno-omit-frame-pointer",
                "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    _lflags += ["-fsanitize=address,undefined"]

# The network core is built on Linux unless OXBOOT_PORTABLE=1 asks for the
# portable build there too (to test it: scripts/portable-check.sh).
_net = sys.platform.startswith("linux") and os.environ.get("OXBOOT_PORTABLE") != "1"

ffibuilder = FFI()
ffibuilder.cdef(cdef_from_header(HEADER.read_text(), _net))
ffibuilder.set_source(
    "oxboot._core",
    f'#include "oxboot.h"\n#define OX_HAS_NET {int(_net)}\n',
    # Paths are relative to the project root, where setuptools runs this.
    sources=[f"csrc/{name}.c" for name in PORTABLE_SOURCES + (NET_SOURCES if _net else [])],
    include_dirs=["csrc"],
    libraries=["crypto", "deflate", "z"],
    extra_compile_args=_cflags,
    extra_link_args=_lflags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
