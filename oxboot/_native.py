"""Typed Python API over the cffi C core (``oxboot._core``).

cffi releases the GIL around every C call, so the functions here run in
parallel with other Python threads (compressors, readers, writers).
"""

from __future__ import annotations

import mmap
from typing import TypeAlias

from oxboot._core import ffi, lib  # type: ignore[import-not-found]

Buffer: TypeAlias = bytes | bytearray | memoryview | mmap.mmap

#: Whether the network core (raw sockets, rings, the server's and the sled's
#: receive loops) is compiled in: on Linux only, and not in a build made
#: with OXBOOT_PORTABLE=1. Without it ``lib`` has the image tools' functions
#: (SHA-256, deflate, frames in memory) and none of the socket ones.
HAS_NET: bool = bool(lib.OX_HAS_NET)

__all__ = ["HAS_NET", "Buffer", "Sha256", "check_constants", "sha256", "ffi", "lib"]


def check_constants(values: dict[str, int]) -> None:
    """Raise if any of `values` (``NAME: value``) differs from the C core's
    ``OX_NAME``: a constant kept on both sides of the boundary."""
    wrong = [f"{name} = {value:#x} here, {getattr(lib, 'OX_' + name):#x} in C"
             for name, value in values.items() if getattr(lib, "OX_" + name) != value]
    if wrong:
        raise ImportError("oxboot's C core disagrees with its Python: " + "; ".join(wrong))


def _ptr(buf: Buffer) -> object:
    return ffi.from_buffer("uint8_t[]", buf)


class Sha256:
    """Streaming SHA-256 through OpenSSL (hardware SHA where the CPU has it)."""

    __slots__ = ("_ctx",)

    def __init__(self, data: Buffer | None = None) -> None:
        ctx = lib.ox_sha256_new()
        if ctx == ffi.NULL:
            raise MemoryError("cannot create a SHA-256 context")
        self._ctx = ffi.gc(ctx, lib.ox_sha256_free)
        if data is not None:
            self.update(data)

    def update(self, data: Buffer) -> None:
        view = memoryview(data)
        if view.nbytes and lib.ox_sha256_update(self._ctx, _ptr(view), view.nbytes) != 0:
            raise RuntimeError("SHA-256 update failed")

    def digest(self) -> bytes:
        out = ffi.new("uint8_t[32]")
        if lib.ox_sha256_final(self._ctx, out) != 0:
            raise RuntimeError("SHA-256 final failed")
        return bytes(ffi.buffer(out))

    def hexdigest(self) -> str:
        return self.digest().hex()


def sha256(data: Buffer) -> bytes:
    """One-shot SHA-256 of a buffer (bytes, bytearray, mmap, memoryview)."""
    view = memoryview(data)
    out = ffi.new("uint8_t[32]")
    src = _ptr(view) if view.nbytes else ffi.NULL
    if lib.ox_sha256(src, view.nbytes, out) != 0:
        raise RuntimeError("SHA-256 failed")
    return bytes(ffi.buffer(out))
