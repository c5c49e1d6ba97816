"""Benchmark harness: data sets, same-run baselines, ratios and floors.

Every figure is a ratio against a baseline measured in the same run (the
machine is noisy), recorded with pytest-benchmark and collected into
``bench/results/<date>.json``; a ratio on the wrong side of its floor in
``bench/floors.json`` fails the run. ``OXBOOT_BENCH_QUICK=1`` (CI) uses small
data and its own, looser floors.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from dataset import ensure_dataset  # noqa: E402

QUICK = os.environ.get("OXBOOT_BENCH_QUICK") == "1"
FLOORS = json.loads((HERE / "floors.json").read_text())
RESULTS: dict[str, dict[str, object]] = {}
MEASUREMENTS: dict[str, dict[str, object]] = {}


def best_of(fn: Callable[[], object], rounds: int) -> float:
    """Best wall time of `rounds` runs (the least disturbed one)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, check=True, capture_output=True, **kw)  # type: ignore[call-overload]


def record(name: str, ratio: float, **details: object) -> None:
    """Record a ratio and check it against its floor (failing the test)."""
    floor = FLOORS[name]
    limit = floor["quick" if QUICK else "full"]
    ok = ratio <= limit if floor["kind"] == "max" else ratio >= limit
    RESULTS[name] = {"ratio": round(ratio, 4), "floor": limit, "kind": floor["kind"],
                     "target": floor["target"], "ok": ok, **details}
    print(f"\n{name}: {ratio:.3f} ({floor['kind']} {limit}) {details}")
    assert ok, f"{name} = {ratio:.3f}, floor {floor['kind']} {limit}"


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
def lab():  # noqa: ANN201 - a generator fixture
    """Namespaces and links for one benchmark, removed afterwards."""
    from oxboot.netlab import Lab

    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def dataset() -> Path:
    size = int(os.environ.get("OXBOOT_BENCH_SIZE_MIB", "64" if QUICK else "1024"))
    return ensure_dataset(size)


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
        "machine": _machine(),
        "ratios": RESULTS,
        "measurements": MEASUREMENTS,
    }
    target = os.environ.get("OXBOOT_BENCH_RESULTS")
    if target:
        Path(target).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
