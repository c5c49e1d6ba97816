"""oxboot netboot: boot like a sled (the OS client, emulated) and verify."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from oxboot.cli.common import Parser, UsageError, emit_json, fail, run_network_command
from oxboot.errors import LinkError
from oxboot.progress import human
from oxboot.protocol import ClientSession
from oxboot.sled import RECEIVE_METHODS, netboot
from oxboot.verify import read_header as image_header


def build_parser(prog: str = "oxboot netboot") -> Parser:
    p = Parser(prog=prog, description="Emulate a sled booting from the network: send "
               "HELLO, accept the OFFER whose checksum matches, fetch the image exactly as "
               "the OS client does, verify it.")
    p.add_argument("link", metavar="LINK", help="network interface")
    want = p.add_mutually_exclusive_group(required=True)
    want.add_argument("--want-sha256", metavar="HEX",
                      help="the checksum the sled's boot archive holds")
    want.add_argument("--want-image", metavar="IMAGE",
                      help="take the wanted checksum from this image's header (the sled's "
                      "RAM for it is then faulted in before the first HELLO, as a real "
                      "sled's memory is there before it boots: the transfer measures the "
                      "server and the link, not this emulator's page faults)")
    p.add_argument("--save", metavar="RAW", help="write the received raw image here")
    p.add_argument("-t", "--timeout", type=float, metavar="SECONDS",
                   help="give up after SECONDS (default: never)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--receive", choices=RECEIVE_METHODS, default="ring",
                   help="how DATA is received: a PACKET_RX_RING read in place (default) "
                        "or recvmmsg (for diagnosis)")
    return p


def _body(args: argparse.Namespace) -> int:
    if args.want_sha256 is not None:
        try:
            want = bytes.fromhex(args.want_sha256)
        except ValueError:
            want = b""
        if len(want) != 32:
            raise UsageError("--want-sha256 needs 64 hex digits")
        expect = None
    else:
        header = image_header(args.want_image)
        want = header.sha256
        # The OFFER for this image: ramdisk_size = target size, data_size = raw size.
        expect = (header.target_size, header.image_size)
    tty = sys.stderr.isatty()

    def progress(sess: ClientSession, now: float) -> None:
        if tty and sess.offer is not None:
            pct = 100.0 * min(sess.next_offset, sess.offer.data_size) / sess.offer.data_size
            sys.stderr.write(f"\r\x1b[Knetboot: {human(sess.bytes_received)} ({pct:.0f}%)")
            sys.stderr.flush()

    try:
        result = netboot(args.link, want, timeout=args.timeout, save=args.save,
                         on_progress=progress, receive=args.receive, expect=expect)
    except LinkError as e:
        raise UsageError(e.strerror or str(e)) from None
    if tty:
        sys.stderr.write("\r\x1b[K")
    if args.json:
        emit_json(result.as_dict())
    else:
        sys.stdout.write(
            f"{'ok' if result.verified else 'FAILED'}: {human(result.image_size)} from "
            f"{result.server or '(no server)'} in {result.seconds:.2f} s "
            f"({result.mbps:.1f} MB/s), {result.retransmits} retransmissions, "
            f"{result.duplicates} duplicates, state {result.state.value}\n")
    if not result.verified:
        return fail(result.reason or "boot failed")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "oxboot netboot") -> int:
    return run_network_command(prog, build_parser, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
