"""Files that appear whole or not at all.

Every output goes to a temporary file beside its destination, is fsynced,
and is renamed over the destination only once complete; on any failure the
temporary is removed and an existing destination is left untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType

from oxboot._native import writeback
from oxboot.format import ImageError

#: Start writeback every this many bytes, so the final fsync is short.
WRITEBACK_EVERY = 16 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def describe_os_error(e: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """A one-line description of an OSError, naming the file."""
    where = f"{os.fspath(path)}: " if path is not None else ""
    return f"{where}{e.strerror or e}"


class AtomicFile:
    """A binary file written to a temporary beside `path`, renamed on commit.

    Use as a context manager; call :meth:`commit` to publish the file.
    Leaving the block without a commit (an error, a signal) discards it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        directory = self.path.parent
        if self.path.is_dir():
            raise ImageError(f"cannot write {self.path}: it is a directory")
        # Keep the temporary's name within NAME_MAX however long the target's.
        stem = os.fsencode(self.path.name)[:200].decode(errors="ignore")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=directory)
        except OSError as e:
            raise ImageError(f"cannot write {self.path}: {e.strerror}") from None
        self.fd = fd
        self.tmp = Path(tmp)
        self._done = False
        self._unsynced_from = 0
        self._end = 0
        # mkstemp makes the file 0600; give it the mode a plain open would.
        os.fchmod(fd, 0o666 & ~_umask())

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._done:
            self.discard()

    def write_all(self, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
        """Write every byte (at `offset`, or at the current position)."""
        view = memoryview(data).cast("B")
        try:
            while view:
                if offset is None:
                    n = os.write(self.fd, view)
                else:
                    n = os.pwrite(self.fd, view, offset)
                    offset += n
                view = view[n:]
                self._end = offset if offset is not None else self._end + n
        except OSError as e:
            raise ImageError(f"cannot write {self.path}: {e.strerror}") from None
        if self._end - self._unsynced_from >= WRITEBACK_EVERY:
            # Let the disk work while we compute: the data is final.
            writeback(self.fd, self._unsynced_from, self._end - self._unsynced_from)
            self._unsynced_from = self._end

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as e:
            raise ImageError(f"cannot write {self.path}: {e.strerror}") from None

    def commit(self) -> None:
        """fsync, rename over the destination, and fsync the directory."""
        self.sync()
        try:
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.discard()
            raise ImageError(f"cannot write {self.path}: {e.strerror}") from None
        self._done = True
        try:
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            self.tmp.unlink()
        except FileNotFoundError:
            pass
        self._done = True

