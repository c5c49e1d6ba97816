"""mkimage: build a boot image from a raw image (original flags kept)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from oxboot.cli.common import Parser, UsageError, emit_json, run, warn
from oxboot.format import DEFAULT_DATASET, MIB, Codec
from oxboot.levels import DEFAULT_ZLIB_LEVEL, DEFAULT_ZSTD_LEVEL, default_threads

# argparse formats help with %, hence %% for a percent sign.
LEVELS_HELP = (
    f"compression level. zlib 1..9 (default {DEFAULT_ZLIB_LEVEL}: the fastest level whose "
    "output stays within 0.5%% of the original mkimage's size). Measured on a 1 GiB ext4 "
    "image of real files, 2 cores, whole mkimage, size against zlib -9: 1 (the fast level, "
    "ISA-L): 529 MB/s +11.2%%; 2: 240 MB/s "
    "+3.5%%; 3: 241 MB/s +2.6%%; 4: 233 MB/s +2.0%%; 5: 203 MB/s +0.4%%; 6: 176 MB/s -0.2%%; "
    "7: 138 MB/s -0.6%%; 8: 79 MB/s -0.9%%; 9: 62 MB/s -0.9%% (the original: 22 MB/s, "
    f"+0.4%%). zstd 1..19 (default {DEFAULT_ZSTD_LEVEL}). Details: bench/codec_survey.md"
)


def build_parser(prog: str = "mkimage") -> Parser:
    p = Parser(prog=prog, description="Build an Oxide ramdisk boot image from a raw image.")
    p.add_argument("-i", "--input", metavar="RAW",
                   help="raw image to read (- for standard input)")
    p.add_argument("-o", "--output", metavar="IMAGE", help="boot image to write")
    p.add_argument("-O", "--checksum-file", metavar="CSUM_FILE",
                   help="also write the 32 raw SHA-256 bytes here (for /boot_image_csum)")
    p.add_argument("-s", "--target-size", metavar="MiB", type=_mib, default=4096,
                   help="ramdisk size in MiB (default 4096)")
    p.add_argument("-N", "--name", default="", help="image name, e.g. a build id")
    p.add_argument("-z", "--compress", action="store_true", help="compress with zlib")
    p.add_argument("--codec", choices=[c.value for c in Codec],
                   help="none, zlib (bootable from disk) or zstd (boot server only)")
    p.add_argument("--level", type=int, metavar="N", help=LEVELS_HELP)
    p.add_argument("--threads", type=int, metavar="N", help=_threads_help())
    p.add_argument("--dataset", default=DEFAULT_DATASET,
                   help=f"ZFS dataset to boot (default {DEFAULT_DATASET})")
    p.add_argument("--pad-netboot", action="store_true",
                   help="pad the raw image with zeros to a multiple of 128 KiB, which "
                   "the OS network-boot client needs to verify it")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    return p


def _threads_help() -> str:
    # The manual page must read the same whatever machine generates it: the
    # generator sets BUILD_MANPAGES_RUNNING, as argparse-manpage's own does.
    one = "; 1: one thread reads, hashes, compresses and writes in turn"
    if os.environ.get("BUILD_MANPAGES_RUNNING"):
        return "compression threads (default: one per core)" + one
    return f"compression threads (default: all {default_threads()} cores)" + one


def _mib(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: whole MiB expected") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: must be positive")
    return value


def _body(args: argparse.Namespace) -> int:
    # The original's words for a missing option.
    if args.input is None:
        raise UsageError("Required option 'i' missing")
    if args.output is None:
        raise UsageError("Required option 'o' missing")
    if args.compress and args.codec not in (None, Codec.ZLIB.value):
        raise UsageError("-z/--compress means --codec zlib")
    # Imported here: --help and usage errors need none of the C core, the
    # codecs or their thread pools (tests/test_cli_startup.py).
    from oxboot.build import build_image

    codec = Codec(args.codec) if args.codec else Codec.ZLIB if args.compress else Codec.NONE
    if args.level is not None and codec is Codec.NONE:
        raise UsageError("--level needs --codec zlib or zstd (or -z)")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    result = build_image(
        args.input, args.output, csum_output=args.checksum_file,
        target_size=args.target_size * MIB, image_name=args.name, dataset=args.dataset,
        codec=codec, level=args.level, threads=args.threads, pad_netboot=args.pad_netboot,
    )
    for note in result.warnings:
        warn(note)
    if args.json:
        emit_json(result.as_dict())
    else:
        # What the original prints, for log scrapers.
        sys.stdout.write("ok, image written!\n")
        if args.checksum_file is not None:
            sys.stdout.write("ok, boot_image_csum file written!\n")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "mkimage") -> int:
    return run(build_parser(prog), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
