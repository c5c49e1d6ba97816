"""lookimage and extract: read a boot image, check it, optionally write the
raw image out.

The data is read once. Reading or decoding (zlib or zstd, GIL released)
runs on the calling thread while SHA-256 (C core) and any output write run
on their own thread, so a compressed image verifies in about the time of the
slower of inflate and hash, not their sum. zlib pieces are inflated into a few reused
buffers (pipeline.BufferPool) that the hashing thread hands back; so are
uncompressed blocks, the kernel's copy overlapping the hash.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from oxboot._native import Sha256
from oxboot.format import (
    HEADER_SIZE,
    Codec,
    Header,
    ImageError,
    Warn,
    check_header,
    check_layout,
    header_warnings,
)
from oxboot.fsutil import AtomicFile, describe_os_error
from oxboot.pipeline import BufferPool, Inline, Worker, worker
from oxboot.progress import Progress

#: Small enough that a block is still in cache when it is hashed.
READ_BLOCK = 1 << 20
#: Uncompressed data is read in blocks of this size, RAW_BUFFERS of them in
#: flight between the reading and the hashing thread.
RAW_BLOCK = 4 << 20
RAW_BUFFERS = 3
#: Inflated pieces (4 MiB each for oxboot's images) in flight: inflated
#: ahead on every core, queued for the hash. 1 GiB set, lookimage: 4 buffers
#: 1.21-1.24 s, 6 1.16-1.22 s, 8 1.10-1.16 s (bench/notes.md).
INFLATE_BUFFERS = 8
#: The warnings for an image that is inspected or extracted: it is not
#: being netbooted, so the network-boot client's rules are not in question.
WARNINGS = Warn.FLAGS | Warn.ZSTD


@dataclass
class VerifyResult:
    """What :func:`verify_image` found."""

    path: Path
    header: Header
    checked: bool  # False with skip_checksum: only the header was read
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "header": self.header.as_dict(),
            "checksum_verified": self.checked,
            "seconds": round(self.seconds, 6),
            "warnings": self.warnings,
        }


def _open(path: str | os.PathLike[str]) -> BinaryIO:
    try:
        return open(path, "rb")  # closed by the caller
    except OSError as e:
        raise ImageError(describe_os_error(e, path)) from None


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse the header of the image at `path` (no data is read)."""
    with _open(path) as f:
        try:
            return Header.parse(f.read(HEADER_SIZE))
        except OSError as e:
            raise ImageError(describe_os_error(e, path)) from None


def verify_image(
    path: str | os.PathLike[str],
    *,
    skip_checksum: bool = False,
    output: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    header: Header | None = None,
    threads: int | None = None,
) -> VerifyResult:
    """Check the image at `path` the way the OS and the original lookimage
    do; with `output`, also write the raw image there (atomically, only if
    it verifies). Raises :class:`ImageError` naming the first failed rule.

    `threads` bounds the threads that read, inflate and hash (default:
    every core); with 1 they take turns on the calling thread.
    """
    started = time.monotonic()
    with _open(path) as f:
        try:
            if header is None:
                header = Header.parse(f.read(HEADER_SIZE))
            check_header(header)
            if not skip_checksum or output is not None:
                check_layout(header, os.fstat(f.fileno()).st_size)
                f.seek(HEADER_SIZE)
                _check_data(f, header, output, progress, threads)
        except OSError as e:
            raise ImageError(describe_os_error(e, path)) from None
    return VerifyResult(
        path=Path(path),
        header=header,
        checked=not skip_checksum or output is not None,
        seconds=time.monotonic() - started,
        warnings=header_warnings(header, WARNINGS),
    )


class Sink(Protocol):
    def write_all(self, data: bytes | bytearray | memoryview) -> None: ...


def _check_data(f: BinaryIO, header: Header, output: str | os.PathLike[str] | None,
                progress: bool | None, threads: int | None) -> None:
    out = AtomicFile(output) if output is not None else None
    try:
        copy_data(f, header, out, progress, threads)
        if out is not None:
            out.commit()
    finally:
        if out is not None:
            out.__exit__(None, None, None)


def copy_data(f: BinaryIO, header: Header, out: Sink | None,
              progress: bool | None = None, threads: int | None = None) -> None:
    """Read the data region once from `f` (positioned after the header),
    decode it, check its size and SHA-256 against `header`, and hand the raw
    image to `out` on the way. Raises ImageError naming the failed check."""
    hasher = Sha256()
    meter = Progress("verify", header.data_size, enabled=progress)
    try:
        if header.codec is Codec.NONE:
            produced = _stored(f, header.data_size, hasher, out, meter, threads)
        else:
            produced = _decoded(f, header, hasher, out, meter, threads)
    finally:
        meter.close()
    if produced != header.image_size:
        raise ImageError(
            f"data decodes to {produced} bytes, but header says there should be "
            f"{header.image_size}"
        )
    digest = hasher.digest()
    if digest != header.sha256:
        # The original's words.
        raise ImageError(
            f"image sum {digest.hex()} does not match sum from header {header.sha256.hex()}"
        )


def _consumer(hasher: Sha256, out: Sink | None,
              pool: BufferPool) -> Callable[[bytes | memoryview], None]:
    """The hashing thread's work on each block: hash, write, hand the
    buffer back to `pool`."""

    def consume(block: bytes | memoryview) -> None:
        try:
            hasher.update(block)
            if out is not None:
                out.write_all(block)
        finally:
            pool.give(block)

    return consume


def _stored(f: BinaryIO, size: int, hasher: Sha256, out: Sink | None,
            meter: Progress, threads: int | None) -> int:
    """Uncompressed data: read here into a few large buffers, hash (and
    write) on a worker thread, so the kernel's copy out of the page cache
    overlaps the hash (1 GiB: 0.63 s, against 0.72-0.78 s for reading and
    hashing in turn and 0.72 s for openssl dgst; bench/notes.md)."""
    left = size
    readinto = f.raw.readinto if hasattr(f, "raw") else f.readinto
    # While waiting for a buffer, make sure the hashing thread still lives.
    pool = BufferPool(RAW_BUFFERS, min(RAW_BLOCK, max(size, 1)), check=lambda: hashing.check())
    hashing: Worker[memoryview] | Inline[memoryview] = worker(
        _consumer(hasher, out, pool), threads, depth=RAW_BUFFERS, name="sha256")
    try:
        while left:
            buf = pool.take()
            n = readinto(memoryview(buf)[:min(left, pool.size)])
            if not n:
                pool.give(memoryview(buf))
                break
            hashing.put(memoryview(buf)[:n])
            left -= n
            meter.advance(n)
        hashing.join()
    except BaseException:
        hashing.abort()
        raise
    finally:
        pool.close()
    return size - left


def _decoded(f: BinaryIO, header: Header, hasher: Sha256, out: Sink | None,
             meter: Progress, threads: int | None) -> int:
    """Compressed data: inflate here (zlib pieces also ahead, on every core;
    the GIL released), hash and write on a worker thread, so they overlap."""
    # Imported here: checking a raw image needs none of the codecs, and
    # their imports (thread pools, zstd, zlib-ng) are a measurable share of
    # lookimage's time on small images.
    from oxboot import codec as codecs

    produced = 0
    pool = BufferPool(INFLATE_BUFFERS, size=codecs.PIECE_OUT, check=lambda: hashing.check())
    hashing: Worker[bytes | memoryview] | Inline[bytes | memoryview] = worker(
        _consumer(hasher, out, pool), threads, depth=INFLATE_BUFFERS, name="sha256")
    blocks = codecs.decode(header.codec, f, header.data_size, header.image_size,
                           on_read=meter.advance, step=READ_BLOCK, pool=pool, threads=threads)
    try:
        for block in blocks:
            produced += len(block)
            hashing.put(block)
        hashing.join()
    except BaseException:
        hashing.abort()
        raise
    finally:
        blocks.close()  # the pieces being inflated ahead are waited for
        pool.close()
    return produced


def extract_image(path: str | os.PathLike[str], output: str | os.PathLike[str],
                  progress: bool | None = None, threads: int | None = None) -> VerifyResult:
    """Write the raw image held by `path` to `output`, verified, atomically."""
    return verify_image(path, output=output, progress=progress, threads=threads)
