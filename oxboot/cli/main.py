"""oxboot: one entry point, one subcommand per program."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line summary); modules load only when used, so
# that a quick lookimage does not pay for the boot server's imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "mkimage": ("oxboot.cli.mkimage", "build a boot image from a raw image"),
    "lookimage": ("oxboot.cli.lookimage", "show a boot image's header, verify its data"),
    "extract": ("oxboot.cli.extract", "write the raw image out of a boot image, verified"),
    "bootserver": ("oxboot.cli.bootserver", "serve images to sleds over raw Ethernet"),
    "netboot": ("oxboot.cli.netboot", "boot like a sled: fetch and verify an image"),
    "status": ("oxboot.cli.status", "a running boot server's live table (its /status)"),
    "demo": ("oxboot.cli.demo", "build, serve and netboot an image over a veth pair"),
}


def usage() -> str:
    lines = ["usage: oxboot COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'oxboot COMMAND --help' for a command's options."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The whole ``oxboot`` command line as one argparse parser, for the
    manual page and shell completion. main() does not parse with it: it
    dispatches on the first word itself, so that a command imports only its
    own module; each subcommand here is that module's own parser."""
    from oxboot import __version__
    from oxboot.cli.common import Parser

    p = Parser(prog="oxboot", description="Build, inspect and netboot Oxide ramdisk boot "
               "images. Each command is also installed under its original name where it "
               "has one (mkimage, lookimage, bootserver), with the same options.")
    p.add_argument("--version", action="version", version=f"oxboot {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND", dest="command",
                           parser_class=Parser)
    for name, (module_name, summary) in COMMANDS.items():
        own = importlib.import_module(module_name).build_parser(f"oxboot {name}")
        # parents= copies the module's arguments (its -h included, hence add_help=False).
        sub.add_parser(name, parents=[own], add_help=False, help=summary,
                       description=own.description)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0 if args else 1
    if args[0] == "--version":
        from oxboot import __version__

        sys.stdout.write(f"oxboot {__version__}\n")
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        sys.stderr.write(f"Error: unknown command {args[0]!r} (one of: "
                         f"{', '.join(COMMANDS)}; see 'oxboot --help')\n")
        return 1
    module = importlib.import_module(entry[0])
    return int(module.main(args[1:], prog=f"oxboot {args[0]}"))


if __name__ == "__main__":
    sys.exit(main())
