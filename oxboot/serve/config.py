"""The boot server's configuration file (``bootserver --config FILE.toml``).

A permanent lab server is described in one TOML file (read with the
standard library's :mod:`tomllib`): the link, the images and which sleds
get which, the image folder, and the options of the command line. It is
read at start-up and again on SIGHUP. Any mistake in it is one
:class:`ConfigError` naming the file, the line and the key, e.g.
``lab.toml:7: read_rate: must be a positive number, not 'fast'``.

Relative paths are relative to the file's own folder, so a configuration
and its images can move together.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from oxboot.link import TX_METHODS, parse_mac

#: Transmit workers by default. One, sending from the receive loop itself:
#: measured on a 2-core machine (BENCHMARKS.md), a second worker thread
#: costs more in hand-offs and GIL traffic than it gains, because on veth
#: the receiving side's work lands on the sending core too. --workers N
#: spreads sleds over N sockets and threads where cores are plentiful.
DEFAULT_WORKERS = 1

#: Keys of the file's top level, and of each [[image]] table.
TOP_KEYS = ("link", "listen", "read_rate", "workers", "user", "image_dir", "tx",
            "busy_poll", "scratch", "image")
IMAGE_KEYS = ("path", "sleds")


class ConfigError(Exception):
    """A configuration file that cannot be used: one line, file:line: key: why."""


@dataclass(frozen=True)
class ImageEntry:
    """One [[image]] table: a file, and the sleds it is for (None: every sled)."""

    path: Path
    sleds: frozenset[bytes] | None


@dataclass(frozen=True)
class ServerConfig:
    """What a configuration file says (None: not set, the default applies)."""

    source: Path
    link: str
    images: tuple[ImageEntry, ...] = ()
    image_dir: Path | None = None
    listen: str | None = None
    read_rate: float | None = None
    workers: int | None = None
    user: str | None = None
    tx: str | None = None
    busy_poll: float | None = None  # microseconds, as --busy-poll
    scratch: str | None = None


class _Lines:
    """Where keys are in the file's text, for messages about their values
    (tomllib reports lines only for syntax errors)."""

    _TABLE = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"^\s*[\"']?([A-Za-z0-9_-]+)[\"']?\s*=")

    def __init__(self, text: str) -> None:
        # (table, its occurrence, key) -> line; a table header is key "".
        self.lines: dict[tuple[str, int, str], int] = {}
        seen: dict[str, int] = {}
        table, nth = "", 0
        for number, line in enumerate(text.splitlines(), 1):
            if (m := self._TABLE.match(line)) is not None:
                table = m.group(1).strip("\"'")
                nth = seen[table] = seen.get(table, -1) + 1
                self.lines.setdefault((table, nth, ""), number)
            elif (m := self._KEY.match(line)) is not None:
                self.lines.setdefault((table, nth, m.group(1)), number)

    def of(self, key: str, table: str = "", nth: int = 0) -> int | None:
        return self.lines.get((table, nth, key)) or self.lines.get((table, nth, ""))


def key_on_line(text: str, line: int) -> str | None:
    """The key a line of TOML sets, if it sets one (for syntax errors)."""
    lines = text.splitlines()
    if 1 <= line <= len(lines) and (m := _Lines._KEY.match(lines[line - 1])) is not None:
        return m.group(1)
    return None


def load_config(path: str | Path) -> ServerConfig:
    """Read and check a configuration file; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (UTF-8)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = int(m.group(1)) if m else None
        key = key_on_line(text, line) if line is not None else None
        where = f"{path}:{line}" if line is not None else str(path)
        raise ConfigError(f"{where}: {key + ': ' if key else ''}not valid TOML: {e}") from None
    return _parse(path, data, _Lines(text))


def _parse(path: Path, data: Mapping[str, object], lines: _Lines) -> ServerConfig:
    def fail(key: str, why: str, table: str = "", nth: int = 0,
             name: str | None = None) -> ConfigError:
        line = lines.of(key, table, nth)
        return ConfigError(f"{path}{f':{line}' if line else ''}: {name or key}: {why}")

    base = path.parent

    def a_path(value: object, key: str, table: str = "", nth: int = 0,
               name: str | None = None) -> Path:
        if not isinstance(value, str) or not value:
            raise fail(key, f"must be a path (a string), not {value!r}", table, nth, name)
        return base / value

    for key in data:
        if key not in TOP_KEYS:
            raise fail(key, f"unknown key (known: {', '.join(TOP_KEYS)})")

    link = data.get("link")
    if link is None:
        raise ConfigError(f"{path}: link: missing (the network interface, e.g. link = "
                          "\"eth1\")")
    if not isinstance(link, str) or not link or "/" in link:
        raise fail("link", f"must be a network interface name, not {link!r}")

    images: list[ImageEntry] = []
    tables = data.get("image", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise fail("image", "must be [[image]] tables")
    seen: set[Path] = set()
    for nth, table in enumerate(tables):
        for key in table:
            if key not in IMAGE_KEYS:
                raise fail(key, f"unknown key in [[image]] (known: {', '.join(IMAGE_KEYS)})",
                           "image", nth, f"image.{key}")
        if "path" not in table:
            raise fail("", "missing its path", "image", nth, "image.path")
        image_path = a_path(table["path"], "path", "image", nth, "image.path")
        if not image_path.is_file():
            raise fail("path", f"no such image file: {image_path}", "image", nth, "image.path")
        if image_path in seen:
            raise fail("path", f"{table['path']!r} is listed twice", "image", nth, "image.path")
        seen.add(image_path)
        sleds: frozenset[bytes] | None = None
        if "sleds" in table:
            raw = table["sleds"]
            if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
                raise fail("sleds", "must be a list of MAC addresses (strings)", "image", nth,
                           "image.sleds")
            try:
                sleds = frozenset(parse_mac(m) for m in raw)
            except ValueError as e:
                raise fail("sleds", str(e), "image", nth, "image.sleds") from None
        images.append(ImageEntry(image_path, sleds))

    image_dir = None
    if "image_dir" in data:
        image_dir = a_path(data["image_dir"], "image_dir")
        if not image_dir.is_dir():
            raise fail("image_dir", f"no such folder: {image_dir}")
    def number(key: str, low: float, low_ok: bool) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not (value >= low if low_ok else value > low) or value == float("inf"):
            what = "a number >= 0" if low_ok else "a positive number"
            raise fail(key, f"must be {what}, not {value!r}")
        return float(value)

    read_rate = number("read_rate", 0, False)
    busy_poll = number("busy_poll", 0, True)
    workers = data.get("workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise fail("workers", f"must be a whole number, at least 1, not {workers!r}")
    tx = data.get("tx")
    if tx is not None and tx not in TX_METHODS:
        raise fail("tx", f"must be one of {', '.join(TX_METHODS)}, not {tx!r}")
    strings = {}
    for key in ("user", "listen", "scratch"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise fail(key, f"must be a string, not {value!r}")
        strings[key] = value
    if strings["user"] is not None and not known_user(strings["user"]):
        raise fail("user", f"no such user: {strings['user']}")
    if strings["listen"] is not None and not _listen_ok(strings["listen"]):
        raise fail("listen", f"must be ADDRESS:PORT (e.g. \"127.0.0.1:9187\"), not "
                   f"{strings['listen']!r}")
    scratch = strings["scratch"]
    if not images and image_dir is None:
        raise ConfigError(f"{path}: image: no image to serve (give [[image]] tables with a "
                          "path, or image_dir)")
    return ServerConfig(
        source=path, link=link, images=tuple(images), image_dir=image_dir,
        listen=strings["listen"], read_rate=read_rate,
        workers=workers, user=strings["user"], tx=tx, busy_poll=busy_poll,
        scratch=str(base / scratch) if scratch is not None else None)


def known_user(user: str) -> bool:
    import pwd

    try:
        pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _listen_ok(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep) and port.isdigit() and 0 < int(port) < 65536
