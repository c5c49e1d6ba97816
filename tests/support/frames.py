"""Frames built by hand (not by oxboot.protocol), to check the C core's
against: the expected DATA frame for an offset, recognisable image bytes, a
receiving thread, and the offsets of a transmit test."""

from __future__ import annotations

import socket
import struct
import threading

U64 = (1 << 64) - 1
ETHERTYPE = 0x1DE0
MAGIC = 0x1DE12345
T_DATA = 0x9104
ETH_HLEN = 14
HDR_LEN = 12
DATA_HLEN = ETH_HLEN + HDR_LEN + 8  # 34
MAX_DATA = 1468
MIN_PAYLOAD = 26
DST = bytes.fromhex("021122334455")
SRC = bytes.fromhex("02aabbccddee")


def image_bytes(size: int) -> bytes:
    """Distinct non-zero bytes, so that misplaced copies and zero padding show."""
    return bytes((i * 7 + 1) % 251 + 1 for i in range(size))


def expected_frame(image: bytes, offset: int, chunk: int = 1024, dst: bytes = DST,
                   src: bytes = SRC) -> bytes:
    """The DATA frame for `offset`, built from PROTOCOL rules in pure Python."""
    take = min(chunk, max(0, len(image) - offset))
    payload = image[offset:offset + take]
    if 0 < take < MIN_PAYLOAD:
        payload += bytes(MIN_PAYLOAD - take)
    return (dst + src + struct.pack(">H", ETHERTYPE)
            + struct.pack(">III", MAGIC, T_DATA, 8 + len(payload))
            + struct.pack(">Q", offset) + payload)


class Receiver(threading.Thread):
    """Collect `count` datagrams from `sock` on a thread of its own."""

    def __init__(self, sock: socket.socket, count: int) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.count = count
        self.frames: list[bytes] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while len(self.frames) < self.count:
                self.frames.append(self.sock.recv(4096))
        except BaseException as e:  # reported by the test
            self.error = e


def tx_offsets(size: int, count: int = 300) -> list[int]:
    # Every chunk of the image, then the end, past the end and odd offsets,
    # out of order, with repeats: the batches are not just a sequential read.
    offs = list(range(0, size, 1024))
    offs += [size, size + 1, U64, size - 1, size - 25, size - 26, 1, 1023, 1025]
    while len(offs) < count:
        offs.append((len(offs) * 7919) % (size + 2048))
    return offs[:count]

