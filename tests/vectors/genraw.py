#!/usr/bin/env python3
"""Rebuild the golden vectors' files that are not stored in the repository.

The raw inputs of the vectors are pseudo-random but deterministic: each is
a function of a seed and a size (both recorded in ``manifest.json``), so
inputs above 2 MiB are not kept, and neither are uncompressed images made
from them (only their 4096-byte header is, as ``<id>.hdr``). This module
recomputes them and checks every result against the SHA-256 the manifest
recorded, so a wrong rebuild can never pass for a golden file.

The algorithm (described in README.md beside this file) draws 64-bit
words from SplitMix64. SplitMix64's k-th output (k = 1, 2, ...) depends
only on ``seed + k * GAMMA``, so it is written here as a counter fed to a
mixing function rather than as a stateful generator.

    python3 genraw.py --seed SEED --size BYTES -o FILE   one input
    python3 genraw.py [--into DIR]                        all missing files

The second form writes into DIR (default: this folder) the inputs the
manifest marks as not stored and the full images of the header-only ones.
The test suite imports :func:`generate` and :func:`rebuild` instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's increment (the golden ratio)
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB

#: Segment kinds and the largest length each may draw (in bytes).
_RANDOM, _ZEROS, _TEXT, _LETTERS = range(4)
_MAX_LEN = {_RANDOM: 65536, _ZEROS: 131072, _TEXT: 32768, _LETTERS: 16384}
_TEXT_BYTES = b"The quick brown fox jumps over the lazy dog. 0123456789\n"
_LETTER_SET = b"ACGTacgt"


class VectorError(Exception):
    """A rebuilt file does not hash to what the manifest recorded."""


class _Words:
    """SplitMix64 as a counter: word k is mix(seed + k * GAMMA)."""

    def __init__(self, seed: int) -> None:
        self._base = seed & _MASK
        self._k = 0

    @staticmethod
    def _mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * _MUL1) & _MASK
        z = ((z ^ (z >> 27)) * _MUL2) & _MASK
        return z ^ (z >> 31)

    def one(self) -> int:
        self._k += 1
        return self._mix((self._base + self._k * _GAMMA) & _MASK)

    def many(self, count: int) -> list[int]:
        first = self._k + 1
        self._k += count
        base, mix = self._base, self._mix
        return [mix((base + k * _GAMMA) & _MASK) for k in range(first, first + count)]


def _repeat(unit: bytes, length: int) -> bytes:
    return (unit * (length // len(unit) + 1))[:length]


def generate(seed: int, size: int) -> bytes:
    """The raw input for ``seed`` and ``size``: segments of four kinds, the
    last one cut so that exactly ``size`` bytes come out."""
    words = _Words(seed)
    parts: list[bytes] = []
    have = 0
    while have < size:
        kind = words.one() % 4
        length = words.one() % _MAX_LEN[kind] + 1
        if kind == _RANDOM:
            count = -(-length // 8)
            part = struct.pack(f"<{count}Q", *words.many(count))[:length]
        elif kind == _ZEROS:
            part = bytes(length)
        elif kind == _TEXT:
            part = _repeat(_TEXT_BYTES, length)
        else:
            # Bit i..i+2 of one word picks letter i of a 64-byte pattern.
            bits = words.one()
            pattern = bytes(_LETTER_SET[(bits >> i) & 7] for i in range(64))
            part = _repeat(pattern, length)
        parts.append(part)
        have += length
    return b"".join(parts)[:size]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    """Atomically: a reader never sees half a golden file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 is for secrets
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_manifest(folder: Path = HERE) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def rebuild(into: Path, source: Path = HERE) -> list[str]:
    """Write into ``into`` every file the vectors in ``source`` leave out:
    the inputs not stored, and each header-only image as its ``.hdr`` plus
    its input. Every file is checked against its recorded SHA-256 before it
    is written; a mismatch raises :class:`VectorError`. Returns the names."""
    manifest = load_manifest(source)
    made: list[str] = []
    inputs: dict[str, bytes] = {}
    for item in manifest["inputs"]:
        if item["stored"]:
            continue
        data = generate(item["seed"], item["size"])
        if _sha256(data) != item["sha256"]:
            raise VectorError(f"{item['file']}: generated data does not match its SHA-256")
        inputs[item["file"]] = data
        _write(into / item["file"], data)
        made.append(item["file"])
    for image in manifest["images"]:
        if image["stored"] != "header":
            continue
        raw = inputs.get(image["input"])
        if raw is None:
            raw = (source / image["input"]).read_bytes()
        full = (source / image["stored_file"]).read_bytes() + raw
        if _sha256(full) != image["output_sha256"]:
            raise VectorError(f"{image['output_file']}: rebuilt image does not match its SHA-256")
        _write(into / image["output_file"], full)
        made.append(image["output_file"])
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int)
    ap.add_argument("--size", type=int)
    ap.add_argument("-o", "--output", type=Path)
    ap.add_argument("--into", type=Path, default=HERE)
    args = ap.parse_args(argv)
    if args.seed is not None or args.size is not None or args.output is not None:
        if args.seed is None or args.size is None or args.output is None:
            ap.error("--seed, --size and -o go together")
        if args.seed < 0 or args.size < 0:
            ap.error("--seed and --size must be >= 0")
        try:
            _write(args.output, generate(args.seed, args.size))
        except OSError as e:
            print(f"Error: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        for name in rebuild(args.into):
            print(f"wrote {args.into / name}")
    except (VectorError, OSError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
