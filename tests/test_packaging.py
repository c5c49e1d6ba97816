"""Packaging: ``python -m oxboot`` is ``oxboot``; the sdist holds what a
packager needs, no build output, and installs into a fresh venv whose
commands work; the binary wheel passes scripts/wheel-check.sh.

The sdist and wheel tests fetch build and run-time dependencies through pip
as configured; they skip (saying so) only when pip reports that it cannot
reach a package index.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support.cli import ROOT, SANITIZED, run_cli

from oxboot import __version__

# What pip prints when there is no network, as opposed to a real failure.
OFFLINE = re.compile(r"Failed to establish a new connection|Temporary failure in name "
                     r"resolution|Network is unreachable|NewConnectionError|"
                     r"ConnectTimeoutError|No route to host")
PREFIX = f"oxboot-{__version__}/"
# Build output that must never travel in an sdist.
JUNK = re.compile(r"(^|/)(__pycache__|\.hypothesis|build|dist)/|\.(so|o|pyc|pyo)$|"
                  r"^oxboot/_core\.c$|^(oxboot|tests)/.*\.egg-info(/|$)")
# The parts of the tree a packager needs, checked file by file against git.
SHIPPED_DIRS = ("csrc/", "oxboot/", "tests/", "docs/", "man/", "completion/", "contrib/")

packaging = pytest.mark.skipif(
    SANITIZED, reason="packaging builds its own C core; the sanitizer run checks the code")


def _clean_env() -> dict[str, str]:
    """The environment minus what would make a venv import this tree."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS"):
        env.pop(var, None)
    return env


def _online(cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
    """Run a step that may fetch packages; skip if pip found no network."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env())
    if p.returncode != 0:
        out = p.stdout + p.stderr
        if OFFLINE.search(out):
            pytest.skip(f"{what}: no package index reachable ({OFFLINE.search(out)[0]})")
        pytest.fail(f"{what} failed ({p.returncode}):\n{out[-4000:]}")
    return p


# ---- python -m oxboot ---------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["--help"], ["--version"], ["no-such-command"],
                                  ["mkimage"], ["lookimage", "--help"],
                                  ["bootserver", "--help"]])
def test_python_m_oxboot_is_oxboot(args: list[str]) -> None:
    want = run_cli(["oxboot", *args])
    got = subprocess.run([sys.executable, "-m", "oxboot", *args], capture_output=True,
                         text=True)
    assert (got.returncode, got.stdout, got.stderr) == (want.status, want.stdout, want.stderr)


def test_python_m_oxboot_builds_and_checks(tmp_path: Path) -> None:
    raw = tmp_path / "in.raw"
    raw.write_bytes(bytes(range(256)) * 2048)
    me = [sys.executable, "-m", "oxboot"]
    mk = subprocess.run([*me, "mkimage", "-i", str(raw), "-o", str(tmp_path / "a.img"), "-z"],
                        capture_output=True, text=True)
    assert (mk.returncode, mk.stdout) == (0, "ok, image written!\n"), mk.stderr
    look = subprocess.run([*me, "lookimage", "--json", str(tmp_path / "a.img")],
                          capture_output=True, text=True)
    assert look.returncode == 0, look.stderr
    out = json.loads(look.stdout)
    assert out["checksum_verified"] is True
    assert out["header"]["sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()


# ---- the sdist ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    _online([sys.executable, "-m", "build", "--sdist", "-o", str(out), str(ROOT)],
            "python -m build --sdist")
    (path,) = out.glob("oxboot-*.tar.gz")
    return path


@pytest.fixture(scope="session")
def sdist_tree(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist-tree")
    with tarfile.open(sdist) as tar:
        tar.extractall(out, filter="data")
    return out / PREFIX.rstrip("/")


def _git_files() -> list[str] | None:
    p = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True)
    if p.returncode != 0:
        return None  # not a checkout (e.g. the unpacked sdist itself)
    return [f for f in p.stdout.decode().split("\0") if f and (ROOT / f).is_file()]


@packaging
def test_sdist_holds_what_a_packager_needs(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = {m.name.removeprefix(PREFIX) for m in tar.getmembers() if m.isfile()}
    needed = {"LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in",
              "csrc/oxboot.h", "csrc/_ffi_build.py", "tests/conftest.py",
              "scripts/install-deps.sh", "scripts/wheel-check.sh",
              *(f"csrc/{p.name}" for p in (ROOT / "csrc").glob("*.c"))}
    assert not needed - names
    tracked = _git_files()
    if tracked is not None:
        missing = [f for f in tracked if f.startswith(SHIPPED_DIRS) and f not in names]
        assert not missing, f"tracked files left out of the sdist: {missing}"
    if (ROOT / "tests/vectors/manifest.json").is_file():
        assert "tests/vectors/manifest.json" in names
    junk = sorted(n for n in names if JUNK.search(n))
    assert not junk, f"build output in the sdist: {junk}"


def _venv(where: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, env=_clean_env())
    return where / "bin"


@packaging
def test_sdist_installs_into_a_fresh_venv(sdist: Path, sdist_tree: Path,
                                          tmp_path: Path) -> None:
    bin_ = _venv(tmp_path / "venv")
    _online([str(bin_ / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "--root-user-action=ignore", str(sdist)], "pip install of the sdist")
    work = tmp_path / "run"  # away from the source tree
    work.mkdir()

    def run(*argv: str, cwd: Path = work) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_ / argv[0]), *argv[1:]], cwd=cwd, capture_output=True,
                              text=True, env=_clean_env())

    where = run("python", "-c", "import oxboot._core as c; print(c.__file__)")
    assert where.stdout.startswith(str(tmp_path / "venv")), where
    raw = os.urandom(256 * 1024) + bytes(768 * 1024)
    (work / "in.raw").write_bytes(raw)
    mk = run("mkimage", "-i", "in.raw", "-o", "out.img", "-O", "out.csum", "-z", "-N", "sdist")
    assert (mk.returncode, mk.stdout, mk.stderr) == (
        0, "ok, image written!\nok, boot_image_csum file written!\n", "")
    assert (work / "out.csum").read_bytes() == hashlib.sha256(raw).digest()
    look = run("lookimage", "out.img")
    assert look.returncode == 0, look.stderr
    assert f"image sum = {hashlib.sha256(raw).hexdigest()}\n" in look.stdout
    assert "image name = sdist\nflags = 0x1 (COMPRESSED)\n" in look.stdout
    assert run("bootserver", "--help").stdout.startswith("usage: bootserver")

    # The original tools' own lookimage results, on the small vectors the
    # sdist carries.
    vectors = sdist_tree / "tests" / "vectors"
    if not (ROOT / "tests/vectors/manifest.json").is_file():
        return
    manifest = json.loads((vectors / "manifest.json").read_text())
    cases = [case for img in manifest["images"] if img["stored"] == "full"
             and (vectors / img["stored_file"]).stat().st_size <= 64 * 1024
             for case in img["lookimage"]]
    assert cases
    for case in cases:
        argv = shlex.split(case["command"])
        r = run(*argv, cwd=vectors)
        assert (r.returncode, r.stdout, r.stderr) == (
            case["exit_status"], case["stdout"], case["stderr"]), case["command"]


# ---- the binary wheel ---------------------------------------------------------------


@packaging
@pytest.mark.skipif(os.geteuid() != 0, reason="wheel-check hides headers in a mount namespace")
def test_binary_wheel_installs_without_a_compiler(sdist: Path, tmp_path: Path) -> None:
    env = {**_clean_env(), "OXBOOT_SDIST": str(sdist)}
    p = subprocess.run(["bash", str(ROOT / "scripts/wheel-check.sh"), str(tmp_path / "w")],
                       capture_output=True, text=True, env=env)
    out = p.stdout + p.stderr
    if p.returncode != 0 and OFFLINE.search(out):
        pytest.skip(f"wheel-check: no package index reachable ({OFFLINE.search(out)[0]})")
    assert p.returncode == 0, out[-4000:]
    summary = dict(line.split(": ", 1) for line in p.stdout.splitlines()
                   if line.split(": ", 1)[0] in ("wheel", "size", "tag", "floor"))
    tag = summary["tag"]
    assert re.fullmatch(r"manylinux_2_\d+_x86_64|manylinux_2_\d+_aarch64", tag), tag
    assert summary["wheel"] == f"oxboot-{__version__}-cp311-abi3-{tag}.whl"
    # The check really looked at the vendored libraries and ran the tools.
    assert re.search(r"mapped: \S+/oxboot\.libs/libcrypto-[0-9a-f]+\.so", p.stdout)
    assert re.search(r"mapped: \S+/oxboot\.libs/libdeflate-[0-9a-f]+\.so", p.stdout)
    assert "ran: mkimage -z, lookimage" in p.stdout
    print(f"\nbinary wheel: {summary['wheel']}, {int(summary['size'])} bytes; "
          f"glibc floor: {summary['floor']}")
