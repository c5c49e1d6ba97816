"""Thousands of generated corruptions of small images (every codec): bit
flips and overwrites in the header and the data, cuts, extensions, lying
sizes (up to 2^64 - 1), flags and versions, data spliced from another
image. verify_image and extract_image, in-process, may only raise the
project's ImageError, never hang (a watchdog per case) and, when they
accept an image, must have checked it; a sample goes through the command
line tools too (one Error line, never a traceback, never a hang)."""

from __future__ import annotations

import faulthandler
import hashlib
import random
import resource
import signal
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.cli import SANITIZED, Run, command, one_line_error

from oxboot import build_image, extract_image, verify_image
from oxboot.format import HEADER_SIZE, Codec, Header, ImageError

SEED = 20240611
CASES = 3000
CLI_CASES = 50
#: Each case takes about a millisecond; more than this is a hang.
CASE_SECONDS = 20.0 if SANITIZED else 5.0

# Header fields (version 2, little-endian): where they are, how wide.
FIELDS = {"version": (4, 4), "flags": (8, 8), "data_size": (16, 8), "image_size": (24, 8),
          "target_size": (32, 8)}
SIZES = [0, 1, 4095, 4096, 4097, 1 << 20, (1 << 32) - 1, 1 << 32, 4 << 30, (4 << 30) + 1,
         1 << 62, 1 << 63, (1 << 64) - 2, (1 << 64) - 1]
FLAGS = [0, 1, 2, 3, 4, 0x80, 1 << 31, (1 << 32) - 1, 1 << 63, (1 << 64) - 1]
VERSIONS = [0, 1, 2, 3, 0x100, (1 << 32) - 1]


def mixed(rng: random.Random, size: int) -> bytes:
    """Image-like data: random runs, zero runs and text."""
    out = bytearray()
    while len(out) < size:
        kind = rng.randrange(3)
        n = rng.randrange(1, 4096)
        out += rng.randbytes(n) if kind == 0 else bytes(n) if kind == 1 else \
            (b"oxide ramdisk %d\n" % rng.randrange(1 << 30)) * (n // 24 + 1)
    return bytes(out[:size])


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Small valid images: each codec, two sizes, an original-style zlib
    stream (one stream, no flush points) and a version 1 header."""
    d = tmp_path_factory.mktemp("bases")
    rng = random.Random(SEED)
    out = {}
    for size in (4096 + 904, 48 * 1024 + 13):
        raw = mixed(rng, size)
        (d / "in.raw").write_bytes(raw)
        for codec in Codec:
            img = d / f"{codec.value}-{size}.img"
            build_image(d / "in.raw", img, codec=codec, image_name=f"base-{size}")
            out[img.stem] = img.read_bytes()
            assert Header.parse(out[img.stem]).codec is codec  # it did compress
        data = zlib.compress(raw, 9)
        h = Header(image_size=len(raw), data_size=len(data), flags=1,
                   sha256=hashlib.sha256(raw).digest())
        out[f"zlib-one-stream-{size}"] = h.pack() + data
        h = Header(version=1, image_size=len(raw), sha256=hashlib.sha256(raw).digest())
        out[f"v1-{size}"] = h.pack() + raw
    return out


def _set(buf: bytearray, name: str, value: int) -> None:
    off, width = FIELDS[name]
    buf[off:off + width] = value.to_bytes(8, "little")[:width]


def _flip(rng: random.Random, buf: bytearray, lo: int, hi: int, bits: int) -> list[int]:
    where = []
    for _ in range(bits):
        pos = rng.randrange(lo, hi)
        buf[pos] ^= 1 << rng.randrange(8)
        where.append(pos)
    return where


def corrupt(rng: random.Random, bases: dict[str, bytes]) -> tuple[str, bytes]:
    """One corruption of one base image: (what was done, the bytes)."""
    name = rng.choice(sorted(bases))
    buf = bytearray(bases[name])
    end = len(buf)
    steps = []
    for _ in range(1 if rng.random() < 0.8 else 2):
        kind = rng.choice(["header-flip", "field-flip", "data-flip", "data-overwrite", "cut",
                           "extend", "size", "flags", "version", "splice"])
        if kind == "header-flip":
            steps.append(f"{kind} {_flip(rng, buf, 0, HEADER_SIZE, rng.randint(1, 3))}")
        elif kind == "field-flip":  # magic .. end of the image name
            steps.append(f"{kind} {_flip(rng, buf, 0, 328, rng.randint(1, 3))}")
        elif kind == "data-flip" and len(buf) > HEADER_SIZE:
            steps.append(f"{kind} {_flip(rng, buf, HEADER_SIZE, len(buf), rng.randint(1, 4))}")
        elif kind == "data-overwrite" and len(buf) > HEADER_SIZE:
            pos = rng.randrange(HEADER_SIZE, len(buf))
            n = rng.randint(1, 64)
            fill = rng.choice([b"\0" * n, b"\xff" * n, rng.randbytes(n)])
            buf[pos:pos + n] = fill[:len(buf) - pos]
            steps.append(f"{kind} {n} at {pos}")
        elif kind == "cut":
            cut = rng.choice([rng.randrange(0, len(buf) + 1), rng.randrange(HEADER_SIZE - 8,
                              HEADER_SIZE + 8), len(buf) - rng.randint(1, 8)])
            del buf[max(cut, 0):]
            steps.append(f"{kind} to {len(buf)}")
        elif kind == "extend":
            n = rng.choice([1, 4, rng.randint(1, 8192)])
            buf += rng.choice([bytes(n), rng.randbytes(n)])
            steps.append(f"{kind} by {n}")
        elif kind == "size":
            field = rng.choice(["data_size", "image_size", "target_size"])
            value = rng.choice(SIZES + [end - HEADER_SIZE + rng.randint(-3, 3)])
            _set(buf, field, value)
            if rng.random() < 0.5:  # a target that lets a huge image size through
                _set(buf, "target_size", (1 << 64) - 1)
            steps.append(f"{field}={value}")
        elif kind == "flags":
            value = rng.choice(FLAGS)
            _set(buf, "flags", value)
            steps.append(f"flags={value:#x}")
        elif kind == "version":
            value = rng.choice(VERSIONS)
            _set(buf, "version", value)
            steps.append(f"version={value}")
        elif kind == "splice":
            other = bases[rng.choice(sorted(bases))]
            buf[HEADER_SIZE:] = other[HEADER_SIZE:]
            steps.append(f"{kind} data of another image ({len(other) - HEADER_SIZE} bytes)")
    return f"{name}: {'; '.join(steps) or 'unchanged'}", bytes(buf)


class Hang(BaseException):
    """A case ran past CASE_SECONDS (BaseException: no handler may swallow it)."""


@contextmanager
def watchdog() -> Iterator[Callable[[], None]]:
    """arm() before each case: SIGALRM raises Hang in the test after
    CASE_SECONDS; should that not get through (a hang in C holding the
    GIL), faulthandler dumps every thread and ends the run later."""

    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"a case ran for over {CASE_SECONDS} s")

    def arm() -> None:
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        faulthandler.dump_traceback_later(4 * CASE_SECONDS, exit=True)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield arm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


def _accepted(data: bytes, raw: bytes | None) -> None:
    """An accepted image must really be one; the raw image extracted from
    it must be what the header promises."""
    h = Header.parse(data)
    assert h.problems() == []
    if raw is not None:
        assert len(raw) == h.image_size and hashlib.sha256(raw).digest() == h.sha256


def test_generated_corruptions_in_process(bases: dict[str, bytes], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    img = tmp_path / "case.img"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "raw"
    refused = accepted = 0
    slowest = (0.0, "")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with watchdog() as arm:
        for i in range(CASES):
            what, data = corrupt(rng, bases)
            img.write_bytes(data)
            extract = i % 3 == 0  # extract shares the reading with verify: a third will do
            t = time.monotonic()
            arm()
            try:
                if extract:
                    extract_image(img, out)
                else:
                    verify_image(img)
            except ImageError as e:
                assert str(e) and "\n" not in str(e), (what, str(e))
                refused += 1
                left = list(out_dir.iterdir())
                assert left == [], f"case {i} ({what}) left {left}"
            except Hang as e:
                raise AssertionError(f"case {i} ({what}): {e}") from None
            except BaseException as e:
                raise AssertionError(f"case {i} ({what}): {type(e).__name__}: {e}") from e
            else:
                accepted += 1
                _accepted(data, out.read_bytes() if extract else None)
                if extract:
                    out.unlink()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, (time.monotonic() - t, what))
    took = time.monotonic() - started
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # KiB
    print(f"\n{CASES} corruptions in {took:.1f} s: {refused} refused, {accepted} still valid; "
          f"slowest {slowest[0] * 1000:.1f} ms ({slowest[1]}); peak RSS +{grew >> 10} MiB")
    # Most are real damage (the rest: reserved bytes, undefined flag bits,
    # a larger target size, ... which the OS accepts too).
    assert refused >= 0.7 * CASES
    if not SANITIZED:  # ASan's allocator pads and quarantines
        assert grew < 256 << 10, f"peak RSS grew by {grew >> 10} MiB"


def test_generated_corruptions_through_the_tools(bases: dict[str, bytes],
                                                 tmp_path: Path) -> None:
    """A sample, through lookimage and oxboot extract as processes."""
    rng = random.Random(SEED + 1)
    cases = []
    for i in range(CLI_CASES):
        what, data = corrupt(rng, bases)
        d = tmp_path / f"c{i}"
        d.mkdir()
        (d / "case.img").write_bytes(data)
        cases.append((i, what, data, d))

    def run(case: tuple[int, str, bytes, Path]) -> tuple[Run, Run]:
        _, _, _, d = case
        out = []
        for args in (["lookimage", str(d / "case.img")],
                     ["oxboot", "extract", str(d / "case.img"), "-o", str(d / "x.raw")]):
            p = subprocess.run([*command(args[0]), *args[1:]], capture_output=True, timeout=60)
            out.append(Run(p.returncode, p.stdout.decode(), p.stderr.decode()))
        return out[0], out[1]

    with ThreadPoolExecutor(2) as pool:  # two at a time: two cores here
        results = list(pool.map(run, cases))
    refused = 0
    for (i, what, data, d), (look, extract) in zip(cases, results, strict=True):
        assert "Traceback" not in look.stderr + extract.stderr, (i, what, look, extract)
        assert (look.status == 0) == (extract.status == 0), (i, what, look, extract)
        if look.status == 0:
            _accepted(data, (d / "x.raw").read_bytes())
            continue
        refused += 1
        one_line_error(look)  # (after any warnings)
        one_line_error(extract)
        # The same rule broken, in the same words.
        assert extract.stderr.splitlines()[-1] == look.stderr.splitlines()[-1], (i, what)
        assert sorted(p.name for p in d.iterdir()) == ["case.img"], (i, what)
    assert refused >= 0.6 * CLI_CASES
