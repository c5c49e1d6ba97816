"""The server's event log: one line per event on stdout, text or JSON.

While the live table owns the terminal (:mod:`oxboot.serve.table`) the
lines are not printed (they would scroll it away); the table shows the last
warnings instead, which the log keeps either way (also for ``/status``).
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from typing import TextIO

#: Events an operator should see in the table and /status ("last warnings").
WARNING_EVENTS = frozenset({"warning", "error", "lossy_link", "blocked", "link_down"})
#: How many of them are kept.
KEEP_WARNINGS = 16


class EventLog:
    """One line per event on `stream` (text or JSON), unless `echo` is off."""

    def __init__(self, json_mode: bool = False, stream: TextIO | None = None,
                 echo: bool = True) -> None:
        self.json = json_mode
        self.stream = stream if stream is not None else sys.stdout
        self.echo = echo
        # Appended to by the receive threads, read by the table and the HTTP
        # listener: a deque's append and list() are atomic under the GIL.
        self.warnings: deque[dict[str, object]] = deque(maxlen=KEEP_WARNINGS)

    def event(self, kind: str, text: str, **fields: object) -> None:
        now = time.time()
        if kind in WARNING_EVENTS:
            self.warnings.append({"event": kind, "time": round(now, 3), "text": text,
                                  **{k: v for k, v in fields.items()
                                     if k in ("mac", "image", "message")}})
        if not self.echo:
            return
        if self.json:
            line = json.dumps({"event": kind, "time": round(now, 3), **fields},
                              sort_keys=True)
        else:
            line = f"{time.strftime('%H:%M:%S', time.localtime(now))} {kind}: {text}"
        self.stream.write(line + "\n")
        self.stream.flush()
