"""extract: write the raw image held by a boot image, verified."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from oxboot.cli.common import Parser, emit_json, run, thread_count, warn
from oxboot.verify import extract_image


def build_parser(prog: str = "oxboot extract") -> Parser:
    p = Parser(prog=prog, description="Write the raw image of a boot image (verified, "
               "atomically: nothing is written unless the checksum matches).")
    p.add_argument("image", metavar="IMAGE", help="boot image to read")
    p.add_argument("-o", "--output", metavar="RAW", required=True, help="raw image to write")
    p.add_argument("--threads", type=thread_count, metavar="N",
                   help="threads that read, inflate and hash (default: every core); 1: one "
                        "thread does each in turn")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    return p


def _body(args: argparse.Namespace) -> int:
    result = extract_image(args.image, args.output, threads=args.threads)
    for note in result.warnings:
        warn(note)
    if args.json:
        out = result.as_dict()
        out["output"] = args.output
        emit_json(out)
    else:
        sys.stdout.write(f"ok, {result.header.image_size} bytes written to {args.output}\n")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "oxboot extract") -> int:
    return run(build_parser(prog), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
