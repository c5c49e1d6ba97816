"""bootserver: serve boot images to sleds over raw Ethernet (original usage
kept), or as a permanent lab server described by a configuration file."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from oxboot.cli.common import Parser, UsageError, fail, run_network_command
from oxboot.errors import LinkError
from oxboot.link import TX_METHODS, parse_mac
from oxboot.protocol import DEFAULT_READ_RATE
from oxboot.protocol.repair import DEFAULT_REPAIR, REPAIR_MODES
from oxboot.serve import DEFAULT_BUSY_POLL, EventLog, Server
from oxboot.serve.config import ConfigError, ServerConfig, known_user, load_config
from oxboot.serve.receiver import UNLIMITED_READ_RATE
from oxboot.serve.status import DEFAULT_STATUS_PORT

if TYPE_CHECKING:
    from oxboot.serve.http import StatusListener

#: Exit status for a configuration file that cannot be used (a usage error
#: of the file, as 2 is for a command line in most tools).
CONFIG_ERROR_STATUS = 2
POSITIONALS = ("LINK", "IMAGE_FILE", "MAC|any")


def build_parser(prog: str = "bootserver") -> Parser:
    p = Parser(prog=prog, usage="%(prog)s [options] LINK IMAGE_FILE MAC|any\n"
               "       %(prog)s [options] --config FILE",
               description="Serve Oxide boot images over raw Ethernet (ethertype 0x1DE0) "
               "to sleds that boot from the network: LINK IMAGE_FILE "
               "MAC|any, or --config FILE for a permanent lab server. SIGHUP re-reads the "
               "configuration (boots in progress go on); SIGTERM and SIGINT stop the "
               "server (exit 0).")
    p.add_argument("--config", metavar="FILE",
                   help="take the link, the images and which sleds get which, and the "
                   "options below from this TOML file (see README, \"Configuration "
                   "file\"), instead of LINK IMAGE_FILE MAC|any; options given on the "
                   "command line win over the file's; a mistake in it: one line naming "
                   "the key and the line, exit status 2")
    p.add_argument("--image-dir", metavar="DIR",
                   help="serve every valid image in DIR too, offered to every sled (unless "
                   "the configuration assigns it); files added, replaced (by rename) or "
                   "removed count from the next HELLO, no restart needed; an invalid one is "
                   "an error event and skipped")
    p.add_argument("-s", "--single", action="store_true",
                   help="exit 0 after the first completed boot; any failure is fatal")
    p.add_argument("-t", "--hello-timeout", type=float, metavar="SECONDS",
                   help="exit non-zero if no HELLO arrives within SECONDS")
    p.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="serve this image too (repeatable); sleds take the one whose "
                   "checksum their boot archive wants")
    p.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    p.add_argument("--tx", choices=TX_METHODS, default=TX_METHODS[0], action=_Given,
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
                   action=_Given,
                   help="frames per second one host may send (default %(default)g: an OS client "
                   "sends one READ per 128 KiB, so ~1 GB/s per sled); a host that goes on "
                   "sending far beyond it, or fills the socket while the server cannot keep "
                   "up, is blocked in the kernel for 2 s, doubling on repeats up to 64 s; "
                   f"above {UNLIMITED_READ_RATE} no host is ever blocked, only its frames "
                   "over the rate are dropped")
    p.add_argument("--busy-poll", type=_non_negative, default=DEFAULT_BUSY_POLL * 1e6,
                   metavar="USEC", action=_Given,
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
    p.add_argument("--listen", metavar="ADDR:PORT",
                   help="serve /metrics (Prometheus), /status (JSON) and /healthz over HTTP "
                   f"on ADDR:PORT (a bare PORT: 127.0.0.1; e.g. {DEFAULT_STATUS_PORT} or "
                   f"0.0.0.0:{DEFAULT_STATUS_PORT}; default: no listener); "
                   "'oxboot status' shows /status as the live table")
    p.add_argument("--no-table", action="store_true",
                   help="print event lines on a terminal too (by default a terminal gets a "
                   "live table of the sleds, refreshed a few times a second, and the lines "
                   "only when stdout is not a terminal)")
    p.add_argument("link", metavar="LINK", nargs="?", help="network interface, e.g. eth1")
    p.add_argument("image_file", metavar="IMAGE_FILE", nargs="?", help="boot image to serve")
    p.add_argument("mac", metavar="MAC|any", nargs="?",
                   help="serve only this host, or every host")
    return p


class _Given(argparse.Action):
    """Store the value, and note that it was given: an option with a default
    that the configuration file may set too wins over it only if given."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def _with_command_line(config: ServerConfig, args: argparse.Namespace) -> ServerConfig:
    """The file's settings, with what the command line gives instead."""
    given = getattr(args, "given", set())

    def pick(key: str, from_file: object) -> object:
        return getattr(args, key) if key in given or from_file is None else from_file

    listen = getattr(args, "listen", None)  # --listen: the status/metrics listener's option
    return dataclasses.replace(
        config,
        image_dir=config.image_dir if args.image_dir is None else Path(args.image_dir),
        listen=config.listen if listen is None else listen,
        read_rate=pick("read_rate", config.read_rate),
        workers=args.workers or config.workers,
        user=args.user or config.user,
        tx=pick("tx", config.tx),
        busy_poll=pick("busy_poll", config.busy_poll),
        scratch=args.scratch or config.scratch)


def _from_config(args: argparse.Namespace) -> ServerConfig:
    given = [name for name, value in zip(POSITIONALS, (args.link, args.image_file, args.mac),
                                         strict=True) if value is not None]
    if given or args.image:
        raise UsageError(f"--config takes the link and the images from the file: give "
                         f"--config FILE or {' '.join(POSITIONALS)}, not both (also got "
                         f"{', '.join(given) or '--image'})")
    if args.user is not None and not known_user(args.user):
        raise UsageError(f"no such user: {args.user}")
    return _with_command_line(load_config(args.config), args)


def _from_arguments(args: argparse.Namespace) -> ServerConfig:
    missing = [name for name, value in zip(POSITIONALS, (args.link, args.image_file, args.mac),
                                           strict=True) if value is None]
    if missing:
        raise UsageError(f"the following arguments are required: {', '.join(missing)} "
                         "(or --config FILE)")
    if args.user is not None and not known_user(args.user):
        raise UsageError(f"no such user: {args.user}")
    if args.image_dir is not None and not os.path.isdir(args.image_dir):
        raise UsageError(f"--image-dir: not a folder: {args.image_dir}")
    return ServerConfig(
        source=Path("."), link=args.link, images=(),
        image_dir=None if args.image_dir is None else Path(args.image_dir),
        listen=getattr(args, "listen", None), read_rate=args.read_rate, workers=args.workers,
        user=args.user, tx=args.tx, busy_poll=args.busy_poll, scratch=args.scratch)


def _body(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.hello_timeout is not None and args.hello_timeout <= 0:
        raise UsageError("-t needs a positive number of seconds")
    allow = None
    try:
        if args.config is not None:
            config = _from_config(args)
            images = [str(e.path) for e in config.images]
            assignments = [e.sleds for e in config.images]
        else:
            config = _from_arguments(args)
            if args.mac != "any":
                try:
                    allow = [parse_mac(args.mac)]
                except ValueError as e:
                    raise UsageError(str(e)) from None
            images = [args.image_file, *args.image]
            assignments = None
    except ConfigError as e:
        return fail(str(e), CONFIG_ERROR_STATUS)

    def reload() -> ServerConfig:  # SIGHUP
        return _with_command_line(load_config(args.config), args)

    listen = None
    if config.listen is not None:
        from oxboot.serve.http import parse_listen

        try:
            listen = parse_listen(config.listen)
        except ValueError as e:
            raise UsageError(str(e)) from None
    # A terminal gets the live table; its event lines would scroll it away
    # (the table shows the last warnings instead).
    table_mode = not args.json and not args.no_table and sys.stdout.isatty()
    log = EventLog(json_mode=args.json, echo=not table_mode)
    live: dict[str, Server] = {}
    assert config.read_rate is not None and config.busy_poll is not None

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
            server = Server(config.link, images, allow, once=args.single,
                            hello_timeout=args.hello_timeout, log=log,
                            tx_method=config.tx or TX_METHODS[0], scratch=config.scratch,
                            workers=config.workers, user=config.user,
                            read_rate=config.read_rate, busy_poll=config.busy_poll / 1e6,
                            assignments=assignments, image_dir=config.image_dir,
                            listen=config.listen, repair=args.repair,
                            reload=reload if args.config is not None else None)
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
    return run_network_command(prog, build_parser, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
