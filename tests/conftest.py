"""Shared fixtures: the golden vectors of the original tools, and helpers
to run the commands the way a user does."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The golden vectors, kept in the repository (see vectors/README.md).
VECTORS = Path(__file__).resolve().parent / "vectors"
#: Files in VECTORS that are not vector data.
VECTORS_TOOLING = frozenset({"README.md", "genraw.py", ".gitattributes", ".gitignore"})


def _load_genraw() -> ModuleType:
    # By path: tests/vectors is a folder of data, not a package.
    spec = importlib.util.spec_from_file_location("genraw", VECTORS / "genraw.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("genraw", module)
    spec.loader.exec_module(module)
    return module


#: The vectors' deterministic input generator (tests/vectors/genraw.py).
genraw = _load_genraw()


def vector_manifest() -> dict:
    """manifest.json of the vectors, for parametrizing at collection time."""
    return json.loads((VECTORS / "manifest.json").read_text())


def pytest_sessionstart(session: pytest.Session) -> None:
    import oxboot._core

    core = Path(oxboot._core.__file__).resolve()
    if SANITIZED and (not core.is_relative_to(ROOT) or b"__asan_init" not in core.read_bytes()):
        raise pytest.UsageError(f"sanitizer run imported an uninstrumented C core: {core}")
    if PORTABLE and (not core.is_relative_to(ROOT) or oxboot._core.lib.OX_HAS_NET):
        raise pytest.UsageError(f"portable run imported a C core with the network part: {core}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "net: needs the network core (Linux; not in an OXBOOT_PORTABLE=1 build)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from oxboot._native import HAS_NET

    if HAS_NET:
        return
    skip = pytest.mark.skip(reason="the network core is not built here (portable build)")
    for item in items:
        if item.get_closest_marker("net") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vectors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the vector data (tests write beside it and run
    the tools in it), with the files that are not stored rebuilt by
    genraw, which checks each against its recorded SHA-256."""
    dst = tmp_path_factory.mktemp("vectors")
    for p in VECTORS.iterdir():
        if p.is_file() and p.name not in VECTORS_TOOLING:
            shutil.copyfile(p, dst / p.name)
    genraw.rebuild(dst, VECTORS)
    return dst


@pytest.fixture(scope="session")
def manifest(vectors: Path) -> dict:
    return json.loads((vectors / "manifest.json").read_text())


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str


SANITIZED = os.environ.get("OXBOOT_SANITIZED") == "1"
# A run against a core built with OXBOOT_PORTABLE=1 (scripts/portable-check.sh).
PORTABLE = os.environ.get("OXBOOT_PORTABLE") == "1"
_MODULES = {"mkimage": "mkimage", "lookimage": "lookimage", "bootserver": "bootserver",
            "oxboot": "main"}


def command(name: str) -> list[str]:
    """How to start console script `name`: the installed script, or, in the
    sanitizer and portable runs, the module from the tree on PYTHONPATH."""
    if SANITIZED or PORTABLE:
        return [sys.executable, "-m", f"oxboot.cli.{_MODULES[name]}"]
    # Beside the interpreter first: version-manager shims on PATH are slow.
    beside = Path(sys.executable).parent / name
    exe = str(beside) if beside.exists() else shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed (pip install .)")
    return [exe]


def run_cli(args: list[str], cwd: Path | None = None, stdin: bytes | None = None,
            timeout: float = 300) -> Run:
    """Run a console script (mkimage, lookimage, oxboot, ...) as a user would."""
    p = subprocess.run([*command(args[0]), *args[1:]], cwd=cwd, input=stdin,
                       capture_output=True, timeout=timeout)
    return Run(p.returncode, p.stdout.decode(), p.stderr.decode())


def one_line_error(r: Run) -> None:
    """The contract for bad input: non-zero, one 'Error:' line, no traceback."""
    assert r.status != 0, r
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr


# ---- boot times under faults, shown at the end of every run ----------------------

_BOOT_TIMES: list[tuple[str, str]] = []


@pytest.fixture
def boot_times(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a line (a boot time under some fault) for the summary that
    pytest prints at the end of the run, also with -q, where the output of
    passing tests is hidden."""

    def record(line: str) -> None:
        print(f"\n{line}")  # as it happens, with -s
        _BOOT_TIMES.append((request.node.name, line))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _BOOT_TIMES:
        return
    terminalreporter.section("boot times under faults", sep="-")
    for name, line in _BOOT_TIMES:
        terminalreporter.write_line(f"{line}  [{name}]")
