"""bootserver: serve boot images to sleds over raw Ethernet (original usage kept)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from oxboot.cli.common import Parser, UsageError, needs_network_core, run
from oxboot.errors import LinkError
from oxboot.link import TX_METHODS, parse_mac
from oxboot.protocol import DEFAULT_READ_RATE
from oxboot.serve import DEFAULT_BUSY_POLL, EventLog, Server
from oxboot.serve.receiver import UNLIMITED_READ_RATE
from oxboot.serve.status import DEFAULT_STATUS_PORT

if TYPE_CHECKING:
    from oxboot.serve.http import StatusListener


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
    p.add_argument("--scratch", metavar="DIR",
                   help="where each image's private, verified copy is kept while it is "
                   "served, inflated if compressed (default: $OXBOOT_SCRATCH or /var/tmp)")
    p.add_argument("--listen", metavar="ADDR:PORT",
                   help="serve /metrics (Prometheus), /status (JSON) and /healthz over HTTP "
                   f"on ADDR:PORT (a bare PORT: 127.0.0.1; e.g. {DEFAULT_STATUS_PORT} or "
                   f"0.0.0.0:{DEFAULT_STATUS_PORT}; default: no listener); "
                   "'oxboot status' shows /status as the live table")
    p.add_argument("--no-table", action="store_true",
                   help="print event lines on a terminal too (by default a terminal gets a "
                   "live table of the sleds, refreshed a few times a second, and the lines "
                   "only when stdout is not a terminal)")
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
    listen = None
    if args.listen is not None:
        from oxboot.serve.http import parse_listen

        try:
            listen = parse_listen(args.listen)
        except ValueError as e:
            raise UsageError(str(e)) from None
    # A terminal gets the live table; its event lines would scroll it away
    # (the table shows the last warnings instead).
    table_mode = not args.json and not args.no_table and sys.stdout.isatty()
    log = EventLog(json_mode=args.json, echo=not table_mode)
    live: dict[str, Server] = {}

    def document() -> dict[str, object]:
        server = live.get("server")
        return server.status.document if server is not None else {}

    listener = table = None
    try:
        if listen is not None:
            # Before the link and the images: a port in use fails at once,
            # and a privileged port is bound before --user drops root.
            listener = _listen(listen, document, log)
        try:
            server = Server(args.link, [args.image_file, *args.image], allow,
                            once=args.single, hello_timeout=args.hello_timeout, log=log,
                            tx_method=args.tx, scratch=args.scratch, workers=args.workers,
                            user=args.user, read_rate=args.read_rate,
                            busy_poll=args.busy_poll / 1e6)
        except LinkError as e:
            raise UsageError(e.strerror or str(e)) from None
        live["server"] = server
        if listener is not None:
            server.status.describe(listen=listener.url)
        server.live_status = listener is not None or table_mode
        if table_mode:
            from oxboot.serve.table import LiveTable

            table = LiveTable(document, sys.stdout).start()
        return server.run()
    finally:
        if table is not None:
            table.stop()
        if listener is not None:
            listener.close()


def _listen(address: tuple[str, int], document: Callable[[], dict[str, object]],
            log: EventLog) -> StatusListener:
    from oxboot.serve.http import StatusListener

    try:
        listener = StatusListener(address, document)
    except OSError as e:
        host, port = address
        raise UsageError(f"--listen {host}:{port}: {e.strerror or e}") from None
    url = listener.url
    log.event("listen", f"{url}/metrics (Prometheus), {url}/status, {url}/healthz",
              url=url, address=listener.address[0], port=listener.address[1])
    return listener


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
