"""The manual pages (man/) and bash completion (completion/bash/) are what
scripts/gen-docs.py makes from the parsers, so they cannot drift from the
commands; the pages render without a warning; the completion completes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import ROOT, SANITIZED

from oxboot.cli.main import COMMANDS
from oxboot.link import TX_METHODS

# The pages come from the parsers, not the C core; and the sanitizer run's
# preloaded ASan runtime would abort groff's own C++ (not ours to check).
pytestmark = pytest.mark.skipif(SANITIZED, reason="no C core in the pages; ASan would check groff")

GEN = ROOT / "scripts" / "gen-docs.py"
PAGES = {"mkimage": "man/mkimage.1", "lookimage": "man/lookimage.1",
         "bootserver": "man/bootserver.8", "oxboot": "man/oxboot.1"}
HAND_WRITTEN = ("EXIT STATUS", "EXAMPLES", "SEE ALSO")


def _gen(*args: str) -> subprocess.CompletedProcess[str]:
    # A process of its own: the generator fixes COLUMNS and sets
    # BUILD_MANPAGES_RUNNING for itself, which must not leak into this one.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "BUILD_MANPAGES_RUNNING")}
    return subprocess.run([sys.executable, str(GEN), *args], capture_output=True, text=True,
                          env=env)


def test_committed_pages_and_completion_are_generated() -> None:
    r = _gen("--check")
    assert r.returncode == 0, f"{r.stderr}\n{r.stdout[-6000:]}"


def test_drift_is_caught(tmp_path: Path) -> None:
    """--check compares every file: a changed page, a changed completion
    file and a missing one are each reported."""
    for rel in ("man", "completion"):
        shutil.copytree(ROOT / rel, tmp_path / rel)
    (tmp_path / "man/bootserver.8").write_text(
        (ROOT / "man/bootserver.8").read_text().replace("\\-\\-read\\-rate", "\\-\\-rate"))
    with (tmp_path / "completion/bash/mkimage").open("a") as f:
        f.write("# edited by hand\n")
    (tmp_path / "man/lookimage.1").unlink()
    r = _gen("--check", "--out", str(tmp_path))
    assert r.returncode == 1
    stale = r.stderr.split("out of date: ", 1)[1].split(";")[0].split(", ")
    assert sorted(stale) == ["completion/bash/mkimage", "man/bootserver.8", "man/lookimage.1"]
    assert "-\\fB\\-\\-rate\\fR" in r.stdout and "+\\fB\\-\\-read\\-rate\\fR" in r.stdout


def test_pages_name_every_option() -> None:
    """Belt and braces beside the drift test: every option string of every
    command is in its page."""
    from oxboot.cli import bootserver, lookimage, mkimage

    for name, module in (("mkimage", mkimage), ("lookimage", lookimage),
                         ("bootserver", bootserver)):
        page = (ROOT / PAGES[name]).read_text()
        for action in module.build_parser()._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert f"\\fB{opt.replace('-', chr(92) + '-')}\\fR" in page, (name, opt)
    oxboot = (ROOT / PAGES["oxboot"]).read_text()
    for name in COMMANDS:
        assert f".SS \\fBoxboot {name}\\fR" in oxboot


def _warnings(page: Path) -> str:
    """What groff and man-db say about a page: nothing for a clean one."""
    for tool in ("groff", "man"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not installed (scripts/install-deps.sh installs groff-base "
                        "and man-db)")
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": "0"}
    groff = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True,
                           text=True, env=env)
    man = subprocess.run(["man", "--warnings=all", "-l", str(page)], capture_output=True,
                         text=True, env=env)
    assert groff.returncode == 0 and man.returncode == 0, (groff, man)
    return groff.stderr + man.stderr


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_without_warnings(name: str) -> None:
    page = ROOT / PAGES[name]
    assert _warnings(page) == ""
    text = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                          env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}).stdout
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", *HAND_WRITTEN):
        assert f"\n{heading}\n" in text, heading
    assert text.splitlines()[0].split()[0] == f"{name.upper()}({page.suffix[1:]})"


def test_the_warning_check_sees_warnings(tmp_path: Path) -> None:
    """The rendering test would notice a broken page."""
    bad = tmp_path / "bad.1"
    bad.write_text((ROOT / PAGES["lookimage"]).read_text()
                   + ".XY not a macro\n\\fQbad font\\fR\n")
    assert _warnings(bad) != ""


def _complete(command: str, *words: str) -> list[str]:
    """COMPREPLY of `command`'s completion for the command line `words`,
    the last being the word under the cursor."""
    script = (f'source "{ROOT}/completion/bash/{command}"\n'
              f'COMP_WORDS=({command} {" ".join(repr(w) for w in words)})\n'
              f"COMP_CWORD={len(words)}\n"
              f"_shtab_{command}\n"
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_completion_scripts_parse() -> None:
    for command in PAGES:
        r = subprocess.run(["bash", "-n", str(ROOT / "completion/bash" / command)],
                           capture_output=True, text=True)
        assert r.returncode == 0, (command, r.stderr)


def test_completion_completes() -> None:
    assert _complete("mkimage", "--pad") == ["--pad-netboot"]
    assert _complete("mkimage", "--codec", "") == ["none", "zlib", "zstd"]
    assert _complete("oxboot", "") == list(COMMANDS)
    assert _complete("oxboot", "bootserver", "--tx", "") == list(TX_METHODS)
    assert _complete("bootserver", "--tx", "") == list(TX_METHODS)
    assert "lo" in _complete("bootserver", "l")  # LINK: the interfaces
    assert _complete("bootserver", "lo", "ramdisk.img", "a") == ["any"]
    assert "--skip-checksum" in _complete("lookimage", "--s")
