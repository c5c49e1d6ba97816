"""Shared fixtures (the golden vectors, boot times under faults) and the
run's hooks; the helpers the test files share are in tests/support/."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import PORTABLE, ROOT, SANITIZED, VECTORS, VECTORS_TOOLING, genraw


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
