"""Benchmark harness: data sets, same-run baselines, ratios and floors.

Every figure is a ratio against a baseline measured in the same run (the
machine is noisy), recorded with pytest-benchmark and collected into
``bench/results/<date>.json``; a ratio on the wrong side of its floor in
``bench/floors.json`` fails the run. ``OXBOOT_BENCH_QUICK=1`` (CI) uses
smaller data and its own floors, each within 35% of the target.

``OXBOOT_BENCH_SELF_TEST=1`` proves the floors bite: each benchmark runs the
code made slower through one of its own options (:func:`knob`), and the run
passes only if every figure so slowed breaks its floor.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dataset import ensure_dataset  # noqa: E402

QUICK = os.environ.get("OXBOOT_BENCH_QUICK") == "1"
SELF_TEST = os.environ.get("OXBOOT_BENCH_SELF_TEST") == "1"
FLOORS = json.loads((HERE / "floors.json").read_text())
RESULTS: dict[str, dict[str, object]] = {}
MEASUREMENTS: dict[str, dict[str, object]] = {}
#: Self-test mode: the figures a benchmark slowed, and how.
SLOWED: dict[str, str] = {}

T = TypeVar("T")


def knob(figures: tuple[str, ...], normal: T, slowed: T) -> T:
    """`normal`; in self-test mode `slowed` (an option of the code itself
    that makes it slower: floors.json's ``self_test`` for each figure says
    which), and then each of `figures` must break its floor."""
    if not SELF_TEST:
        return normal
    for name in figures:
        SLOWED[name] = FLOORS[name]["self_test"]
    return slowed


def self_test_skip(*figures: str) -> None:
    """In self-test mode, skip a benchmark none of whose figures has a knob
    (floors.json's ``no_self_test`` says why)."""
    if SELF_TEST:
        pytest.skip("self-test: no knob slows " + ", ".join(figures))


def best_of(fn: Callable[[], object], rounds: int) -> float:
    """Best wall time of `rounds` runs (the least disturbed one)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(benchmark: object, ours: Callable[[], object], base: Callable[[], float],
                rounds: int) -> tuple[float, float, float]:
    """Ours and the baseline in turn, `rounds` times each: the median of the
    rounds' ratios ours/base, and the median seconds of each. `base`
    returns the seconds it measured (e.g. ``lambda: timed(fn)``); ours is
    timed by pytest-benchmark (its raw timings are kept and compared run to
    run), the baseline running as the set-up of each of its rounds. A
    disturbance lasting a few seconds spoils a pair, not the figure."""
    bases: list[float] = []

    def setup() -> None:
        bases.append(base())

    benchmark.pedantic(ours, setup=setup, rounds=rounds, iterations=1)  # type: ignore[attr-defined]
    times = list(benchmark.stats.stats.data)  # type: ignore[attr-defined]
    assert len(times) == len(bases) == rounds
    return (statistics.median(a / b for a, b in zip(times, bases, strict=True)),
            statistics.median(times), statistics.median(bases))


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def record(name: str, ratio: float, **details: object) -> None:
    """Record a ratio and check it against its floor (failing the test).
    In self-test mode a slowed figure must break its floor instead."""
    floor = FLOORS[name]
    limit = floor["quick" if QUICK else "full"]
    ok = ratio <= limit if floor["kind"] == "max" else ratio >= limit
    RESULTS[name] = {"ratio": round(ratio, 4), "floor": limit, "kind": floor["kind"],
                     "target": floor["target"], "ok": ok, **details}
    if SELF_TEST:
        slowed = SLOWED.get(name)
        RESULTS[name]["slowed_by"] = slowed
        print(f"\n{name}: {ratio:.3f} ({floor['kind']} {limit}) slowed by {slowed}: "
              f"{'caught' if not ok else 'NOT caught' if slowed else 'not slowed'}")
        assert not (slowed and ok), \
            f"self-test: {name} = {ratio:.3f} with {slowed} still meets {floor['kind']} {limit}"
        return
    print(f"\n{name}: {ratio:.3f} ({floor['kind']} {limit}) {details}")
    assert ok, f"{name} = {ratio:.3f}, floor {floor['kind']} {limit}"


class Figures:
    """Figures a benchmark records together: each one whatever those before
    it showed, the floors they broke asserted at the end (:meth:`check`)."""

    def __init__(self) -> None:
        self.broken: list[str] = []

    def record(self, name: str, ratio: float, **details: object) -> None:
        try:
            record(name, ratio, **details)
        except AssertionError as e:
            self.broken.append(str(e))

    def check(self) -> None:
        assert not self.broken, self.broken


def note(name: str, **values: object) -> None:
    """A measurement with no floor (context for BENCHMARKS.md)."""
    MEASUREMENTS[name] = values


def script(name: str) -> list[str]:
    """How to run console script `name`: the script beside this interpreter
    (version-manager shims on PATH add their own start-up time), else the
    module."""
    exe = Path(sys.executable).parent / name
    module = {"oxboot": "main"}.get(name, name)
    return [str(exe)] if exe.exists() else [sys.executable, "-m", f"oxboot.cli.{module}"]


@pytest.fixture
def lab():  # a generator fixture
    """Namespaces and links for one benchmark, removed afterwards."""
    from oxboot.netlab import Lab

    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def dataset() -> Path:
    # Quick mode: large enough that a tool's start-up (~60 ms) is small
    # against the work it measures.
    size = int(os.environ.get("OXBOOT_BENCH_SIZE_MIB", "256" if QUICK else "1024"))
    return ensure_dataset(size)


@pytest.fixture(scope="session")
def original():  # -> originals.OriginalTools
    """The original mkimage and lookimage, rebuilt and checked against the
    golden vectors (bench/originals.py)."""
    import originals
    from dataset import default_cache_dir

    return originals.build(default_cache_dir())


def _machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "kernel": platform.release(),
            "python": platform.python_version()}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not RESULTS and not MEASUREMENTS:
        return
    out = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": QUICK,
        "self_test": SELF_TEST,
        "machine": _machine(),
        "ratios": RESULTS,
        "measurements": MEASUREMENTS,
    }
    if SELF_TEST:
        _print_self_test()
    target = os.environ.get("OXBOOT_BENCH_RESULTS")
    if target:
        Path(target).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


def _print_self_test() -> None:
    """The self-test's table: each floor, what slowed the code, what the
    slowed code measured, and whether the floor caught it."""
    rows = ["", "| figure | floor | slowed by | measured | caught |", "|---|--:|---|--:|:-:|"]
    for name, floor in sorted(FLOORS.items()):
        if name.startswith("_"):
            continue
        r = RESULTS.get(name)
        limit = floor["quick" if QUICK else "full"]
        sign = "≤" if floor["kind"] == "max" else "≥"
        if limit is None:
            rows.append(f"| {name} | full runs only | | | |")
            continue
        if r is None or not r.get("slowed_by"):
            why = floor.get("no_self_test", "not measured in this run")
            rows.append(f"| {name} | {sign} {limit} | — ({why}) | | |")
            continue
        rows.append(f"| {name} | {sign} {limit} | {r['slowed_by']} | {r['ratio']} | "
                    f"{'yes' if not r['ok'] else '**no**'} |")
    print("\n".join(rows))


def vs_hash_or_copy(benchmark, figure: str, argv: list[str], src: Path, copy: Path,
                    rounds: int, output: str) -> None:
    """Record `figure`: `argv` (a mkimage that reads, hashes and writes
    `src`) against the larger of ``openssl dgst -sha256`` of `src` and a
    ``dd conv=fsync`` copy of it to `copy`, each measured beside it."""
    hashes: list[float] = []
    copies: list[float] = []

    def bound() -> float:
        hashes.append(timed(lambda: run(["openssl", "dgst", "-sha256", str(src)])))
        copies.append(timed(lambda: run(["dd", f"if={src}", f"of={copy}", "bs=4M",
                                         "conv=fsync", "status=none"])))
        copy.unlink()
        return max(hashes[-1], copies[-1])

    ratio, ours, base = interleaved(benchmark, lambda: run(argv), bound, rounds)
    record(figure, ratio, seconds=round(ours, 3), bound_seconds=round(base, 3),
           openssl_seconds=round(statistics.median(hashes), 3),
           dd_seconds=round(statistics.median(copies), 3), bytes=src.stat().st_size,
           rounds=rounds, output=output)


def netboot_image(d: Path, size: int) -> Path:
    """A boot image of `size` bytes in `d` for the network benchmarks: half
    random, a quarter zeros, a quarter random (what compresses, what does not)."""
    from oxboot import build_image

    raw = d / "img.raw"
    with open(raw, "wb") as f:
        f.write(os.urandom(size // 2))
        f.write(bytes(size // 4))
        f.write(os.urandom(size // 4))
    build_image(raw, d / "img.img", target_size=size)
    return d / "img.img"


#: `oxboot netboot ARGS`, once imported, held until a line arrives on stdin.
_HELD_SLED = ("import sys\nfrom oxboot.cli.netboot import main\n"
              "print('ready', flush=True)\nsys.stdin.readline()\nsys.exit(main(sys.argv[1:]))")


@dataclass
class HeldBoot:
    """Sleds booted together by :func:`boot_together`."""

    seconds: float  # from the release to the last emulator's exit
    results: list[dict[str, object]]  # the JSON line each emulator printed last
    cpu_seconds: float  # the emulators' CPU over that time
    exit_codes: list[int]
    errors: list[str]  # their stderr


def boot_together(sleds: list, image: Path, timeout: float) -> HeldBoot:  # list[Host]
    """A rack's sleds powering on together with their boot client ready:
    one emulator per sled started and imported first, then all released at
    once, so that their interpreters' start-up (~0.1 s of CPU each, on the
    cores the server uses here) is not part of the serving time."""
    procs = [subprocess.Popen(s.cmd([sys.executable, "-c", _HELD_SLED, s.ifname, "--want-image",
                                     str(image), "--json", "-t", str(timeout)]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in sleds]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n", p.stderr
    t0 = time.monotonic()
    c0 = os.times()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results, errors = [], []
    for p in procs:
        out, err = p.communicate(timeout=timeout + 120)
        results.append(json.loads(out.splitlines()[-1]))
        errors.append(err)
    seconds = time.monotonic() - t0
    c1 = os.times()
    cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    return HeldBoot(seconds, results, cpu, [p.returncode for p in procs], errors)
