"""The image set of a boot server: which images are served, from which
slot and MAC, to which sleds; the image folder; new versions; and a
configuration file read again (SIGHUP).

A mixin of :class:`~oxboot.serve.loop.Server` (its attributes are the
server's): the loop moves frames, this module decides what is on offer.
Images are given in slots, each offered from a MAC of its own; an image
that is no longer wanted leaves its slot, which another takes once no
session can still READ from its MAC expecting the old image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from oxboot.link import RawLink, image_mac, mac_str
from oxboot.progress import human
from oxboot.protocol import BootServer, Offer
from oxboot.serve.config import DEFAULT_WORKERS, ConfigError, ImageEntry, ServerConfig
from oxboot.serve.events import EventLog
from oxboot.serve.images import ImageStore, ServedImage
from oxboot.serve.stats import SledState
from oxboot.serve.status import StatusBoard
from oxboot.serve.txworkers import TxPool
from oxboot.serve.watch import DirWatch, image_files


def norm(path: str | os.PathLike[str]) -> Path:
    """One spelling per file, to tell whether two paths are the same image."""
    return Path(os.path.abspath(path))


class ImageCatalog:
    """What is on offer (see the module docstring)."""

    # The server's, used here.
    log: EventLog
    listen: str | None
    busy_poll: float
    pool: TxPool
    _read_rate: float
    _reloader: Callable[[], ServerConfig] | None
    _apply_read_rate: Callable[[float], None]
    _tx_method: str
    _user: str | None
    link: RawLink
    macs: list[bytes]
    proto: BootServer
    status: StatusBoard
    store: ImageStore
    sleds: dict[bytes, SledState]
    _offered: dict[tuple[bytes, int], ServedImage]
    _plan: Sequence[ImageEntry]
    _image_dir: Path | None
    _watch: DirWatch | None

    def _image_event(self, i: int, img: ServedImage) -> None:
        assigned = self.proto.assignments[i] if hasattr(self, "proto") else None
        sleds = sorted(mac_str(m) for m in assigned) if assigned is not None else None
        self.log.event("image", f"{img.path} ({human(img.size)}, sha256 "
                       f"{img.header.sha256.hex()[:16]}…) offered from "
                       f"{mac_str(self.macs[i])}"
                       + (f" to {', '.join(sleds) or 'no sled'}" if sleds is not None else ""),
                       image=str(img.path), index=i, mac=mac_str(self.macs[i]),
                       size=img.size, sha256=img.header.sha256.hex(), sleds=sleds)

    def _new_version(self, index: int, img: ServedImage) -> None:
        # Only after start-up: the protocol layer is made from the first ones.
        if hasattr(self, "proto"):
            self.proto.replace_offer(index, img.offer)
            self.status.image_loaded(index, img)

    def _slot_of(self, path: Path) -> int | None:
        for i, p in enumerate(self.store.paths):
            if p is not None and norm(p) == path:
                return i
        return None

    def _wanted(self) -> dict[Path, frozenset[bytes] | None]:
        """The images to serve now, and whom each is for: the configured
        ones, then the image folder's (for every sled unless configured)."""
        wanted = {e.path: e.sleds for e in self._plan}
        if self._image_dir is not None:
            for path in image_files(self._image_dir):
                wanted.setdefault(norm(path), None)
        return wanted

    def _offers(self) -> list[Offer | None]:
        return [None if img is None else img.offer for img in self.store.images]

    def _assignments(self, wanted: dict[Path, frozenset[bytes] | None],
                     ) -> list[frozenset[bytes] | None]:
        return [None if p is None else wanted.get(norm(p)) for p in self.store.paths]

    def _update_images(self) -> None:
        """Make the served set what :meth:`_wanted` says (with the lock):
        images no longer wanted stop being offered (their boots in progress
        go on), new ones are loaded into free slots, each with a MAC of its
        own, and the protocol layer gets the new table."""
        wanted = self._wanted()
        if self._image_dir is not None:
            self.store.forget_failures(wanted)
        for i, path in enumerate(self.store.paths):
            if path is not None and norm(path) not in wanted:
                self.store.remove(i)
                self.log.event("removed", f"{path} no longer offered (boots of it in "
                               "progress go on)", image=str(path), index=i)
        # A slot is free for another image once no session can still READ
        # from its MAC expecting the old one.
        busy = (self.proto.slots_in_use() | {s.index for s in self.sleds.values()}
                | {k[1] for k in self._offered})
        added = []
        for path in wanted:
            if self._slot_of(path) is not None:
                continue
            free = [i for i, q in enumerate(self.store.paths) if q is None and i not in busy]
            slot = self.store.add(path, free)
            if slot is None:
                continue
            busy.add(slot)
            while len(self.macs) < len(self.store):
                mac = image_mac(self.link.mac, len(self.macs))
                self.link.add_unicast(mac)  # its READs must reach us
                self.macs.append(mac)
            added.append(slot)
        self.proto.set_images(self._offers(), self.macs, self._assignments(wanted))
        for slot in added:
            img = self.store.images[slot]
            if img is not None:
                self.status.image_loaded(slot, img)
                self._image_event(slot, img)

    def _refresh_images(self) -> None:
        """On a HELLO and once a second: take in what changed in the image
        folder (with the lock)."""
        if self._watch is not None and self._watch.changed():
            self._update_images()

    def _replan(self, config: ServerConfig) -> None:
        """Serve what a re-read configuration lists, and its image folder
        (the set changes at the next :meth:`_update_images`)."""
        self._plan = tuple(ImageEntry(norm(e.path), e.sleds) for e in config.images)
        image_dir = norm(config.image_dir) if config.image_dir is not None else None
        if image_dir != self._image_dir:
            if self._watch is not None:
                self._watch.close()
            self._image_dir = image_dir
            self._watch = DirWatch(image_dir) if image_dir is not None else None

    def _reload(self) -> None:
        """SIGHUP: re-read the configuration (with the lock)."""
        if self._reloader is None:
            self.log.event("warning", "SIGHUP: no configuration file to re-read (see "
                           "--config); the image folder is read again",
                           message="no configuration file")
            self._update_images()
            return
        try:
            config = self._reloader()
        except ConfigError as e:
            self.log.event("error", f"configuration not re-read, the previous one stays: {e}",
                           message=str(e))
            return
        self._replan(config)
        if config.read_rate is not None and config.read_rate != self._read_rate:
            self._apply_read_rate(config.read_rate)
        if config.busy_poll is not None:
            self.busy_poll = config.busy_poll / 1e6
        restart = [key for key, now, then in (
            ("link", config.link, self.link.ifname), ("listen", config.listen, self.listen),
            ("workers", config.workers or DEFAULT_WORKERS, len(self.pool.workers)),
            ("tx", config.tx or "auto", self._tx_method), ("user", config.user, self._user),
            ("scratch", config.scratch, self.store.scratch)) if now != then]
        if restart:
            self.log.event("warning", f"{config.source}: {', '.join(restart)} changed: "
                           "takes effect after a restart", message="restart needed",
                           keys=restart)
        self._update_images()
        served = sum(1 for img in self.store.images if img is not None)
        self.log.event("config", f"{config.source} re-read: {served} images served",
                       path=str(config.source), images=served)
