"""The original tools, rebuilt here to be measured beside ours.

oxidecomputer/boot-image-tools' `mkimage` and `lookimage` are illumos
programs and not on this machine. `bench/original/` rebuilds their data
path in Rust from the format specification with the very crates the golden
vectors were made with (flate2 1.0.25 over miniz_oxide 0.6.2, sha2 0.10.5;
tests/vectors/README.md), taken from Debian's packages (librust-*-dev,
installed by scripts/install-deps.sh) so that no other registry is needed.
Before a benchmark uses them, they must reproduce every stored golden image
byte for byte (compressed ones included: miniz_oxide's level 9 is exact)
and print what the original printed for each: so the work timed is the
original's work, on this machine, in the same run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "original"
VECTORS = HERE.parent / "tests" / "vectors"


@dataclass(frozen=True)
class OriginalTools:
    mkimage: Path
    lookimage: Path


def find_cargo() -> str:
    """cargo on PATH, else rustup's default place (root's shell profile adds
    it, a CI step's PATH may not)."""
    found = shutil.which("cargo") or next(
        (str(p) for p in [Path.home() / ".cargo" / "bin" / "cargo"] if p.exists()), None)
    if found is None:
        raise RuntimeError("cargo is not installed: run scripts/install-deps.sh")
    return found


def build(cache_dir: Path) -> OriginalTools:
    """Build (or reuse the build of) the rebuilt original tools, then check
    them against the golden vectors."""
    target = cache_dir / "original-target"
    proc = subprocess.run(
        [find_cargo(), "build", "--release", "--offline", "--quiet"], cwd=SOURCE,
        env={**os.environ, "CARGO_TARGET_DIR": str(target)}, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"building bench/original failed:\n{proc.stderr[-2000:]}")
    tools = OriginalTools(target / "release" / "mkimage", target / "release" / "lookimage")
    check_against_vectors(tools)
    return tools


def check_against_vectors(tools: OriginalTools) -> int:
    """Every stored image of tests/vectors made again, compared byte for
    byte, and lookimage's output on it compared with the original's;
    returns how many images were compared."""
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    compared = 0
    with tempfile.TemporaryDirectory(prefix="oxboot-original-") as tmp:
        work = Path(tmp)
        for raw in VECTORS.glob("in_*.raw"):
            shutil.copy(raw, work / raw.name)
        # The inputs too large to be stored, made again (and checked) by the
        # vectors' own generator.
        subprocess.run([sys.executable, str(VECTORS / "genraw.py"), "--into", str(work)],
                       check=True, capture_output=True)
        for image in manifest["images"]:
            argv = image["mkimage"]["argv"]
            if image["mkimage"]["exit_status"]:
                continue  # an argument error: its message is not the data path
            mk = subprocess.run([str(tools.mkimage), *argv[1:]], cwd=work, capture_output=True,
                                text=True)
            got = hashlib.sha256((work / image["output_file"]).read_bytes()).hexdigest()
            if (mk.returncode, mk.stdout, got) != (image["mkimage"]["exit_status"],
                                                   image["mkimage"]["stdout"],
                                                   image["output_sha256"]):
                raise RuntimeError(f"the rebuilt original mkimage differs on {image['id']}")
            for look in image["lookimage"]:
                lk = subprocess.run([str(tools.lookimage), *look["argv"][1:]], cwd=work,
                                    capture_output=True, text=True)
                if (lk.returncode, lk.stdout) != (look["exit_status"], look["stdout"]):
                    raise RuntimeError(f"the rebuilt original lookimage differs: {look['command']}")
            compared += 1
    if compared < 14:
        raise RuntimeError(f"only {compared} golden images compared")
    return compared
