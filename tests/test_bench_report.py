"""bench/report.py's comparison of a benchmark run with an earlier one: the
direction of each figure, the regression listing, which earlier run is
picked, and the --compare command. Fake results files only: no benchmark
runs, no network."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MACHINE = {"cpu": "Test CPU", "cores": 2, "kernel": "6.1", "python": "3.11.7"}


def _load_report() -> ModuleType:
    # bench/ is not a package: import the script by its path.
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


report = _load_report()

# name: (ratio, kind, floor)
OLD = {
    "speed": (2.0, "min", 1.0),     # -> 2.2: better
    "size": (1.0, "max", 1.5),      # -> 0.9: better (lower)
    "slow": (2.0, "min", 1.0),      # -> 1.5: 25% worse, still above its floor
    "bloat": (1.0, "max", 1.5),     # -> 1.2: 20% worse, still below its ceiling
    "steady": (1.0, "min", 0.5),    # -> 1.004: within 0.5%
    "mild": (1.0, "max", 1.5),      # -> 1.08: worse, but not by 10%
    "failing": (1.0, "max", 1.7),   # -> 2.0: worse and past its floor
    "gone": (3.0, "min", 1.0),      # only in the old run
}
NEW = {
    "speed": (2.2, "min", 1.0),
    "size": (0.9, "max", 1.5),
    "slow": (1.5, "min", 1.0),
    "bloat": (1.2, "max", 1.5),
    "steady": (1.004, "min", 0.5),
    "mild": (1.08, "max", 1.5),
    "failing": (2.0, "max", 1.7),
    "fresh": (1.0, "min", 0.5),     # only in the new run
}


def results(figures: dict[str, tuple[float, str, float]], date: str,
            quick: bool = False) -> dict[str, Any]:
    ratios = {}
    for name, (ratio, kind, floor) in figures.items():
        ok = ratio <= floor if kind == "max" else ratio >= floor
        ratios[name] = {"ratio": ratio, "floor": floor, "kind": kind, "target": floor,
                        "ok": ok, "seconds": 1.5}
    return {"date": date, "quick": quick, "machine": MACHINE, "ratios": ratios,
            "measurements": {"startup": {"python_seconds": 0.03}}}


def write(directory: Path, name: str, r: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps(r))
    return path


@pytest.fixture
def no_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A results directory git does not see as a checkout."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return tmp_path / "results"


@pytest.fixture
def pair(no_git: Path) -> tuple[Path, Path]:
    old = write(no_git, "2026-01-01T000000Z.json", results(OLD, "2026-01-01T00:05:00+00:00"))
    new = write(no_git, "2026-01-02T000000Z.json", results(NEW, "2026-01-02T00:05:00+00:00"))
    return old, new


def test_each_figure_is_judged_by_its_direction() -> None:
    changes = {c.name: c for c in report.compare(results(NEW, "d"), results(OLD, "d"))}
    assert {n: c.label for n, c in changes.items()} == {
        "speed": "+10.0% better",
        "size": "-10.0% better",
        "slow": "-25.0% worse",
        "bloat": "+20.0% worse",
        "steady": "—",
        "mild": "+8.0% worse",
        "failing": "+100.0% worse",
        "fresh": "new",
        "gone": "removed",
    }
    assert changes["fresh"].old is None and changes["gone"].new is None
    assert changes["failing"].ok is False


def test_regressions_are_over_ten_percent_worse_and_still_passing() -> None:
    changes = report.compare(results(NEW, "d"), results(OLD, "d"))
    assert {c.name for c in changes if c.regression} == {"slow", "bloat"}
    worse, failing = report._regressions(changes)
    assert [line.split(":")[0] for line in worse] == ["bloat", "slow"]
    assert [line.split(":")[0] for line in failing] == ["failing"]


@pytest.mark.parametrize(("old", "new", "kind", "label", "regression"), [
    (1.0, 1.004, "max", "—", False),            # 0.4%: unchanged
    (1.0, 0.996, "min", "—", False),
    (1.0, 1.006, "max", "+0.6% worse", False),  # 0.6%: a change, not a regression
    (1.0, 1.095, "max", "+9.5% worse", False),
    (1.0, 1.105, "max", "+10.5% worse", True),
    (1.0, 0.895, "min", "-10.5% worse", True),
    (1.0, 0.895, "max", "-10.5% better", False),
    (0.0, 0.0, "min", "—", False),
    (0.0, 1.0, "min", "better", False),         # no percentage of zero
    (0.0, 1.0, "max", "worse", True),
])
def test_thresholds(old: float, new: float, kind: str, label: str, regression: bool) -> None:
    [c] = report.compare(results({"x": (new, kind, 5.0 if kind == "max" else -1.0)}, "d"),
                         results({"x": (old, kind, 1.0)}, "d"))
    assert (c.label, c.regression) == (label, regression)


def test_without_an_old_run_every_figure_is_new() -> None:
    changes = report.compare(results(NEW, "d"), None)
    assert {c.label for c in changes} == {"new"}
    assert not any(c.regression for c in changes)


def test_markdown_table_and_regressions(pair: tuple[Path, Path]) -> None:
    old, new = pair
    md = report.report(new)
    assert "| figure | measured | previous | change | floor | target | met | details |" in md
    assert (f"- previous run: `{old}` (2026-01-01T00:05:00+00:00), the last full run on disk"
            in md)
    assert "| slow | 1.500 | 2.000 | -25.0% worse | ≥ 1.0 |" in md
    assert "| size | 0.900 | 1.000 | -10.0% better | ≤ 1.5 |" in md
    assert "| steady | 1.004 | 1.000 | — |" in md
    assert "| fresh | 1.000 | — | new |" in md
    assert "In the previous run but not in this one: `gone`." in md
    section = md.split("## Regressions against the previous run", 1)[1].split("\n## ", 1)[0]
    assert "- bloat: 1.000 -> 1.200 (+20.0% worse)" in section
    assert "- slow: 2.000 -> 1.500 (-25.0% worse)" in section
    assert "mild" not in section
    assert section.split("below the floor as well")[1].strip().splitlines()[-1] == (
        "- failing: 1.000 -> 2.000 (+100.0% worse)")


def test_markdown_says_none_without_regressions(no_git: Path) -> None:
    write(no_git, "2026-01-01T000000Z.json", results(OLD, "d1"))
    better = {**OLD, "speed": (2.5, "min", 1.0)}
    new = write(no_git, "2026-01-02T000000Z.json", results(better, "d2"))
    section = report.report(new).split("## Regressions against the previous run", 1)[1]
    assert section.split("\n## ", 1)[0].strip().endswith("- none")


def test_markdown_without_a_previous_run(no_git: Path) -> None:
    new = write(no_git, "2026-01-02T000000Z.json", results(NEW, "d2"))
    md = report.report(new)
    assert "- previous run: none" in md
    assert "| speed | 2.200 | — | new |" in md
    assert "## Regressions against the previous run" not in md


def _stamped(directory: Path) -> dict[str, Path]:
    """Full and quick runs around one full run on 2026-01-03."""
    names = {
        "a": "2026-01-01T000000Z.json",
        "b": "2026-01-02T000000Z.json",
        "b_quick": "2026-01-02T120000Z-quick.json",  # newer than b, but quick
        "me": "2026-01-03T000000Z.json",
        "me_quick": "2026-01-03T000000Z-quick.json",
        "later": "2026-01-04T000000Z.json",           # newer than the file reported
    }
    return {k: write(directory, n, results(OLD, "d", quick="quick" in k))
            for k, n in names.items()}


def test_previous_run_on_disk_skips_quick_newer_and_itself(no_git: Path) -> None:
    f = _stamped(no_git)
    assert report.previous_run(f["me"], report.load(f["me"])) == f["b"]
    assert report.previous_run(f["a"], report.load(f["a"])) is None
    # a quick run is compared with the previous quick run, never a full one
    assert report.previous_run(f["me_quick"], report.load(f["me_quick"])) == f["b_quick"]
    assert report.previous_run(f["b_quick"], report.load(f["b_quick"])) is None


def test_previous_run_of_a_renamed_file_goes_by_its_date(no_git: Path) -> None:
    f = _stamped(no_git)
    r = results(NEW, "2026-01-03T00:05:00+00:00")
    renamed = write(no_git, "mine.json", r)
    assert report.previous_run(renamed, r) == f["me"]
    r["date"] = "2026-01-03T00:00:00+00:00"  # as old as "me": not before it
    assert report.previous_run(renamed, r) == f["b"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_previous_run_in_a_checkout_is_the_newest_committed(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    f = _stamped(tmp_path / "bench" / "results")
    # b is newer than a but was never committed; the quick run and the
    # file reported are tracked and still skipped
    for k in ("a", "b_quick", "me", "later"):
        subprocess.run(["git", "-C", str(tmp_path), "add", str(f[k])], check=True)
    assert report.previous_run(f["me"], report.load(f["me"])) == f["a"]
    assert "the last committed full run" in report.report(f["me"])
    subprocess.run(["git", "-C", str(tmp_path), "add", str(f["b"])], check=True)
    assert report.previous_run(f["me"], report.load(f["me"])) == f["b"]
    # quick runs are not committed: the previous one on disk
    assert report.previous_run(f["me_quick"], report.load(f["me_quick"])) == f["b_quick"]


def test_compare_command_prints_a_table_and_exits_0(
        pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    old, new = pair
    assert report.main(["--compare", str(new)]) == 0
    out = capsys.readouterr().out
    assert f"against {old}" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[4:] if line.strip()}
    assert rows["slow"][1:5] == ["≥", "2.000", "1.500", "-25.0%"]
    assert rows["gone"][1:5] == ["≥", "3.000", "—", "removed"]
    assert rows["failing"][-1] == "NO"
    after = out.split("still passing the floor):", 1)[1]
    assert after.split("worse and below")[0].split() == [
        "bloat:", "1.000", "->", "1.200", "(+20.0%", "worse)",
        "slow:", "2.000", "->", "1.500", "(-25.0%", "worse)"]
    # any file can be given as the old run, in either order
    assert report.main(["--compare", str(old), str(new)]) == 0
    assert f"against {new}" in capsys.readouterr().out


def test_compare_without_an_earlier_quick_run(
        no_git: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(no_git, "2026-01-01T000000Z.json", results(OLD, "d1"))
    quick = write(no_git, "2026-01-02T000000Z-quick.json", results(NEW, "d2", quick=True))
    assert report.main(["--compare", str(quick)]) == 0
    assert "no earlier quick run" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["--compare"], ["a.json", "b.json"], ["--bogus", "x"]])
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and err.count("\n") == 1


def test_bad_input_is_one_line(no_git: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(no_git, "2026-01-01T000000Z.json", {"date": "d"})  # no ratios
    broken = no_git / "2026-01-02T000000Z.json"
    broken.write_text("{")
    for argv in (["--compare", str(no_git / "missing.json")], [str(bad)], [str(broken)],
                 ["--compare", str(broken), str(bad)]):
        assert report.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("report.py: ") and err.count("\n") == 1, err
