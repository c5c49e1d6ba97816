"""The images a server offers, and their versions.

Uncompressed images are copied, compressed ones (zlib, zstd) inflated, once
into an unlinked temporary file while they are hashed, and served from its
mapping. Every image is verified (SHA-256) before it is first offered. A
session keeps the version it started with, so an image replaced on disk
never mixes two versions within one boot; the next HELLO sees the new file.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from oxboot._native import pointer
from oxboot.format import (
    HEADER_SIZE,
    Header,
    ImageError,
    Warn,
    check_header,
    check_layout,
    header_warnings,
)
from oxboot.protocol import Offer, encode_dataset
from oxboot.serve.events import EventLog
from oxboot.verify import copy_data


@dataclass(eq=False)
class ServedImage:
    """One version of an image file, mapped and verified, ready to serve."""

    path: Path
    header: Header
    size: int
    stamp: tuple[int, int, int, int]  # dev, inode, size, mtime: "same file?"
    _map: mmap.mmap  # the private copy's mapping: keeps `ptr` valid
    ptr: object = field(repr=False)  # cffi uint8_t* to the raw image

    @property
    def offer(self) -> Offer:
        h = self.header
        return Offer(h.target_size, h.image_size, h.sha256, encode_dataset(h.dataset))

    @property
    def name(self) -> str:
        return self.header.image_name or self.path.name


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_image(path: str | os.PathLike[str], scratch: str | None = None) -> ServedImage:
    """Read, check and verify an image for serving (see module docstring).

    The raw image is copied into an unlinked file of our own (in `scratch`,
    default /var/tmp) while it is hashed, and served from a mapping of that
    copy: sessions never see a file that is rewritten, truncated or deleted
    under them, and memory stays page cache, not heap, whatever the size.
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # closed below
    except OSError as e:
        raise ImageError(f"{path}: {e.strerror}") from None
    with f:
        st = os.fstat(f.fileno())
        header = Header.parse(f.read(HEADER_SIZE))
        check_header(header)
        try:
            check_layout(header, st.st_size, raw_tail=True)
        except ImageError as e:
            raise ImageError(f"{path}: {e}") from None
        scratch = scratch or os.environ.get("OXBOOT_SCRATCH") or "/var/tmp"
        with tempfile.TemporaryFile(dir=scratch, prefix="oxboot-serve-") as tmp:
            # Only image_size bytes are ever copied: a longer file's tail is
            # never served.
            try:
                copy_data(f, header, _FileSink(tmp.fileno()))
            except ImageError as e:
                raise ImageError(f"{path}: {e}") from None
            except OSError as e:
                raise ImageError(f"{path}: {e.strerror}") from None
            mm = mmap.mmap(tmp.fileno(), header.image_size, prot=mmap.PROT_READ)
    mm.madvise(mmap.MADV_WILLNEED)
    ptr = pointer(mm)
    return ServedImage(path, header, header.image_size, _stamp(st), mm, ptr)


class _FileSink:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]


def netboot_warnings(image: ServedImage) -> list[str]:
    return [f"{image.path}: {note}"
            for note in header_warnings(image.header, Warn.NETBOOT | Warn.OFFER)]


class ImageStore:
    """The image files a server offers, each in its current version, by slot.

    A slot is an image's index (its OFFER's source MAC, see
    :func:`oxboot.link.image_mac`). The images given at start-up are all
    loaded (and verified), or the server does not start. Later,
    :meth:`current` re-opens a file that changed on disk; an image that can
    no longer be served is ``None`` until its file is fixed. Images come and
    go at runtime too (an image folder, a re-read configuration): :meth:`add`
    loads one into a free slot, :meth:`remove` frees its slot (sessions keep
    the version they hold).
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], scratch: str | None,
                 log: EventLog, *, strict: bool = False,
                 on_new_version: Callable[[int, ServedImage], None] | None = None,
                 required: bool = True) -> None:
        self.paths: list[Path | None] = [Path(p) for p in paths]
        if not self.paths and required:
            raise ImageError("no image to serve")
        self.scratch = scratch
        self.log = log
        self.strict = strict  # a serving error raises (a single boot: -s)
        self.on_new_version = on_new_version
        self.errors = 0
        self.loaded: list[ServedImage] = []
        for p in paths:
            img = load_image(p, scratch)  # raises if it cannot be served
            for note in netboot_warnings(img):
                log.event("warning", note, message=note)
            self.loaded.append(img)
        # None: an image that became unservable since (see _error), or a
        # free slot.
        self.images: list[ServedImage | None] = list(self.loaded)
        if not self.paths:  # none yet (an image folder): slot 0 waits for one
            self.paths.append(None)
            self.images.append(None)
        self._unreadable: set[int] = set()
        # Files add() could not load, as which version: reported once, tried
        # again only once they change.
        self._failed: dict[Path, tuple[int, int, int, int] | None] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def slot_of(self, path: Path) -> int | None:
        """The slot serving `path`, if one does."""
        try:
            return self.paths.index(path)
        except ValueError:
            return None

    def add(self, path: Path, free: Sequence[int]) -> int | None:
        """Load `path` into the first slot of `free` (else a new slot at the
        end); returns the slot, or None, with an ``error`` event the first
        time, if this version of the file cannot be served."""
        try:
            stamp: tuple[int, int, int, int] | None = _stamp(path.stat())
        except OSError:
            stamp = None
        if path in self._failed and self._failed[path] == stamp:
            return None
        try:
            img = load_image(path, self.scratch)
        except (ImageError, OSError, ValueError) as e:
            self._failed[path] = stamp
            self.errors += 1
            message = str(e) if str(path) in str(e) else f"{path}: {e}"
            self.log.event("error", f"cannot serve {message}", image=str(path),
                           message=message)
            return None
        self._failed.pop(path, None)
        for note in netboot_warnings(img):
            self.log.event("warning", note, message=note)
        slot = free[0] if free else len(self.paths)
        if slot == len(self.paths):
            self.paths.append(None)
            self.images.append(None)
        self.paths[slot] = path
        self.images[slot] = img
        self._unreadable.discard(slot)
        return slot

    def remove(self, index: int) -> None:
        """Serve nothing from slot `index` any more (its file is gone from
        the configuration or the folder)."""
        self.paths[index] = None
        self.images[index] = None
        self._unreadable.discard(index)

    def forget_failures(self, keep: Collection[Path]) -> None:
        """Forget the failed files not in `keep` (gone from the folder)."""
        for path in [p for p in self._failed if p not in keep]:
            del self._failed[path]

    def current(self, index: int) -> ServedImage | None:
        """Image `index`, re-opened first if the file changed since it was loaded."""
        path = self.paths[index]
        if path is None:
            return None
        current = self.images[index]
        try:
            st = path.stat()
        except PermissionError:
            # After --user the path may be out of reach: keep serving the
            # verified copy we have (changes cannot be seen; warn once).
            if current is not None and index not in self._unreadable:
                self._unreadable.add(index)
                self.log.event("warning", f"{path}: cannot check it for changes as this user "
                               "(permission denied); serving the copy loaded at start-up",
                               image=str(path))
            return current
        except OSError as e:
            self._error(index, f"{path}: {e.strerror}")
            return None
        if current is not None and _stamp(st) == current.stamp:
            return current
        try:
            img = load_image(path, self.scratch)
        except (ImageError, OSError, ValueError) as e:
            self._error(index, str(e))
            return None
        self.images[index] = img
        if self.on_new_version is not None:
            self.on_new_version(index, img)
        self.log.event("reload", f"{path} changed on disk; new version loaded",
                       image=str(path), sha256=img.header.sha256.hex())
        return img

    def _error(self, index: int, message: str) -> None:
        if self.images[index] is not None:
            self.log.event("error", f"cannot serve {message}", image=str(self.paths[index]),
                           message=message)
        self.images[index] = None
        self.errors += 1
        if self.strict:
            raise ImageError(message)
