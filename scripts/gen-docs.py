#!/usr/bin/env python3
"""Generate the manual pages (man/*.1, man/*.8) and the bash completion
(completion/bash/*) from the commands' argparse parsers, with the
hand-written sections of man/pages.toml.

    python3 scripts/gen-docs.py           write them
    python3 scripts/gen-docs.py --check   exit 1, with a diff, if a committed
                                          file is not what the parsers give
    --out DIR                             under DIR instead of this tree

Needs argparse-manpage and shtab (the `test` extra) and this tree's oxboot
importable (its C core built: pip install -e . or build_ext --inplace).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "man" / "pages.toml"
COMPLETION = ROOT / "completion" / "bash"

# argparse wraps help to the terminal's width. Roff fills the text itself,
# and a break argparse puts after a hyphen ("network-boot") would show as a
# space: make the width so large that argparse never wraps, and fixed, so
# that the pages do not depend on who generates them. argparse-manpage sets
# BUILD_MANPAGES_RUNNING while it loads a parser; parsers use it to leave
# out facts of this machine (mkimage's core count).
os.environ["COLUMNS"] = "10000"
os.environ["BUILD_MANPAGES_RUNNING"] = "TRUE"
# The parsers of this tree, not of an installed oxboot.
sys.path.insert(0, str(ROOT))

# The man(7) macros a page may use; any other line starting with "." or "'"
# would be taken by roff as an (unknown) request.
MACROS = {"TH", "SH", "SS", "TP", "PP", "B", "I", "BR", "IR", "RS", "RE", "EX", "EE",
          "nf", "fi", "UR", "UE"}
# Argument metavars that name files or directories, for completion.
FILE_METAVARS = {"RAW", "IMAGE", "IMAGE_FILE", "FILE", "CSUM_FILE"}
DIR_METAVARS = {"DIR"}
BASH_PREAMBLE = """\
# Network interfaces, for LINK.
_oxboot_links() {
  compgen -W "$(ls /sys/class/net 2>/dev/null)" -- "$1"
}

# A MAC address is typed; "any" is the one word.
_oxboot_mac_any() {
  compgen -W "any" -- "$1"
}
"""


def _parser(spec: str) -> argparse.ArgumentParser:
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)()


def _roff_safe(page: str) -> str:
    out = []
    section = ""
    for line in page.splitlines():
        if line.startswith(".SH"):
            section = line
        elif section == ".SH SYNOPSIS" and not line.startswith("."):
            # argparse-manpage leaves the usage line's hyphens bare, which
            # groff may print as typographic hyphens: options could then not
            # be copied from the page.
            line = re.sub(r"(?<!\\)-", r"\\-", line)
        if line.startswith("'"):
            line = "\\&" + line  # wrapped help text that begins with a quote
        elif line.startswith("."):
            name = re.match(r"\.(\S*)", line)[1]  # type: ignore[index]
            if name not in MACROS:
                raise SystemExit(f"gen-docs: a line would be read as roff request "
                                 f".{name}: {line!r}")
        out.append(line)
    return "\n".join(out) + "\n"


def manpage(name: str, spec: dict, config: dict, version: str) -> str:
    from argparse_manpage.manpage import Manpage

    parser = _parser(spec["parser"])
    if parser._positionals._group_actions:
        # Operands get their own heading rather than none (argparse-manpage's
        # default for "positional arguments").
        parser._positionals.title = "arguments"
    page = Manpage(parser, format=spec.get("format", "pretty"))
    page.date = config["date"]
    page.source = f"oxboot {version}"
    page.manual = config["manual"]
    page.section = spec["section"]
    page.description = spec["summary"]
    for extra in spec.get("sections", []):
        page.add_section(extra["heading"], "=", extra["text"].strip())
    return _roff_safe(str(page))


def _annotate(parser: argparse.ArgumentParser) -> None:
    """Tell shtab what each argument completes to, by its metavar."""
    import shtab

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _annotate(sub)
            continue
        metavar = action.metavar if isinstance(action.metavar, str) else None
        if metavar in FILE_METAVARS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif metavar in DIR_METAVARS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif metavar == "LINK":
            action.complete = {"bash": "_oxboot_links"}  # type: ignore[attr-defined]
        elif metavar == "MAC|any":
            action.complete = {"bash": "_oxboot_mac_any"}  # type: ignore[attr-defined]


def completion(spec: dict) -> str:
    import shtab

    parser = _parser(spec["parser"])
    _annotate(parser)
    return shtab.complete(parser, shell="bash", preamble=BASH_PREAMBLE).rstrip("\n") + "\n"


def outputs() -> dict[Path, str]:
    """Every generated file and what it must hold."""
    from oxboot import __version__

    config = tomllib.loads(PAGES.read_text())
    files: dict[Path, str] = {}
    for name, spec in config["pages"].items():
        files[ROOT / "man" / f"{name}.{spec['section']}"] = manpage(name, spec, config,
                                                                     __version__)
        files[COMPLETION / name] = completion(spec)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="compare with the committed files instead of writing them")
    ap.add_argument("--out", type=Path, default=ROOT, metavar="DIR",
                    help="the tree holding man/ and completion/ (default: this one)")
    args = ap.parse_args(argv)
    stale = []
    for where, text in outputs().items():
        rel = where.relative_to(ROOT)
        path = args.out / rel
        old = path.read_text() if path.is_file() else ""
        if old == text:
            continue
        if args.check:
            stale.append(str(rel))
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(keepends=True), text.splitlines(keepends=True),
                f"a/{rel}", f"b/{rel}"))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            print(f"wrote {rel}")
    if stale:
        print(f"gen-docs: out of date: {', '.join(stale)}; run python3 scripts/gen-docs.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
