"""Watching the image folder (``--image-dir``) for files added, replaced or
removed, so that the next HELLO sees them without a restart.

On Linux the kernel tells (inotify, through libc's wrappers by ctypes: no
dependency, no C of our own); elsewhere, or where inotify cannot be had
(its per-user limits reached), the folder's listing is compared instead.
Either way :meth:`DirWatch.changed` is a cheap, non-blocking question the
server asks on each HELLO and once a second; the server then lists the
folder and loads what is new (:func:`image_files`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from pathlib import Path

# <sys/inotify.h>: the events that mean "a file is there, gone or new". A
# file being written (IN_CREATE, IN_MODIFY) is not yet one to load: it
# counts once it is closed or renamed into place.
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000  # the watch is gone (the folder was removed or moved away)
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WATCHED = (IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF)


def image_files(folder: Path) -> list[Path]:
    """The candidate images in `folder`, by name: regular files, not hidden
    (a dot file is where an image is written before it is renamed in)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    out = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name.endswith("~"):
            continue
        try:
            if entry.is_file():  # follows symlinks: a link to an image is one
                out.append(Path(entry.path))
        except OSError:
            continue
    return sorted(out)


def _listing(folder: Path) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for path in image_files(folder):
        try:
            st = path.stat()
        except OSError:
            continue
        out[path.name] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.inotify_init1  # noqa: B018 - present only on Linux
    except (OSError, AttributeError):
        return None
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return libc


class DirWatch:
    """Whether anything in one folder changed since the last question."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fd = -1
        #: Why the listing is compared instead of inotify ("": inotify).
        self.fallback = ""
        libc = _libc()
        if libc is None:
            self.fallback = "no inotify on this system"
        else:
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                self.fallback = f"inotify: {os.strerror(ctypes.get_errno())}"
            elif libc.inotify_add_watch(fd, os.fsencode(folder), WATCHED) < 0:
                code = ctypes.get_errno()
                os.close(fd)
                self.fallback = f"inotify: {os.strerror(code)}"
            else:
                self.fd = fd
        self._last = _listing(folder) if self.fd < 0 else {}

    def changed(self) -> bool:
        """True if something in the folder may have changed since the last
        call (or since the watch began); never blocks."""
        if self.fd < 0:
            now = _listing(self.folder)
            changed, self._last = now != self._last, now
            return changed
        seen = gone = False
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not buf:
                break
            seen = True
            pos = 0
            while pos + 16 <= len(buf):  # struct inotify_event, then its name
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, pos)
                gone |= bool(mask & IN_IGNORED)
                pos += 16 + length
        if gone:
            # No more events will come: compare listings from now on.
            os.close(self.fd)
            self.fd = -1
            self.fallback = f"{self.folder} was removed or moved: its listing is compared"
            self._last = _listing(self.folder)
        return seen

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
