"""The typed Python API over the cffi C core (``oxboot._core``).

The rest of the package calls the C core only through typed wrappers: the
portable functions here (SHA-256, deflate pieces, Adler-32, frames in
memory, write-back), and one class per network mechanism beside its I/O:
:class:`oxboot.link.RawLink` (the raw socket, its rings and AF_XDP),
:class:`oxboot.serve.receiver.Receiver` (the server's receive loop and
policer) and :class:`oxboot.sled.rx.DataReceiver` (the sled's DATA path).
A test (tests/test_layout.py) keeps ``lib`` out of every other module.

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

__all__ = ["HAS_NET", "INFLATE_ERROR", "INFLATE_MAX_DICT", "Buffer", "InflateWork",
           "ReadOffsets", "Sha256", "adler32", "adler32_combine", "check_constants",
           "deflate_chunk", "fanout_index", "ffi", "find_sync", "lib", "pointer", "sha256",
           "writeback"]


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


def pointer(buf: Buffer) -> object:
    """A C pointer (``uint8_t *``) to the bytes of `buf`, for the network
    wrappers' calls; it keeps `buf` exported (an mmap cannot be closed)
    while it lives."""
    return ffi.from_buffer("uint8_t[]", buf, require_writable=False)


def writeback(fd: int, offset: int, length: int) -> None:
    """Start writing back ``length`` bytes of `fd` from `offset` (Linux:
    sync_file_range; a no-op elsewhere), so that a final fsync finds little
    left to do. Advisory: errors are ignored."""
    lib.ox_writeback(fd, offset, length)


def fanout_index(mac: bytes, members: int) -> int:
    """The member of a fanout group (or worker) that `mac`'s frames go to."""
    return int(lib.ox_fanout_index(mac, members))


class ReadOffsets:
    """The due offsets of READ frames, reduced in C (``ox_read_offsets``,
    the rule of :func:`oxboot.protocol.due_offsets`); one output buffer,
    reused: not for several threads at once."""

    def __init__(self) -> None:
        self._out = ffi.new(f"uint64_t[{lib.OX_SLOTS + 1}]")

    def __call__(self, frame: bytes) -> list[int] | None:
        """The offsets `frame` asks for, or None if it is not a well-formed READ."""
        n = lib.ox_read_offsets(frame, len(frame), self._out)
        return None if n < 0 else ffi.unpack(self._out, n)


# ---- deflate and inflate (csrc/deflate.c, libdeflate) -------------------------

#: History a piece may be given as its dictionary: deflate's 32 KiB window.
INFLATE_MAX_DICT: int = lib.OX_INFLATE_MAX_DICT
#: What :meth:`InflateWork.inflate_piece` returns for data it cannot inflate.
INFLATE_ERROR: int = lib.OX_INFLATE_ERROR

_ALLOC = ffi.new_allocator(should_clear_after_alloc=False)


def deflate_chunk(level: int, chunk: Buffer) -> bytes:
    """Raw deflate of `chunk` at libdeflate `level`, not final, ending
    byte-aligned like a zlib sync flush (... 00 00 ff ff)."""
    view = memoryview(chunk)
    cap = lib.ox_deflate_bound(view.nbytes)
    out = _ALLOC("uint8_t[]", cap)
    n = lib.ox_deflate_chunk(level, _ptr(view), view.nbytes, out, cap)
    if n < 0:  # cannot be for room: out of memory, or libdeflate misbehaved
        raise RuntimeError(f"libdeflate could not compress a {view.nbytes}-byte chunk")
    return ffi.buffer(out, n)[:]


def adler32(data: Buffer, value: int = 1) -> int:
    """Adler-32 of `data` continuing from `value` (libdeflate's, vectorised)."""
    view = memoryview(data)
    if not view.nbytes:
        return value
    return int(lib.ox_adler32(value, _ptr(view), view.nbytes))


def adler32_combine(first: int, second: int, second_len: int) -> int:
    """The Adler-32 of two buffers from each one's and the second's length."""
    return int(lib.ox_adler32_combine(first, second, second_len))


def find_sync(buf: Buffer, start: int) -> int:
    """Offset of the first sync-flush marker (00 00 ff ff) in `buf` at or
    after `start`, or -1."""
    view = memoryview(buf)
    return int(lib.ox_find_sync(_ptr(view), view.nbytes, start))


class InflateWork:
    """One thread's work area for inflating whole pieces of a deflate
    stream of at most `max_input` bytes (``ox_inflate_piece``)."""

    def __init__(self, max_input: int) -> None:
        self._work = ffi.new("uint8_t[]", lib.ox_inflate_work_size(INFLATE_MAX_DICT, max_input))
        self._used = ffi.new("size_t *")

    def inflate_piece(self, zdict: bytes, data: bytes, final: bool,
                      out: Buffer) -> tuple[int, int]:
        """Inflate `data` (after `zdict`, its history) into `out`: (output
        length or INFLATE_ERROR and the like, input bytes used)."""
        view = memoryview(out)
        n = lib.ox_inflate_piece(zdict, len(zdict), data, len(data), final, self._work,
                                 len(self._work), _ptr(view), view.nbytes, self._used)
        return int(n), int(self._used[0])
