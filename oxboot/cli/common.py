"""What every command shares: error reporting and signal handling.

Errors are one line on stderr, ``Error: <message>``, with exit status 1,
as the original tools print them; never a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from oxboot.errors import BootError
from oxboot.format import ImageError


class UsageError(Exception):
    """Bad command-line arguments."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one ``Error:`` line and exit status 1."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def thread_count(value: str) -> int:
    """argparse type of --threads: a whole number, at least 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so temporary files are removed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def fail(message: str, status: int = 1) -> int:
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    return status


def needs_network_core(prog: str) -> int | None:
    """For the commands that put frames on a wire: None if this build has
    the network core, else the one-line error (status 1) saying why not."""
    from oxboot._native import HAS_NET

    if HAS_NET:
        return None
    return fail(f"{prog} needs Linux: this oxboot was built without its network core "
                "(raw Ethernet sockets); the image tools work everywhere")


def run_network_command(prog: str, build_parser: Callable[[str], Parser],
                        body: Callable[[argparse.Namespace], int],
                        argv: Sequence[str] | None) -> int:
    """:func:`run` for a command that needs the network core (refused with
    one line where it is not built)."""
    refused = needs_network_core(prog)
    return refused if refused is not None else run(build_parser(prog), body, argv)


def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def emit_json(obj: object) -> None:
    import json  # only for --json: not on every command's start-up path

    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def run(parser: Parser, body: Callable[[argparse.Namespace], int],
        argv: Sequence[str] | None) -> int:
    """Parse `argv` and run `body`, turning every failure into one line."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        try:
            args = parser.parse_args(argv)
        except UsageError as e:
            return fail(str(e))
        return body(args)
    except (ImageError, BootError, UsageError) as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Terminated:
        return fail("terminated", 143)
    except BrokenPipeError:
        return 1
    except OSError as e:
        return fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    finally:
        signal.signal(signal.SIGTERM, previous)
