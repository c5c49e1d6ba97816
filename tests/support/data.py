"""Test data like a file system image's (zeros, text, noise), and a whole
image's worth of zlib stream made by the parallel encoder."""

from __future__ import annotations

import random

from oxboot.codec import BLOCK, DEFAULT_ZLIB_LEVEL, ParallelZlib

MIB = 1 << 20


def text(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(1, 9)))
             for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + rng.choice([b" ", b" ", b", ", b".\n"])
    return bytes(out[:n])


def rand(n: int, seed: int = 2) -> bytes:
    return random.Random(seed).randbytes(n)


def mixed(n: int, seed: int = 3) -> bytes:
    """Runs of zeros, text and noise, like a file system image."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        k = rng.randint(1, 64 * 1024)
        out += rng.choice([bytes(k), text(k, rng.randint(0, 99)), rng.randbytes(k)])
    return bytes(out[:n])


def encode(data: bytes, level: int = DEFAULT_ZLIB_LEVEL, threads: int = 1,
           feed: int = MIB, block: int = BLOCK) -> bytes:
    out: list[bytes] = []
    enc = ParallelZlib(out.append, level, threads, block=block)
    try:
        view = memoryview(data)
        for i in range(0, len(data), feed):
            enc.feed(view[i:i + feed])
        enc.finish()
    finally:
        enc.close()
    return b"".join(bytes(b) for b in out)

