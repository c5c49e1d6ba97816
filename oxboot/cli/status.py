"""oxboot status: the live table of a running boot server, from its
``--listen`` HTTP address (for a server run by systemd, with no terminal)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

from oxboot.cli.common import Parser, UsageError, emit_json, run
from oxboot.serve.status import DEFAULT_STATUS_PORT
from oxboot.serve.table import REFRESH_SECONDS, WIDTH, LiveTable, render

STATUS_URL = f"http://127.0.0.1:{DEFAULT_STATUS_PORT}/status"
#: Seconds to wait for the server's answer.
FETCH_TIMEOUT = 5.0


def build_parser(prog: str = "oxboot status") -> Parser:
    p = Parser(prog=prog, description="Show a running boot server's live table (one row "
               "per sled, totals, the last warnings), read from the /status of its "
               "'bootserver --listen' address: refreshed in place on a terminal, printed "
               "once with --once or when stdout is not a terminal.")
    p.add_argument("url", nargs="?", default=STATUS_URL, metavar="URL",
                   help="the server's status address (default %(default)s; "
                   "http://HOST:PORT alone means its /status)")
    p.add_argument("--once", action="store_true", help="print the table once and exit")
    p.add_argument("--json", action="store_true",
                   help="print the status document itself (JSON) once and exit")
    p.add_argument("-i", "--interval", type=_interval, default=REFRESH_SECONDS * 2,
                   metavar="SECONDS", help="refresh period on a terminal (default %(default)g)")
    return p


def status_url(text: str) -> str:
    """`text` as the URL of a /status document."""
    if "://" not in text:
        text = f"http://{text}"
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"not an http URL: {text!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/status")
    return urllib.parse.urlunsplit(parts)


def fetch(url: str) -> dict:
    """The status document at `url`; OSError with one line saying why not."""
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        raise OSError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror \
            else e.reason
        raise OSError(f"cannot reach {url}: {reason}") from None
    except (OSError, ValueError) as e:  # a reset connection, a timeout, a bad URL
        raise OSError(f"cannot reach {url}: {e}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or "sleds" not in doc:
        raise OSError(f"{url}: not an oxboot status document")
    return doc


def _body(args: argparse.Namespace) -> int:
    url = status_url(args.url)
    doc = fetch(url)  # a first answer, or one line and exit 1
    if args.json:
        emit_json(doc)
        return 0
    if args.once or not sys.stdout.isatty():
        sys.stdout.write("\n".join(render(doc, WIDTH)) + "\n")
        return 0
    table = LiveTable(lambda: fetch(url), sys.stdout, args.interval).start()
    try:
        threading.Event().wait()  # until Ctrl-C (or SIGTERM)
    except KeyboardInterrupt:
        return 0  # the way to leave a live view: not an error
    finally:
        table.stop()
    return 0


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"not a number of seconds in 0.05..3600: {text!r}")
    return value


def main(argv: Sequence[str] | None = None, prog: str = "oxboot status") -> int:
    return run(build_parser(prog), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
