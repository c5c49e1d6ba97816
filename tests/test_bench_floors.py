"""bench/floors.json is complete and keeps the rules CI's benchmarks rest on:
every figure a benchmark records has a floor, every floor is recorded, a
quick floor sits within 35% of its target (unless the floor says why this
machine cannot reach the target), and each floor either names the
option that proves it bites or says why none can."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
FLOORS = {k: v for k, v in json.loads((BENCH / "floors.json").read_text()).items()
          if not k.startswith("_")}


def recorded() -> set[str]:
    """Every figure name the benchmarks pass to record() (directly, or
    through conftest.vs_hash_or_copy or test_helios.lookimage_vs_original)."""
    names: set[str] = set()
    for path in BENCH.glob("test_*.py"):
        text = path.read_text()
        names |= set(re.findall(
            r'(?:record\(|(?:vs_hash_or_copy|lookimage_vs_original)\(\s*benchmark,)'
            r'\s*"([a-z0-9_]+)"', text))
    return names


def test_every_recorded_figure_has_a_floor_and_every_floor_is_recorded() -> None:
    assert recorded() == set(FLOORS)


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_floor_is_well_formed(name: str) -> None:
    f = FLOORS[name]
    assert f["kind"] in ("min", "max")
    target, full, quick = f["target"], f["full"], f["quick"]
    for limit in (full, quick):
        if limit is None:
            continue
        assert isinstance(limit, int | float)
        if "unmet" in f:
            # A target this machine cannot reach (floors.json says why): the
            # floor guards what is reached, on the lenient side of the target.
            assert len(f["unmet"]) > 40, name
            assert (limit < target) if f["kind"] == "min" else (limit > target), (name, limit)
        elif f["kind"] == "min":
            # A floor at or below its target, and quick mode within 35% of it.
            assert limit >= 0.65 * target, (name, limit, target)
        else:
            assert limit <= 1.35 * target, (name, limit, target)
    # Proven to bite by the self-test, or a sentence saying why it cannot be.
    assert ("self_test" in f) != ("no_self_test" in f), name
    assert len(f.get("self_test") or f.get("no_self_test")) > 10, name
