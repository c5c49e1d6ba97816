"""The emulated sled's RAM: the ramdisk DATA lands in."""

from __future__ import annotations

import mmap

from oxboot.protocol import CHUNK, SLOTS, ramdisk_capacity


def ramdisk(size: int) -> mmap.mmap:
    """The sled's RAM for the image: lazily zero-filled, so only what DATA
    lands on costs memory. Private: a shared anonymous mapping is shmem,
    whose page faults cost more (a 256 MiB boot: ~690 vs ~650 MB/s here).
    When the image is known before the boot, its pages are faulted in
    before the first HELLO (prepared_ramdisk); otherwise the ring receive
    loop faults in each batch's pages in one call as its READ goes out
    (rxring.c: populate), while the server answers. Faulting them all in
    after the OFFER was slower (on the transfer's clock, with nothing to
    overlap), and so were huge pages (a 2 MiB fault here costs as much as
    its 512 small ones, and the first boot stalled on compaction)."""
    return mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE)


#: MADV_POPULATE_WRITE (Linux 5.14); the mmap module of Python 3.11 lacks the name.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def prepared_ramdisk(ramdisk_size: int, data_size: int) -> mmap.mmap | None:
    """A ramdisk for an OFFER of these sizes, the pages DATA will land on
    (up to the 128 KiB batch past data_size) faulted in now. None for sizes
    no OS client accepts (the session will say why)."""
    capacity = ramdisk_capacity(ramdisk_size)
    if not 0 < data_size <= capacity:
        return None
    ram = ramdisk(capacity)
    try:
        batch = SLOTS * CHUNK
        ram.madvise(_MADV_POPULATE_WRITE, 0, min(-(-data_size // batch) * batch, capacity))
    except OSError:
        pass  # an older kernel: DATA faults the pages in as it lands
    return ram
