"""The server's event log: one line per event on stdout, text or JSON, and
the progress table below it on a terminal."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO


class EventLog:
    """One line per event on stdout (text or JSON), progress on a tty."""

    def __init__(self, json_mode: bool = False, stream: TextIO | None = None,
                 progress: bool | None = None) -> None:
        self.json = json_mode
        self.stream = stream if stream is not None else sys.stdout
        self.progress = (not json_mode and sys.stderr.isatty()) if progress is None else progress

    _shown = 0  # progress lines on screen below the log

    def show_progress(self, rows: list[str]) -> None:
        """A table of sleds below the log, redrawn in place once a second."""
        out = ["\x1b[1A\x1b[2K"] * self._shown  # erase the previous table
        limit = 16
        lines = rows[:limit] + ([f"... and {len(rows) - limit} more sleds"]
                                if len(rows) > limit else [])
        out += [f"\r\x1b[2K{line}\n" for line in lines]
        self._shown = len(lines)
        sys.stderr.write("".join(out))
        sys.stderr.flush()

    def event(self, kind: str, text: str, **fields: object) -> None:
        if self.json:
            line = json.dumps({"event": kind, "time": round(time.time(), 3), **fields},
                              sort_keys=True)
        else:
            line = f"{time.strftime('%H:%M:%S')} {kind}: {text}"
        if self.progress and self._shown:
            # Events scroll above the progress table: clear it, log, and let
            # the next tick draw it again.
            sys.stderr.write("\x1b[1A\x1b[2K" * self._shown)
            sys.stderr.flush()
            self._shown = 0
        self.stream.write(line + "\n")
        self.stream.flush()
