"""mkimage: raw image in, boot image (header + data) out.

Reading, hashing (C core), compressing (every core) and writing overlap on
separate threads. The output is written to a temporary file beside the
destination and renamed into place only when complete.
"""

from __future__ import annotations

import os
import queue
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from oxboot import codec as codecs
from oxboot._native import Sha256
from oxboot.format import (
    DEFAULT_DATASET,
    DEFAULT_TARGET_SIZE,
    HEADER_SIZE,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    Codec,
    Flags,
    Header,
    ImageError,
    Warn,
    _encode_name,
    header_warnings,
    netboot_padding,
)
from oxboot.fsutil import AtomicFile, describe_os_error
from oxboot.pipeline import Inline, Worker, worker
from oxboot.progress import Progress

#: Read size: large enough for few syscalls, small enough to stay in cache.
READ_BLOCK = 1 << 20
POOL = 16

_FLAGS = {Codec.NONE: 0, Codec.ZLIB: int(Flags.COMPRESSED), Codec.ZSTD: int(Flags.ZSTD)}


@dataclass
class BuildResult:
    """What :func:`build_image` wrote."""

    header: Header
    output: Path
    csum_output: Path | None
    codec: Codec  # what was stored (NONE when compression did not pay)
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "output": str(self.output),
            "csum_output": str(self.csum_output) if self.csum_output else None,
            "stored_codec": str(self.codec),
            "seconds": round(self.seconds, 6),
            "warnings": self.warnings,
            "header": self.header.as_dict(),
        }


def _open_source(source: str | os.PathLike[str] | BinaryIO) -> tuple[BinaryIO, int | None, bool]:
    """(file, size if known in advance, whether we own the file)."""
    if isinstance(source, str | os.PathLike):
        if os.fspath(source) == "-":
            return sys.stdin.buffer, None, False
        try:
            f = open(source, "rb", buffering=0)  # closed by the caller
            st = os.fstat(f.fileno())
        except OSError as e:
            raise ImageError(f"cannot read {describe_os_error(e, source)}") from None
        if stat.S_ISDIR(st.st_mode):
            f.close()
            raise ImageError(f"cannot read {os.fspath(source)}: it is a directory")
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
        return f, size, True
    return source, None, False


def _check_size(size: int, target_size: int) -> None:
    if size > MAX_IMAGE_SIZE:
        raise ImageError(f"image size of {size} bytes is over the OS limit of 4 GiB")
    if size > target_size:
        # The original's words, so that log scrapers keep matching.
        raise ImageError(
            f"target size of {target_size} bytes is less than image size of {size}"
        )


def build_image(
    source: str | os.PathLike[str] | BinaryIO,
    output: str | os.PathLike[str],
    *,
    csum_output: str | os.PathLike[str] | None = None,
    target_size: int = DEFAULT_TARGET_SIZE,
    image_name: str = "",
    dataset: str = DEFAULT_DATASET,
    codec: Codec = Codec.NONE,
    level: int | None = None,
    threads: int | None = None,
    pad_netboot: bool = False,
    progress: bool | None = None,
) -> BuildResult:
    """Build a boot image from a raw image (a path, ``"-"`` for stdin, or a
    binary file object).

    The result is byte-identical to the original mkimage for an
    uncompressed image; compressed images carry one zlib stream (or, for
    ``Codec.ZSTD``, one zstd frame). Raises :class:`ImageError` with a
    one-line message on any problem, leaving no partial output behind.

    `threads` bounds the compressing threads (default: every core); with 1,
    reading, hashing, compressing and writing also take turns on one thread.
    """
    started = time.monotonic()
    try:
        codec = Codec(codec)
    except ValueError:
        raise ImageError(f"unknown codec {codec!r}") from None
    _encode_name("image name", image_name)
    _encode_name("dataset name", dataset)
    if not 0 < target_size < 1 << 64:
        raise ImageError(f"target size {target_size} is out of range")
    src, known_size, owned = _open_source(source)
    warnings: list[str] = []
    try:
        if known_size is not None:
            padded = known_size + (netboot_padding(known_size) if pad_netboot else 0)
            _check_size(padded, target_size)
            if padded < MIN_IMAGE_SIZE:
                raise ImageError(
                    f"image size of {padded} bytes is under the OS minimum of {MIN_IMAGE_SIZE}"
                )
        with AtomicFile(output) as out:
            csum = AtomicFile(csum_output) if csum_output is not None else None
            try:
                header, stored = _write_image(
                    src, known_size, out, target_size=target_size, codec=codec, level=level,
                    threads=threads, pad_netboot=pad_netboot, progress=progress,
                    image_name=image_name, dataset=dataset, warnings=warnings,
                )
                if csum is not None:
                    # The checksum file first: if it cannot be put in place,
                    # the old image is still there too.
                    csum.write_all(header.sha256)
                    csum.commit()
                out.commit()
            finally:
                if csum is not None:
                    csum.__exit__(None, None, None)
    finally:
        if owned:
            src.close()
    return BuildResult(
        header=header,
        output=Path(output),
        csum_output=Path(csum_output) if csum_output is not None else None,
        codec=stored,
        seconds=time.monotonic() - started,
        warnings=warnings,
    )


def _write_image(
    src: BinaryIO, known_size: int | None, out: AtomicFile, *, target_size: int,
    codec: Codec, level: int | None, threads: int | None, pad_netboot: bool,
    progress: bool | None, image_name: str, dataset: str, warnings: list[str],
) -> tuple[Header, Codec]:
    limit = min(target_size, MAX_IMAGE_SIZE)
    written = 0
    # Blocks are read into a small pool of buffers and hashed right away,
    # while they are still in the CPU cache; the writer thread hands stored
    # blocks back to the pool once they are written.
    pool: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    for _ in range(POOL):
        pool.put(bytearray(READ_BLOCK))
    store = codec is Codec.NONE

    def write(data: bytes | memoryview) -> None:
        nonlocal written
        out.write_all(data, HEADER_SIZE + written)
        written += len(data)
        if store and isinstance(data, memoryview):
            pool.put(data.obj)  # type: ignore[arg-type]

    hasher = Sha256()
    # With one thread allowed, blocks are written in turn on this thread.
    write_worker: Worker[bytes | memoryview] | Inline[bytes | memoryview] = worker(
        write, threads, depth=POOL, name="writer")
    encoder = codecs.make_encoder(codec, write_worker.put, level=level, threads=threads,
                                  size=None)

    def hash_block(item: tuple[bytearray, int]) -> None:
        buf, n = item
        hasher.update(memoryview(buf)[:n])
        pool.put(buf)

    # Compressing, SHA-256 (one core's 1.9 GB/s, sequential by nature) is the
    # longest task of this thread: it gets a thread of its own, which hands
    # each block back once hashed (the encoders copy what they keep). Stored,
    # the block goes on to the writer, which hands it back: hashed here.
    hash_worker: Worker[tuple[bytearray, int]] | Inline[tuple[bytearray, int]] | None = (
        None if store else worker(hash_block, threads, depth=POOL, name="sha256"))
    workers = [w for w in (write_worker, hash_worker) if w is not None]
    meter = Progress("mkimage", known_size, enabled=progress)
    raw = 0
    readinto = src.readinto  # type: ignore[attr-defined]
    try:
        while True:
            buf = _take(pool, workers)
            try:
                n = readinto(buf)
            except OSError as e:
                raise ImageError(f"cannot read input: {e.strerror}") from None
            if not n:
                break
            raw += n
            if raw > limit:
                _check_size(raw, target_size)
            block = memoryview(buf)[:n]
            encoder.feed(block)
            if hash_worker is None:
                hasher.update(block)  # before this thread reads into `buf` again
            else:
                hash_worker.put((buf, n))
            meter.advance(n)
        if hash_worker is not None:
            hash_worker.join()
        if known_size is not None and raw != known_size:
            raise ImageError(
                f"input changed size while being read ({known_size} bytes, then {raw})"
            )
        pad = netboot_padding(raw) if pad_netboot else 0
        if pad:
            zeros = bytes(pad)
            hasher.update(zeros)
            encoder.feed(zeros)
        encoder.finish()
        write_worker.join()
    except BaseException:
        encoder.close()
        for w in workers:
            w.abort()
        raise
    finally:
        meter.close()
    encoder.close()

    image_size = raw + pad
    _check_size(image_size, target_size)
    if image_size < MIN_IMAGE_SIZE:
        raise ImageError(
            f"image size of {image_size} bytes is under the OS minimum of {MIN_IMAGE_SIZE}"
        )
    stored = codec
    if codec is not Codec.NONE and written >= image_size:
        # Compression did not pay: the original would write an image its own
        # lookimage rejects (image size < data size). Store the raw bytes,
        # recovered from what was just written.
        warnings.append("data does not compress; stored uncompressed")
        written = _restore_raw(out, codec, written, image_size)
        stored = Codec.NONE
    header = Header(
        image_size=image_size, sha256=hasher.digest(), target_size=target_size,
        data_size=written, flags=_FLAGS[stored], dataset=dataset, image_name=image_name,
    )
    # Not the 1 MiB minimum of a netboot: small images are fine on disk.
    warnings += header_warnings(header, Warn.NETBOOT | Warn.ZSTD)
    out.write_all(header.pack(), 0)
    return header, stored


def _take(pool: queue.SimpleQueue[bytearray],
          workers: list[Worker[Any] | Inline[Any]]) -> bytearray:
    """A free buffer; if a worker has failed (and so will hand back none),
    its error instead."""
    while True:
        try:
            return pool.get(timeout=0.05)
        except queue.Empty:
            for w in workers:
                w.check()


def _restore_raw(out: AtomicFile, codec: Codec, data_size: int, image_size: int) -> int:
    with open(out.tmp, "rb") as f:
        f.seek(HEADER_SIZE)
        raw = b"".join(codecs.decode(codec, f, data_size, image_size))  # < compressed size
    os.ftruncate(out.fd, HEADER_SIZE)
    out.write_all(raw, HEADER_SIZE)
    return len(raw)
