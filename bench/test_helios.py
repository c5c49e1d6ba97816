"""The images helios-build really makes (issue 15), against the original
tools and the physical bounds, each measured beside ours in the same run.

The original tools are the rebuilt ones of bench/originals.py (the same
crates as the golden vectors, checked against them byte for byte before
use): native programs, one thread, 128 KiB at a time.

The recovery shape is measured at full size in quick mode too: its files
part is the quick data set itself, and at 1/8 of it the interpreter's
start-up would be a large part of what is compared.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    FLOORS,
    QUICK,
    Figures,
    interleaved,
    knob,
    record,
    run,
    script,
    self_test_skip,
    timed,
    vs_hash_or_copy,
)
from dataset import (
    HOST_MIB,
    HOST_SOURCE_MIB,
    RECOVERY_FILES_MIB,
    RECOVERY_MIB,
    ensure_dataset,
    ensure_host_shape,
    ensure_recovery_shape,
)

#: Quick mode builds the host shape at 1/8 of its size (the recovery shape: module docstring).
SCALE = 8 if QUICK else 1
#: Rounds against the original mkimage -z (18 s a round on the recovery shape).
ORIGINAL_ROUNDS = 3
#: Interleaved rounds of the measurements under a second or two each.
PAIRS = 5
ONE_THREAD = ["--threads", "1"]
#: Quick mode's host shape repeats the gzip -9 output of a smaller data set.
QUICK_HOST_SOURCE_MIB = 64


@pytest.fixture(scope="module")
def host() -> Path:
    path = ensure_host_shape(HOST_MIB // SCALE, QUICK_HOST_SOURCE_MIB if QUICK else HOST_SOURCE_MIB)
    path.read_bytes()  # page cache: every contender reads from memory
    return path


@pytest.fixture(scope="module")
def recovery() -> Path:
    path = ensure_recovery_shape(RECOVERY_MIB, RECOVERY_FILES_MIB)
    with open(path, "rb") as f:  # page cache: every contender reads from memory
        while f.read(64 << 20):
            pass
    return path


@pytest.mark.skipif(QUICK, reason="the durable copy of 150 MiB takes 0.15 s: the interpreter's "
                    "start-up is a third of it (quick mode guards the same path with "
                    "mkimage_raw_vs_hash_or_copy)")
def test_host_mkimage_raw(benchmark, host: Path, tmp_path: Path) -> None:
    """The host image: mkimage without -z must read, hash and durably write
    the file; against the larger of openssl's hash and dd's durable copy
    (conv=fsync) of the same file, each beside it. All three write (or read)
    the same disk, as a build does: the copy's fsync is part of the bound,
    and a slow minute of the disk slows both sides of a pair."""
    out = tmp_path / "host.img"
    copy = tmp_path / "copy.raw"
    argv = [*script("mkimage"), "-i", str(host), "-o", str(out),
            *knob(("host_mkimage_raw_vs_hash_or_durable_copy",), [], ONE_THREAD)]
    vs_hash_or_copy(benchmark, "host_mkimage_raw_vs_hash_or_durable_copy", argv, host, copy,
                    PAIRS, "disk (fsync)")


def test_recovery_mkimage_z(benchmark, recovery: Path, original, tmp_path: Path) -> None:
    """The recovery image: mkimage -z at the default level against the
    original's mkimage -z, speed and size, in turn."""
    out = tmp_path / "rec.img"
    theirs = tmp_path / "orig.img"
    base_argv = [str(original.mkimage), "-i", str(recovery), "-o", str(theirs), "-z"]
    # Self-test: a faster level, larger than allowed, on one thread.
    argv = [*script("mkimage"), "-i", str(recovery), "-o", str(out), "-z",
            *knob(("recovery_mkimage_z_vs_original", "recovery_mkimage_z_size_vs_original"),
                  [], ["--level", "4", *ONE_THREAD])]
    ratio, ours, base = interleaved(benchmark, lambda: run(argv),
                                    lambda: timed(lambda: run(base_argv)), ORIGINAL_ROUNDS)
    size = out.stat().st_size - 4096
    reference = theirs.stat().st_size - 4096
    mb = recovery.stat().st_size / 1e6
    figures = Figures()
    figures.record("recovery_mkimage_z_vs_original", 1 / ratio, seconds=round(ours, 3),
                   original_seconds=round(base, 3), mbps=round(mb / ours, 1),
                   original_mbps=round(mb / base, 1), rounds=ORIGINAL_ROUNDS)
    figures.record("recovery_mkimage_z_size_vs_original", size / reference, bytes=size,
                   original_bytes=reference)
    figures.check()


def lookimage_vs_original(benchmark, figure: str, image: Path, original,
                          options: list[str]) -> None:
    """`lookimage OPTIONS IMAGE` against the original's, in turn (whole
    commands: ours pays the interpreter's start-up, which the issue counts)."""
    argv = [*script("lookimage"), *options, str(image)]
    base_argv = [str(original.lookimage), str(image)]
    ratio, ours, base = interleaved(benchmark, lambda: run(argv),
                                    lambda: timed(lambda: run(base_argv)), PAIRS)
    kind = FLOORS[figure]["kind"]
    record(figure, ratio if kind == "max" else 1 / ratio, seconds=round(ours, 3),
           original_seconds=round(base, 3), bytes=image.stat().st_size, rounds=PAIRS)


def test_recovery_lookimage(benchmark, recovery: Path, original, tmp_path: Path) -> None:
    """The recovery image, as mkimage -z made it: lookimage against the
    original's lookimage of the same file."""
    self_test_skip("recovery_lookimage_vs_original")
    img = tmp_path / "rec.img"
    run([*script("mkimage"), "-i", str(recovery), "-o", str(img), "-z"])
    lookimage_vs_original(benchmark, "recovery_lookimage_vs_original", img, original, [])


def test_lookimage_zlib_256m(benchmark, original, tmp_path: Path) -> None:
    """A 256 MiB zlib image (the ext4 data set): the sizes a recovery image
    has, where fixed costs (start-up, threads, buffers) show; time against
    the original's."""
    img = tmp_path / "z256.img"
    run([*script("mkimage"), "-i", str(ensure_dataset(256)), "-o", str(img), "-z"])
    # Self-test: --threads 1 (the inflate and the hash in turn).
    lookimage_vs_original(benchmark, "lookimage_zlib_256m_vs_original", img, original,
                          knob(("lookimage_zlib_256m_vs_original",), [], ONE_THREAD))


#: Runs of each --help (and of the bare interpreter), in turn: the least
#: disturbed one counts.
HELP_RUNS = 15


def help_ms(tool: str) -> dict[str, float]:
    """`tool --help` in milliseconds, the best of HELP_RUNS, beside the bare
    interpreter's start (`python -c pass`, what no Python tool can beat)."""
    argv = [*script(tool), "--help"]
    ours: list[float] = []
    bare: list[float] = []
    for _ in range(HELP_RUNS):
        ours.append(timed(lambda: subprocess.run(argv, check=True, capture_output=True)))
        bare.append(timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)))
    return {"ms": min(ours) * 1000, "python_ms": round(min(bare) * 1000, 1),
            "median_ms": round(statistics.median(ours) * 1000, 1), "runs": HELP_RUNS}


def test_mkimage_help_ms() -> None:
    self_test_skip("mkimage_help_ms")
    m = help_ms("mkimage")
    record("mkimage_help_ms", m.pop("ms"), **m)


def test_lookimage_help_ms() -> None:
    self_test_skip("lookimage_help_ms")
    m = help_ms("lookimage")
    record("lookimage_help_ms", m.pop("ms"), **m)
