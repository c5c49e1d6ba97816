"""lookimage: print a boot image's header and verify its data."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from oxboot.cli.common import Parser, UsageError, emit_json, run, thread_count, warn
from oxboot.format import ImageError, check_header, header_warnings


def build_parser(prog: str = "lookimage") -> Parser:
    p = Parser(prog=prog, description="Show a boot image's header and verify its checksum.")
    p.add_argument("-s", "--skip-checksum", action="store_true",
                   help="only read the header; do not read or hash the data")
    p.add_argument("--threads", type=thread_count, metavar="N",
                   help="threads that read, inflate and hash (default: every core); 1: one "
                        "thread does each in turn")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("image", nargs="?", metavar="IMAGE", help="boot image to inspect")
    return p


def _body(args: argparse.Namespace) -> int:
    if args.image is None:
        raise UsageError("which image file do you want to inspect?")
    # Imported here: --help and usage errors need none of the C core
    # (tests/test_cli_startup.py).
    from oxboot.verify import WARNINGS, read_header, verify_image

    header = read_header(args.image)
    for note in header_warnings(header, WARNINGS):
        warn(note)
    if not args.json:
        # Like the original: the header is shown before the data is judged,
        # the ratio only once the sizes it divides are known to be sane.
        sys.stdout.write(header.describe(ratio=False))
        sys.stdout.flush()
        if problems := header.size_problems():
            raise ImageError(problems[0])
        if header.compressed:
            sys.stdout.write(f"ratio = {header.ratio:.2f}x\n")
            sys.stdout.flush()
    if args.skip_checksum:
        check_header(header)
        result = None
    else:
        result = verify_image(args.image, header=header, threads=args.threads)
    if args.json:
        emit_json(result.as_dict() if result else
                  {"path": args.image, "header": header.as_dict(), "checksum_verified": False})
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "lookimage") -> int:
    return run(build_parser(prog), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
