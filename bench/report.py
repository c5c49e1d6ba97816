"""Regenerate BENCHMARKS.md from one results file of bench/run.sh, and
compare a run with an earlier one.

    python3 bench/report.py bench/results/<date>.json > BENCHMARKS.md
    python3 bench/report.py --compare NEW.json [OLD.json]

The report sets every figure beside the previous committed full run (see
`previous_run`); `--compare` prints just that comparison as plain text for CI
logs and exits 0 whatever it shows: the floors in bench/floors.json decide
whether a run fails, the comparison is for reading. Unreadable input is one
line on stderr and exit status 2.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NOTES = HERE / "notes.md"

FRAME = 1058  # bytes on the wire of a full DATA frame
LINK_100G = 100e9 / 8

# bench/run.sh names its results <UTC stamp>.json, or <UTC stamp>-quick.json in
# quick mode; the stamps are fixed-width, so they sort as text in time order.
# A self-test run (bench/run.sh --self-test) adds -selftest: never a baseline.
STAMP_NAME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{6}Z)(-quick)?(-selftest)?\.json")
STAMP_FORMAT = "%Y-%m-%dT%H%M%SZ"
# A figure that moved less than this (relative, in %) is shown as unchanged:
# the same code moves more than that between runs, so smaller moves mean nothing.
UNCHANGED_PCT = 0.5
# Worse by more than this (relative, in %) while still passing the floor is
# listed as a regression against the previous run.
REGRESSION_PCT = 10.0
UNCHANGED = "—"


class ReportError(Exception):
    """Input the report cannot use (one line for stderr)."""


Results = dict[str, Any]


def load(path: Path) -> Results:
    """One results file of bench/run.sh."""
    try:
        r = json.loads(path.read_text())
    except OSError as e:
        raise ReportError(f"{path}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not a results file (bad JSON: {e})") from None
    if not isinstance(r, dict) or not isinstance(r.get("ratios"), dict):
        raise ReportError(f"{path}: not a results file (no 'ratios')")
    for name, v in r["ratios"].items():
        if not (isinstance(v, dict) and isinstance(v.get("ratio"), int | float)
                and v.get("kind") in ("min", "max")):
            raise ReportError(f"{path}: figure {name!r} has no numeric ratio and min/max kind")
    return r


def run_stamp(path: Path, results: Results) -> str | None:
    """The run's UTC stamp: from the file name, else from its `date` (a file
    renamed by hand still orders among the others)."""
    m = STAMP_NAME.fullmatch(path.name)
    if m:
        return m[1]
    try:
        when = dt.datetime.fromisoformat(str(results["date"]))
    except (KeyError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime(STAMP_FORMAT)


def is_quick(path: Path, results: Results) -> bool:
    m = STAMP_NAME.fullmatch(path.name)
    return bool(m[2]) if m else bool(results.get("quick"))


def tracked_names(directory: Path) -> set[str] | None:
    """Names of the files directly in `directory` that git tracks, or None
    when `directory` is not in a git checkout (or there is no git)."""
    try:
        out = subprocess.run(["git", "-C", str(directory), "ls-files", "-z", "--", "."],
                             capture_output=True, check=False)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return {n for n in out.stdout.decode(errors="replace").split("\0") if n and "/" not in n}


def previous_run(path: Path, results: Results) -> Path | None:
    """The run to compare `path` with, from the same directory.

    A full run: the newest full run older than it (by stamp) that git tracks,
    i.e. the last one someone committed as the record (an uncommitted run
    was a try, not the baseline); outside a git checkout, the newest older
    full run on disk. A quick run: the newest older quick run on disk (quick
    runs are not committed, and quick and full runs use different data, so
    they are never compared with each other)."""
    quick = is_quick(path, results)
    stamp = run_stamp(path, results)
    tracked = None if quick else tracked_names(path.parent)
    best: tuple[str, Path] | None = None
    for f in path.parent.glob("*.json"):
        m = STAMP_NAME.fullmatch(f.name)
        if not m or bool(m[2]) != quick or m[3]:
            continue
        if stamp is not None and m[1] >= stamp:  # also `path` itself
            continue
        if tracked is not None and f.name not in tracked:
            continue
        if best is None or m[1] > best[0]:
            best = (m[1], f)
    return best[1] if best else None


@dataclass(frozen=True)
class Change:
    """One figure of a run against the same figure of an earlier run."""

    name: str
    kind: str  # 'min': higher is better; 'max': lower is better
    new: float | None  # None: the figure is gone in the new run
    old: float | None  # None: the figure did not exist in the old run
    ok: bool | None  # passes its floor in the new run
    pct: float | None  # relative change of the figure, in %
    verdict: str  # 'better', 'worse', 'same', 'new' or 'removed'

    @property
    def label(self) -> str:
        if self.verdict == "same":
            return UNCHANGED
        if self.pct is None:
            return self.verdict
        return f"{self.pct:+.1f}% {self.verdict}"

    @property
    def regression(self) -> bool:
        """Worse by more than REGRESSION_PCT though still above its floor
        (a figure below its floor already fails the run)."""
        return (self.verdict == "worse" and bool(self.ok)
                and (self.pct is None or abs(self.pct) > REGRESSION_PCT))


def _passes(v: dict[str, Any]) -> bool | None:
    if "ok" in v:
        return bool(v["ok"])
    if "floor" not in v:
        return None
    return v["ratio"] <= v["floor"] if v["kind"] == "max" else v["ratio"] >= v["floor"]


def compare(new: Results, old: Results | None) -> list[Change]:
    """Every figure of either run, by name; without an old run, all are new."""
    now, before = new["ratios"], (old or {"ratios": {}})["ratios"]
    out = []
    for name in sorted(set(now) | set(before)):
        if name not in now:
            b = before[name]
            out.append(Change(name, b["kind"], None, float(b["ratio"]), None, None, "removed"))
            continue
        v = now[name]
        n, kind, ok = float(v["ratio"]), v["kind"], _passes(v)
        if name not in before:
            out.append(Change(name, kind, n, None, ok, None, "new"))
            continue
        o = float(before[name]["ratio"])
        pct = (n - o) / abs(o) * 100 if o else None
        if n == o or (pct is not None and abs(pct) <= UNCHANGED_PCT):
            verdict = "same"
        else:
            verdict = "better" if (n > o) == (kind == "min") else "worse"
        out.append(Change(name, kind, n, o, ok, pct, verdict))
    return out


def _regressions(changes: list[Change]) -> tuple[list[str], list[str]]:
    """The regressions (one line each, or "none"), and the figures that got
    worse and fell below their floor too (the run itself fails on those)."""
    def line(c: Change) -> str:
        return f"{c.name}: {_fmt(c.old)} -> {_fmt(c.new)} ({c.label})"

    worse = [line(c) for c in changes if c.regression] or ["none"]
    failing = [line(c) for c in changes if c.ok is False and c.verdict == "worse"]
    return worse, failing


def _run_name(path: Path, r: Results) -> str:
    return f"`{path}` ({r.get('date', 'no date')})"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _previous_line(path: Path, r: Results, prev: Path | None, old: Results | None) -> str:
    if is_quick(path, r):
        which = "quick run on disk"
    elif tracked_names(path.parent) is None:
        which = "full run on disk (not a git checkout)"
    else:
        which = "committed full run"
    if prev is None or old is None:
        return f"- previous run: none (no earlier {which} to compare with)"
    line = (f"- previous run: {_run_name(prev, old)}, the last {which} before this "
            f"one; `change` is this run's figure against it, better or worse by the figure's "
            f"direction (≥ higher is better, ≤ lower), {UNCHANGED} within {UNCHANGED_PCT}%")
    if old.get("machine") != r.get("machine"):
        m = old.get("machine") or {}
        line += (f"; it ran on another machine ({m.get('cpu', '?')}, {m.get('cores', '?')} "
                 f"cores, Linux {m.get('kernel', '?')}, Python {m.get('python', '?')})")
    return line


def report(path: Path) -> str:
    """BENCHMARKS.md for the results file `path`."""
    r = load(path)
    prev = previous_run(path, r)
    old = load(prev) if prev else None
    changes = {c.name: c for c in compare(r, old)}
    try:
        return _report(path, r, prev, old, changes)
    except KeyError as e:
        raise ReportError(f"{path}: not a results file (no {e})") from None


def _report(path: Path, r: Results, prev: Path | None, old: Results | None,
            changes: dict[str, Change]) -> str:
    m = r["machine"]
    out = [
        "# Benchmarks",
        "",
        "Regenerated by `bash bench/run.sh` (see README). Every figure is a ratio against a "
        "baseline measured in the same run on the same machine; floors live in "
        "`bench/floors.json`, CI runs the quick mode (`bash bench/run.sh --quick`).",
        "",
        f"- date: {r['date']}; results: `{path}`",
        f"- machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}",
        "- data: a 1 GiB ext4 filesystem of real files from /usr (`bench/dataset.py`, "
        "`mke2fs -d`, cached); network: veth pairs between namespaces, a Linux bridge for "
        "16 sleds; baseline sender: `trafgen` (netsniff-ng) with the same frame size and "
        "a receiver like ours (a socket dropping frames in its filter against the server's "
        "frames/s, netsniff-ng's capture ring against the sled, which keeps every byte)",
        _previous_line(path, r, prev, old),
        "",
        "| figure | measured | previous | change | floor | target | met | details |",
        "|---|--:|--:|--:|--:|--:|:-:|---|",
    ]
    for name, v in sorted(r["ratios"].items()):
        details = ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()
                            if k not in ("ratio", "floor", "kind", "target", "ok"))
        kind = "≤" if v["kind"] == "max" else "≥"
        met = v["ratio"] <= v["target"] if v["kind"] == "max" else v["ratio"] >= v["target"]
        c = changes[name]
        before = UNCHANGED if c.old is None else _fmt(c.old)
        out.append(f"| {name} | {_fmt(v['ratio'])} | {before} | {c.label} "
                   f"| {kind} {v['floor']} | {kind} {v['target']} "
                   f"| {'yes' if met else '**no**'} | {details} |")
    removed = [c.name for c in changes.values() if c.verdict == "removed"]
    if removed:
        out += ["", "In the previous run but not in this one: "
                + ", ".join(f"`{n}`" for n in removed) + "."]
    if prev is not None:
        out += ["", "## Regressions against the previous run", "",
                f"Worse by more than {REGRESSION_PCT:g}% than in `{prev}` though still on the "
                "right side of the floor:", ""]
        worse, failing = _regressions(list(changes.values()))
        out += [f"- {line}" for line in worse]
        if failing:
            out += ["", "Worse and below the floor as well (the run fails on these):", ""]
            out += [f"- {line}" for line in failing]
    if r["measurements"]:
        out += ["", "## Other measurements", ""]
        for name, v in sorted(r["measurements"].items()):
            out.append(f"- {name}: " + ", ".join(f"{k}={_fmt(x)}" for k, x in v.items()))
    fps = r["ratios"].get("server_fps_vs_trafgen", {})
    cpu = r["measurements"].get("server_cpu_per_frame", {})
    if fps and cpu:
        need = LINK_100G / FRAME
        us = cpu.get("server_us", 0.0)
        out += [
            "",
            "## What a 100 Gbit/s link would need (projection, not measured)",
            "",
            f"- A 100 Gbit/s link carries {need / 1e6:.1f} million DATA frames of {FRAME} bytes "
            "per second (payload 1 KiB each).",
            f"- Measured here: {us:.2f} µs of server CPU per DATA frame on veth "
            f"(trafgen: {cpu.get('trafgen_us', 0):.2f} µs), so about {need * us / 1e6:.0f} cores "
            f"at that cost, or {need * cpu.get('trafgen_us', 0) / 1e6:.0f} at trafgen's.",
            "- veth delivers every frame in the sender's context, so these per-frame costs "
            "include the receive side; a real NIC with multiple TX queues would move that "
            "cost off the server. What is projected here is linear scaling across workers "
            "(one socket and queue each), which the 2-worker figure above only partly shows "
            "on a 2-core machine that also runs the clients.",
        ]
    out += _floors_section(path.parent)
    if NOTES.exists():
        out += ["", NOTES.read_text().strip()]
    return "\n".join(out) + "\n"


def newest_self_test(directory: Path) -> Path | None:
    """The newest self-test run in `directory` (bench/run.sh --self-test)."""
    runs = sorted((m[1], f) for f in directory.glob("*.json")
                  if (m := STAMP_NAME.fullmatch(f.name)) and m[3])
    return runs[-1][1] if runs else None


def _floors_section(directory: Path) -> list[str]:
    """Every floor of bench/floors.json with its quick floor, and how it is
    proven to bite: the option that slows the code and what the slowed code
    measured in the newest self-test run, or why no option can."""
    floors = json.loads((HERE / "floors.json").read_text())
    st_path = newest_self_test(directory)
    st = load(st_path)["ratios"] if st_path else {}
    out = ["", "## Floors and their self-test", "",
           "Quick mode (CI) guards each figure within 35% of its target (where this machine "
           "cannot reach a target, what it reaches: see the list after the table). "
           "`bash bench/run.sh --quick --self-test` runs every benchmark with its code made "
           "slower through one of its own options and passes only if each figure so slowed "
           "breaks its quick floor"
           + (f"; the newest self-test run is `{st_path}`." if st_path else "."), "",
           "| figure | target | full floor | quick floor | slowed by | slowed, measured "
           "| caught |", "|---|--:|--:|--:|---|--:|:-:|"]
    for name, f in sorted(floors.items()):
        if name.startswith("_"):
            continue
        sign = "≤" if f["kind"] == "max" else "≥"
        quick = "not measured" if f["quick"] is None else f"{sign} {f['quick']}"
        if "self_test" not in f:
            out.append(f"| {name} | {sign} {f['target']} | {sign} {f['full']} | {quick} "
                       f"| none: {f['no_self_test']} | | |")
            continue
        r = st.get(name)
        measured = _fmt(r["ratio"]) if r else "not run"
        caught = "" if not r else "yes" if not r["ok"] else "**no**"
        out.append(f"| {name} | {sign} {f['target']} | {sign} {f['full']} | {quick} "
                   f"| {f['self_test']} | {measured} | {caught} |")
    unmet = [f"- **{name}** (target {f['target']}): {f['unmet']}"
             for name, f in sorted(floors.items()) if not name.startswith("_") and "unmet" in f]
    if unmet:
        out += ["", "Targets out of this machine's reach, and why:", "", *unmet]
    return out


def compare_text(new_path: Path, old_path: Path | None = None) -> str:
    """The comparison alone, as a plain-text table (for CI logs)."""
    new = load(new_path)
    if old_path is None:
        old_path = previous_run(new_path, new)
        if old_path is None:
            which = "quick" if is_quick(new_path, new) else "committed full"
            return f"{new_path}: no earlier {which} run in {new_path.parent} to compare with\n"
    old = load(old_path)
    changes = compare(new, old)
    head = ("figure", "kind", "previous", "now", "change", "floor", "passes")
    rows = [head]
    floors = new["ratios"]
    for c in changes:
        f = floors.get(c.name, {})
        rows.append((c.name, "≤" if c.kind == "max" else "≥",
                     UNCHANGED if c.old is None else _fmt(c.old),
                     UNCHANGED if c.new is None else _fmt(c.new), c.label,
                     str(f.get("floor", UNCHANGED)),
                     {True: "yes", False: "NO", None: UNCHANGED}[c.ok]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    out = [f"{new_path} ({new.get('date', 'no date')})",
           f"  against {old_path} ({old.get('date', 'no date')})", ""]
    for row in rows:
        out.append("  ".join(cell.ljust(w) if i in (0, 1, 4) else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                   .rstrip())
    worse, failing = _regressions(changes)
    out += ["", f"regressions (worse by more than {REGRESSION_PCT:g}%, still passing the floor):"]
    out += [f"  {line}" for line in worse]
    if failing:
        out += ["worse and below the floor as well (the run fails on these):"]
        out += [f"  {line}" for line in failing]
    return "\n".join(out) + "\n"


USAGE = "usage: report.py RESULTS.json > BENCHMARKS.md | report.py --compare NEW.json [OLD.json]"


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 1 and not argv[0].startswith("-"):
            sys.stdout.write(report(Path(argv[0])))
        elif argv and argv[0] == "--compare" and len(argv) in (2, 3):
            sys.stdout.write(compare_text(Path(argv[1]),
                                          Path(argv[2]) if len(argv) == 3 else None))
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except ReportError as e:
        print(f"report.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
