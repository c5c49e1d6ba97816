"""bootserver: serve boot images to sleds over raw Ethernet (original usage kept)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from oxboot.cli.common import Parser, UsageError, needs_network_core, run
from oxboot.errors import LinkError
from oxboot.link import TX_METHODS, parse_mac
from oxboot.protocol import DEFAULT_READ_RATE
from oxboot.protocol.repair import DEFAULT_REPAIR, REPAIR_MODES
from oxboot.serve import DEFAULT_BUSY_POLL, EventLog, Server
from oxboot.serve.receiver import UNLIMITED_READ_RATE


def build_parser(prog: str = "bootserver") -> Parser:
    p = Parser(prog=prog, description="Serve Oxide boot images over raw Ethernet "
               "(ethertype 0x1DE0) to sleds that boot from the network.")
    p.add_argument("-s", "--single", action="store_true",
                   help="exit 0 after the first completed boot; any failure is fatal")
    p.add_argument("-t", "--hello-timeout", type=float, metavar="SECONDS",
                   help="exit non-zero if no HELLO arrives within SECONDS")
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="serve this image too (repeatable); sleds take the one whose "
                   "checksum their boot archive wants")
    p.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    p.add_argument("--tx", choices=TX_METHODS, default=TX_METHODS[0],
                   help="DATA transmit mechanism (default auto: AF_XDP where the worker's "
                   "device queue allows, the fastest measured, else sendmmsg; the others "
                   "force one, for diagnosis)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="workers, each with its own receive and transmit sockets and thread "
                   "(the kernel splits sleds over them by MAC; a sled always stays on one); "
                   "default 1: on a small machine the clients and the link need the other "
                   "cores, see BENCHMARKS.md")
    p.add_argument("--user", metavar="NAME",
                   help="after opening the link and the images, drop root and run as NAME "
                   "(images must stay readable by NAME to be reloaded)")
    p.add_argument("--read-rate", type=_positive, default=DEFAULT_READ_RATE, metavar="N",
                   help="frames per second one host may send (default %(default)g: an OS client "
                   "sends one READ per 128 KiB, so ~1 GB/s per sled); a host that goes on "
                   "sending far beyond it, or fills the socket while the server cannot keep "
                   "up, is blocked in the kernel for 2 s, doubling on repeats up to 64 s; "
                   f"above {UNLIMITED_READ_RATE} no host is ever blocked, only its frames "
                   "over the rate are dropped")
    p.add_argument("--busy-poll", type=_non_negative, default=DEFAULT_BUSY_POLL * 1e6,
                   metavar="USEC",
                   help="poll the socket this long without sleeping after each frame while "
                   "one sled boots, for lower latency (default %(default)g; 0: never)")
    p.add_argument("--repair", choices=REPAIR_MODES, default=DEFAULT_REPAIR,
                   help="batch repair (default %(default)s): when a sled's next READ is overdue "
                   "by a few milliseconds over its round trip, a frame was lost, and the DATA of "
                   "its last READ is sent again (at most 4 times, backing off), so that it need "
                   "not wait for its 1 s timer; each copy it already has makes the OS print "
                   "'dropped data packet' on its console (BENCHMARKS.md: about 40 lines per lost "
                   "frame at 1%% loss, 10 at 5%%); off: lost frames wait for the sled's timer")
    p.add_argument("--scratch", metavar="DIR",
                   help="where each image's private, verified copy is kept while it is "
                   "served, inflated if compressed (default: $OXBOOT_SCRATCH or /var/tmp)")
    p.add_argument("link", metavar="LINK", help="network interface, e.g. eth1")
    p.add_argument("image_file", metavar="IMAGE_FILE", help="boot image to serve")
    p.add_argument("mac", metavar="MAC|any", help="serve only this host, or every host")
    return p


def _body(args: argparse.Namespace) -> int:
    if args.mac == "any":
        allow = None
    else:
        try:
            allow = [parse_mac(args.mac)]
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.hello_timeout is not None and args.hello_timeout <= 0:
        raise UsageError("-t needs a positive number of seconds")
    if args.user is not None:
        import pwd

        try:
            pwd.getpwuid(int(args.user)) if args.user.isdigit() else pwd.getpwnam(args.user)
        except KeyError:
            raise UsageError(f"no such user: {args.user}") from None
    log = EventLog(json_mode=args.json)
    try:
        server = Server(args.link, [args.image_file, *args.image], allow, once=args.single,
                        hello_timeout=args.hello_timeout, log=log,
                        tx_method=args.tx, scratch=args.scratch, workers=args.workers,
                        user=args.user, read_rate=args.read_rate,
                        busy_poll=args.busy_poll / 1e6, repair=args.repair)
    except LinkError as e:
        raise UsageError(e.strerror or str(e)) from None
    return server.run()


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a number >= 0: {text!r}")
    return value


def main(argv: Sequence[str] | None = None, prog: str = "bootserver") -> int:
    refused = needs_network_core(prog)
    if refused is not None:
        return refused
    return run(build_parser(prog), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
