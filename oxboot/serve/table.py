"""The live status table: one row per sled, totals, the last warnings.

:func:`render` turns a status document (``/status``, see
:mod:`oxboot.serve.status`) into lines that fit 80 columns; the boot server
shows it on its terminal and ``oxboot status`` shows a running server's.
:class:`LiveTable` redraws it a few times a second on the terminal's
alternate screen, in place (cursor home, each line overwritten, the rest
cleared: nothing is erased first, so nothing flickers), and leaves the last
table on the normal screen when it stops.
"""

from __future__ import annotations

import shutil
import textwrap
import threading
import time
from collections.abc import Callable
from typing import TextIO

#: The table's width: rows are 77 columns, nothing is wider than this.
WIDTH = 80
#: Redraws per second.
REFRESH_SECONDS = 0.25
#: Warnings shown below the table.
SHOWN_WARNINGS = 4

_ROW = "{:<17} {:<10} {:<8} {:>6} {:>5} {:>6} {:>6} {:>5} {:>5}"
HEADER = _ROW.format("SLED", "IMAGE", "STATE", "BYTES", "%", "MB/s", "REASK", "ETA", "LAST")
# Sleds that are doing something come first, then those that ended.
_ORDER = {"booting": 0, "stalled": 1, "offered": 2, "reset": 3, "finished": 4}


def _bytes(n: object) -> str:
    value = float(n) if isinstance(n, int | float) else 0.0
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            if unit == "":
                return f"{value:.0f}"
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
        value /= 1024
    return "?"


def _secs(s: object) -> str:
    if not isinstance(s, int | float):
        return "-"
    if s < 10:
        return f"{s:.1f}s"
    if s < 100:
        return f"{s:.0f}s"
    if s < 6000:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "~"


def _row(s: dict) -> str:
    image = s.get("image")
    offered = s.get("offered") or []
    if isinstance(image, dict):
        name = str(image.get("name", ""))
    elif len(offered) == 1:
        name = str(offered[0])
    else:
        name = f"{len(offered)} images" if offered else "-"
    pct = float(s.get("percent") or 0.0)
    ended = s.get("state") in ("finished", "reset")
    return _ROW.format(
        str(s.get("mac", "?")), _fit(name, 10), str(s.get("state", "?")),
        _bytes(s.get("bytes", 0)), f"{pct:.0f}%" if pct >= 99.95 else f"{pct:.1f}%",
        f"{float(s.get('mbps') or 0):.1f}", str(s.get("reasked", 0)),
        "-" if ended else _secs(s.get("eta")), _secs(s.get("since_last_frame")))


def render(doc: dict, width: int = WIDTH, height: int | None = None) -> list[str]:
    """The table for status document `doc`: at most `width` columns, and
    (given a `height`) at most that many lines, sleds left out counted."""
    width = min(width, WIDTH)
    server = doc.get("server", {})
    totals = doc.get("totals", {})
    images = doc.get("images", [])
    sleds = sorted(doc.get("sleds", []),
                   key=lambda s: (_ORDER.get(s.get("state"), 5), s.get("mac", "")))
    link = f"{server.get('link', '?')} " + (
        "up" if server.get("link_up") else f"DOWN ({server.get('link_problem') or '?'})")
    unloaded = sum(1 for i in images if not i.get("loaded"))
    head = (f"oxboot bootserver on {link} | up {_secs(server.get('uptime'))} | "
            f"{len(images)} image{'s' if len(images) != 1 else ''}"
            + (f" ({unloaded} NOT SERVABLE)" if unloaded else "")
            + (f" | {server['listen']}" if server.get("listen") else ""))
    summary = (f"sleds: {totals.get('booting', 0)} booting, {totals.get('stalled', 0)} stalled, "
               f"{totals.get('finished', 0)} finished, {totals.get('reset', 0)} reset, "
               f"{totals.get('offered', 0)} offered")
    rates = (f"{float(totals.get('mbps') or 0):.1f} MB/s | {totals.get('frames_sent', 0)} frames "
             f"sent | {totals.get('offsets_reasked', 0)} re-asked | "
             f"{totals.get('sources_blocked', 0)} sources blocked")
    warnings = doc.get("warnings", [])[-SHOWN_WARNINGS:]
    tail = [summary, rates]
    if warnings:
        tail.append("last warnings:")
        for w in warnings:
            stamp = time.strftime("%H:%M:%S", time.localtime(float(w.get("time") or 0)))
            # Two lines each at most: a warning's point is in its second half too.
            tail += textwrap.wrap(f" {stamp} {w.get('event')}: {w.get('text')}", width - 1,
                                  subsequent_indent="   ", max_lines=2, placeholder=" ~")
    rows = [_row(s) for s in sleds]
    if height is not None:
        room = max(1, height - 3 - len(tail))
        if len(rows) > room:
            rows = rows[:room - 1] + [f"... and {len(rows) - room + 1} more sleds"]
    if not rows:
        rows = ["(no sled yet)"]
    lines = [head, HEADER, *rows, "-" * min(width - 1, len(HEADER)), *tail]
    return [_fit(line, width - 1) for line in lines]


class LiveTable:
    """Redraw :func:`render` of `document()` on a terminal every
    `interval` seconds, on a thread of its own, until :meth:`stop`."""

    def __init__(self, document: Callable[[], dict | None], stream: TextIO,
                 interval: float = REFRESH_SECONDS) -> None:
        self.document = document
        self.stream = stream
        self.interval = interval
        self.error: str | None = None  # shown above the table (oxboot status)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oxboot-table", daemon=True)
        self._last: list[str] = []
        self._doc: dict | None = None

    def start(self) -> LiveTable:
        # The alternate screen: the shell's screen comes back as it was.
        self.stream.write("\x1b[?1049h\x1b[?25l\x1b[2J")
        self.stream.flush()
        self._thread.start()
        return self

    def _lines(self) -> list[str]:
        size = shutil.get_terminal_size((WIDTH, 24))
        try:
            doc = self.document()
            self.error = None
        except Exception as e:  # any failure is shown over the last table, never fatal
            self.error = str(e)
            doc = None
        if doc:
            self._doc = doc
        doc = self._doc
        lines = render(doc, size.columns, size.lines - (1 if self.error else 0)) if doc else []
        if self.error:
            lines.insert(0, _fit(f"(no fresh status: {self.error})", min(size.columns, WIDTH) - 1))
        return lines

    def draw(self) -> None:
        lines = self._lines()
        if not lines:
            return
        self._last = lines
        # Home, each line over the old one (cleared to its end), then the
        # rest of the screen cleared: one write, no blank frame.
        out = "\x1b[H" + "".join(f"{line}\x1b[K\r\n" for line in lines[:-1])
        out += f"{lines[-1]}\x1b[K\x1b[J"
        self.stream.write(out)
        self.stream.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.draw()
            except (OSError, ValueError):
                return  # the terminal is gone
            self._stop.wait(self.interval)

    def stop(self, final: bool = True) -> None:
        """Back to the normal screen, the last table left on it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        try:
            self.stream.write("\x1b[?25h\x1b[?1049l")
            last = (self._lines() or self._last) if final else []
            if last:
                self.stream.write("\n".join(last) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass
