"""--help and usage errors load none of the heavy machinery: the C core
(cffi), the codec libraries, the build/verify pipelines or their thread
pools. A command's help is what a person runs first, and it must answer at
once (issue 15: under 60 ms); checked here as behaviour, through the modules
a fresh interpreter has loaded, not as a timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Modules the help of an image tool must not import.
HEAVY = ("oxboot._core", "oxboot._native", "_cffi_backend", "cffi", "zstandard", "zlib_ng",
         "isal", "oxboot.codec", "oxboot.build", "oxboot.verify", "oxboot.pipeline",
         "concurrent.futures", "mmap")

PROBE = """
import json, sys
from importlib import import_module
main = import_module(sys.argv[1]).main
try:
    main(sys.argv[2:])
except SystemExit:
    pass
sys.stdout.flush()
sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)))
"""


def loaded(module: str, *argv: str) -> tuple[set[str], str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, module, *argv], capture_output=True,
                          text=True, check=True)
    return set(json.loads(proc.stderr.rpartition("\nMODULES ")[2])), proc.stdout


@pytest.mark.parametrize("module", ["oxboot.cli.mkimage", "oxboot.cli.lookimage"])
@pytest.mark.parametrize("argv", [["--help"], ["--no-such-option"]])
def test_help_and_usage_errors_import_nothing_heavy(module: str, argv: list[str]) -> None:
    modules, out = loaded(module, *argv)
    if argv == ["--help"]:
        assert "usage:" in out  # the help really was printed
    assert module in modules
    assert not modules.intersection(HEAVY), sorted(modules.intersection(HEAVY))


def test_the_probe_sees_heavy_imports() -> None:
    """The check above can fail: a real run loads the C core."""
    modules, _ = loaded("oxboot.cli.lookimage", "/nonexistent.img")
    assert "oxboot._native" in modules and "oxboot.verify" in modules
