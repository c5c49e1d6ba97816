"""The OS client's rules, and what follows from them for a server.

What a READ asks for (:func:`due_offsets`), what a DATA carries
(:func:`data_extent`, :func:`data_frame`), which OFFER the OS accepts
(:func:`offer_acceptable`) and the ramdisk it makes (:func:`ramdisk_capacity`).
"""

from __future__ import annotations

from oxboot.format import MIN_OFFER_SIZE
from oxboot.protocol.wire import (
    CHUNK,
    DATASET_LEN,
    MIN_DATA_PAYLOAD,
    Data,
    Offer,
    Read,
    pack_frame,
)

# The OS client broadcasts HELLO this often until an OFFER is accepted, and
# asks again for an offset whose DATA has not come after this long.
HELLO_INTERVAL = 4.0
RETRANSMIT_AFTER = 1.0
_PAGE_SIZE = 4096  # the OS rounds the ramdisk up to whole pages


def ramdisk_capacity(ramdisk_size: int) -> int:
    """Size of the ramdisk the OS creates for an OFFER's ramdisk_size."""
    return -(-ramdisk_size // _PAGE_SIZE) * _PAGE_SIZE


def offer_acceptable(offer: Offer, want_sha256: bytes) -> bool:
    """The OS client's acceptance rule for an OFFER (its len already checked)."""
    return (
        len(offer.dataset) == DATASET_LEN
        and offer.dataset[DATASET_LEN - 1] == 0
        and offer.ramdisk_size >= MIN_OFFER_SIZE
        and offer.data_size >= MIN_OFFER_SIZE
        and offer.data_size <= offer.ramdisk_size
        and offer.sha256 == want_sha256
    )


def due_offsets(read: Read) -> list[int]:
    """Offsets a server must answer for one READ, in slot order, each once.

    All 128 slots are scanned because the OS puts each due offset in its own
    slot index (after a loss, ``noffsets = 2`` may mean slots 17 and 90). A
    zero slot is ambiguous; offset 0 can only live in slot 0, and it is due
    exactly when fewer slots are non-zero than ``noffsets`` says.
    """
    nonzero = [slot for slot in read.slots if slot]
    due = list(dict.fromkeys(nonzero))
    if len(nonzero) < read.noffsets:
        due.insert(0, 0)
    return due


def data_extent(image_size: int, offset: int) -> tuple[int, int]:
    """(image bytes to send, payload length after zero padding) for ``offset``.

    Past the end nothing is sent (an EOF reply); a 1..25 byte tail is padded
    to :data:`MIN_DATA_PAYLOAD` so the frame needs no Ethernet padding.
    """
    if image_size < 0 or offset < 0:
        raise ValueError("image_size and offset must be >= 0")
    n = min(CHUNK, image_size - offset) if offset < image_size else 0
    return n, (MIN_DATA_PAYLOAD if 0 < n < MIN_DATA_PAYLOAD else n)


def data_frame(dst: bytes, src: bytes, image: bytes | bytearray | memoryview, offset: int) -> bytes:
    """The DATA frame a server sends for ``offset`` of raw ``image`` bytes."""
    n, length = data_extent(len(image), offset)
    chunk = bytes(image[offset : offset + n]) if n else b""
    return pack_frame(dst, src, Data(offset, chunk + bytes(length - n)))
