"""zstd (an oxboot extension, never for netboot): one frame, multi-threaded
by libzstd; decoding checks first that the data is exactly one whole frame."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from oxboot.codec.stream import LimitedReader, Sink
from oxboot.format import ImageError
from oxboot.levels import DEFAULT_ZSTD_LEVEL, ZSTD_LEVELS, default_threads


class Zstd:
    """One zstd frame (oxboot extension), multi-threaded by libzstd."""

    def __init__(self, sink: Sink, level: int = DEFAULT_ZSTD_LEVEL,
                 threads: int | None = None, size: int | None = None) -> None:
        import zstandard

        if level not in ZSTD_LEVELS:
            raise ImageError(f"zstd level must be 1..19, not {level}")
        self._sink = sink
        threads = max(1, threads or default_threads())
        comp = zstandard.ZstdCompressor(
            level=level, threads=threads if threads > 1 else 0,
            write_content_size=size is not None, write_checksum=True,
        )
        self._obj = comp.compressobj(size=size if size is not None else -1)

    def feed(self, block: bytes | memoryview) -> None:
        out = self._obj.compress(block)
        if out:
            self._sink(out)

    def finish(self) -> None:
        self._sink(self._obj.flush())

    def close(self) -> None:
        pass


def unzstd(src: LimitedReader, image_size: int, step: int) -> Iterator[bytes]:
    import zstandard

    produced = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=False)
        while chunk := reader.read(step):
            produced += len(chunk)
            if produced > image_size:
                raise ImageError(f"compressed data holds more than the image size of {image_size}")
            yield chunk
    except zstandard.ZstdError as e:
        raise ImageError(f"corrupt zstd stream ({e})") from None


_ZSTD_MAGIC = 0xFD2FB528


def zstd_frame_size(f: BinaryIO, limit: int) -> int:
    """Length of the zstd frame starting at f's position, found by walking
    the block headers (RFC 8878, 3.1.1) without decompressing; reads a few
    bytes per 128 KiB block. Raises ImageError if it is not a complete frame
    within `limit` bytes."""
    import zstandard

    head = f.read(18)
    if len(head) < 6 or int.from_bytes(head[:4], "little") != _ZSTD_MAGIC:
        raise ImageError("data is not a zstd frame")
    try:
        pos = zstandard.frame_header_size(head)
    except zstandard.ZstdError as e:
        raise ImageError(f"corrupt zstd frame header ({e})") from None
    has_checksum = bool(head[4] & 0x04)
    base = f.tell() - len(head)
    while True:
        if pos + 3 > limit:
            raise ImageError("zstd frame ends early")
        f.seek(base + pos)
        raw = f.read(3)
        if len(raw) < 3:
            raise ImageError("zstd frame ends early")
        word = int.from_bytes(raw, "little")
        last, kind, size = word & 1, (word >> 1) & 3, word >> 3
        if kind == 3:
            raise ImageError("corrupt zstd frame (reserved block type)")
        pos += 3 + (1 if kind == 1 else size)
        if last:
            break
    pos += 4 if has_checksum else 0
    if pos > limit:
        raise ImageError("zstd frame ends early")
    return pos
