"""The repository stands alone: a plain clone, with nothing beside it, has
everything its tests need (the golden vectors, the docs they point to).

The clone is of the committed HEAD: uncommitted changes are not in it,
which is the point (what is not committed does not travel)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import ROOT

# Spelled in pieces so that this file does not match itself.
_OUTSIDE = ("..", "/shared")
FORBIDDEN = ["".join(_OUTSIDE), "shared" + "/spec", "shared" + "/vectors"]

#: Variables that would point git or the tests at something else than the
#: clone (an outer sanitizer run, a git hook's repository).
_LEAKY_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
              "PYTHONPATH", "OXBOOT_SANITIZED", "LD_PRELOAD", "ASAN_OPTIONS",
              "UBSAN_OPTIONS", "PYTEST_ADDOPTS")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def _require_checkout() -> None:
    """Skip unless ROOT is the top of a git checkout with a commit."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    top = _run(["git", "rev-parse", "--show-toplevel"], ROOT, 30)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != ROOT:
        pytest.skip(f"{ROOT} is not a git checkout (an sdist or a copy of the tree)")
    if _run(["git", "rev-parse", "--verify", "-q", "HEAD"], ROOT, 30).returncode != 0:
        pytest.skip("the checkout has no commit yet")


def test_no_tracked_file_refers_outside_the_repository() -> None:
    _require_checkout()
    args = ["git", "grep", "-n", "-I", "-F"]
    for pattern in FORBIDDEN:
        args += ["-e", pattern]
    r = _run(args, ROOT, 60)
    # git grep: 1 = no match, 0 = matches (listed), anything else = trouble.
    assert r.returncode == 1, r.stdout or r.stderr


def test_plain_clone_collects_and_passes_the_vector_tests(tmp_path: Path) -> None:
    _require_checkout()
    alone = tmp_path / "alone"
    alone.mkdir()
    clone = alone / "oxboot"
    r = _run(["git", "clone", "-q", str(ROOT), str(clone)], tmp_path, 120)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in alone.iterdir()] == ["oxboot"]  # nothing beside it
    head = _run(["git", "rev-parse", "HEAD"], ROOT, 30).stdout.strip()
    assert _run(["git", "rev-parse", "HEAD"], clone, 30).stdout.strip() == head
    assert (clone / "tests/vectors/manifest.json").is_file()

    r = _run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], clone, 300)
    assert r.returncode == 0, r.stderr[-4000:]

    # The clone's own code, also in the console scripts the tests start
    # (they import oxboot, and PYTHONPATH comes before any installed copy).
    r = _run([sys.executable, "-c", "import oxboot, oxboot._core; "
              "print(oxboot.__file__); print(oxboot._core.__file__)"],
             alone, 60, PYTHONPATH=str(clone))
    assert r.returncode == 0, r.stderr
    for line in r.stdout.split():
        assert Path(line).resolve().is_relative_to(clone.resolve()), r.stdout

    pytest_cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    r = _run([*pytest_cmd, "--collect-only", "-q"], clone, 300, PYTHONPATH=str(clone))
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert re.fullmatch(r"\d+ tests? collected in [\d.]+s", summary), summary
    assert int(summary.split()[0]) > 0

    r = _run([*pytest_cmd, "-q", "tests/test_vectors.py"], clone, 600, PYTHONPATH=str(clone))
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
    assert "error" not in summary, summary
