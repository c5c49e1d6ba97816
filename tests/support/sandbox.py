"""What a systemd unit's sandbox does to a process, for machines where the
tests cannot ask systemd itself (no systemd as PID 1, as in a container):

    python3 sandbox.py --families AF_PACKET,AF_UNIX --memlock BYTES -- ARGV...

sets no_new_privs (NoNewPrivileges=yes), the locked-memory limit
(LimitMEMLOCK=), and a seccomp filter under which socket() and
socketpair() of any other address family fail with EAFNOSUPPORT, as
RestrictAddressFamilies= makes them; then execs ARGV (typically setpriv,
which drops to the unit's user and capabilities). Standard library only:
the filter is a classic BPF program loaded with prctl by ctypes.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import platform
import resource
import socket
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16

#: (AUDIT_ARCH_*, __NR_socket, __NR_socketpair) of the machines the tests run on.
ARCHES = {"x86_64": (0xC000003E, 41, 53), "aarch64": (0xC00000B7, 198, 199)}
#: Families by the names systemd's units use (the socket module lacks AF_XDP).
FAMILIES = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET,
            "AF_INET6": socket.AF_INET6, "AF_PACKET": 17, "AF_NETLINK": 16, "AF_XDP": 44}


def supported() -> str | None:
    """Why this machine cannot run the sandbox, or None."""
    if platform.machine() not in ARCHES:
        return f"no seccomp filter for {platform.machine()} here"
    return None


def _filter(families: list[int]) -> bytes:
    arch, nr_socket, nr_socketpair = ARCHES[platform.machine()]
    prog: list[tuple[int, int, int, int]] = []

    def ins(code: int, k: int, jt: int = 0, jf: int = 0) -> None:
        prog.append((code, jt, jf, k))

    n = len(families)
    ins(BPF_LD_W_ABS, OFF_ARCH)
    ins(BPF_JEQ_K, arch, 1, 0)
    ins(BPF_RET_K, SECCOMP_RET_ALLOW)  # another ABI (x32): not ours to judge
    ins(BPF_LD_W_ABS, OFF_NR)
    ins(BPF_JEQ_K, nr_socket, 1, 0)
    ins(BPF_JEQ_K, nr_socketpair, 0, n + 2)  # neither: jump to allow
    ins(BPF_LD_W_ABS, OFF_ARG0)  # the family (low word, little-endian)
    for i, family in enumerate(families):
        ins(BPF_JEQ_K, family, n - i, 0)  # to allow
    ins(BPF_RET_K, SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT)
    ins(BPF_RET_K, SECCOMP_RET_ALLOW)
    return b"".join(struct.pack("HBBI", *i) for i in prog)


def restrict_families(families: list[int]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    code = _filter(families)
    buf = ctypes.create_string_buffer(code)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--families", required=True, help="comma-separated, e.g. AF_PACKET,AF_UNIX")
    p.add_argument("--memlock", type=int, help="RLIMIT_MEMLOCK in bytes (soft and hard)")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    args = p.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if why := supported():
        sys.exit(why)
    if args.memlock is not None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (args.memlock, args.memlock))
    restrict_families([FAMILIES[f] for f in args.families.split(",") if f])
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
