"""Exact-size C buffers for the tests of the C core: `size` bytes from libc's
malloc (ASan's, in the sanitizer run), so that a stray byte read or written
past either end hits a redzone instead of Python's slack."""

from __future__ import annotations

import cffi

from oxboot._native import ffi

_libc_ffi = cffi.FFI()
_libc_ffi.cdef("void *malloc(size_t); void free(void *);")
_libc = _libc_ffi.dlopen(None)  # with ASan preloaded, this is ASan's malloc


class CBuf:
    """`size` bytes from libc malloc, as a ``uint8_t *`` of the core's ffi."""

    def __init__(self, size: int, fill: bytes | int = 0) -> None:
        self.size = size
        self._raw = _libc.malloc(max(size, 1))
        assert self._raw != _libc_ffi.NULL
        self.ptr = ffi.cast("uint8_t *", int(_libc_ffi.cast("uintptr_t", self._raw)))
        if isinstance(fill, int):
            self.buf[:] = bytes([fill]) * size
        else:
            assert len(fill) == size
            self.buf[:] = fill

    @property
    def buf(self):  # a cffi buffer
        return ffi.buffer(self.ptr, self.size)

    def bytes(self) -> bytes:
        return self.buf[:]

    def free(self) -> None:
        if self._raw is not None:
            _libc.free(self._raw)
            self._raw = None

    def __enter__(self) -> CBuf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()
