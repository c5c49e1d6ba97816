"""Running the commands the way a user does, and where things are: the
repository, the golden vectors and their input generator."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


#: The golden vectors, kept in the repository (see vectors/README.md).
VECTORS = ROOT / "tests" / "vectors"
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

