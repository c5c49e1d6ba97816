"""DATA transmit through AF_XDP (csrc/xsk.c) over a real veth pair: the
frames are byte for byte those of ox_tx_data, the UMEM is reused across
calls larger than it, bad arguments and unusable queues fail cleanly.

The sockets are opened inside a lab namespace (setns on this thread, then
back) and used from here; the peer end is read by an AF_PACKET socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import time
from collections.abc import Iterator

import pytest
from support.cbuf import CBuf
from support.frames import DST, SRC, Receiver, expected_frame, image_bytes, tx_offsets

from oxboot._native import ffi, lib
from oxboot.link import af_xdp_unavailable
from oxboot.netlab import Host, Lab, lingering_namespaces

ETHERTYPE = 0x1DE0
CLONE_NEWNET = 0x40000000
SO_RCVBUFFORCE = 33



_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def netns(ns: str) -> Iterator[None]:
    """Run the block in network namespace `ns` (this thread only)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(home)


@pytest.fixture
def veth() -> Iterator[tuple[Host, Host]]:
    why = af_xdp_unavailable()
    if why:
        pytest.skip(why)
    lab = Lab()
    try:
        yield lab.pair()
    finally:
        lab.close()
        assert lingering_namespaces() == []


def _peer_socket(host: Host) -> socket.socket:
    with netns(host.ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        s.bind((host.ifname, ETHERTYPE))
    s.settimeout(20)
    return s


def _open_xsk(host: Host, queue: int = 0, frames: int = 256) -> object:
    with netns(host.ns):
        x = lib.ox_xsk_open(socket.if_nametoindex(host.ifname), queue, frames)
    if x == ffi.NULL:
        code = ffi.errno
        pytest.skip(f"AF_XDP cannot be set up on veth: {os.strerror(code)}")
    return x


def _capture(peer: socket.socket, count: int, send) -> tuple[int, list[bytes]]:
    rx = Receiver(peer, count)
    rx.start()
    n = send()
    rx.join(20)
    assert not rx.is_alive(), f"received only {len(rx.frames)} of {count}"
    assert rx.error is None, rx.error
    return n, rx.frames


def _xsk_send(x: object, image: bytes, offsets: list[int], chunk: int = 1024,
              stats: object = None) -> int:
    st = stats if stats is not None else ffi.new("ox_tx_stats *")
    offs = ffi.new("uint64_t[]", offsets or [0])
    with CBuf(len(image), image) as img, CBuf(6, DST) as d, CBuf(6, SRC) as s:
        return lib.ox_xsk_send_data(x, d.ptr, s.ptr, img.ptr, len(image), offs, len(offsets),
                                    chunk, st)


def test_xsk_frames_equal_sendmmsg_frames(veth: tuple[Host, Host]) -> None:
    srv, peer_host = veth
    size = 200 * 1024 + 300
    image = image_bytes(size)
    offsets = tx_offsets(size, 300)  # every chunk, the end, past it, odd offsets, repeats
    peer = _peer_socket(peer_host)
    x = _open_xsk(srv)
    try:
        with netns(srv.ns):
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            raw.bind((srv.ifname, 0))
        stats = ffi.new("ox_tx_stats *")
        n, via_xsk = _capture(peer, len(offsets), lambda: _xsk_send(x, image, offsets,
                                                                     stats=stats))
        assert n == len(offsets)
        assert stats.frames == len(offsets) and stats.last_errno == 0
        assert stats.bytes == sum(len(f) for f in via_xsk)
        assert stats.syscalls >= 1

        def mmsg() -> int:
            st = ffi.new("ox_tx_stats *")
            offs = ffi.new("uint64_t[]", offsets)
            with CBuf(size, image) as img, CBuf(6, DST) as d, CBuf(6, SRC) as s:
                return lib.ox_tx_data(raw.fileno(), lib.OX_TX_SENDMMSG, d.ptr, s.ptr, img.ptr,
                                      size, offs, len(offsets), 1024, st)

        n, via_mmsg = _capture(peer, len(offsets), mmsg)
        assert n == len(offsets)
        raw.close()
    finally:
        lib.ox_xsk_close(x)
        peer.close()
    assert via_xsk == via_mmsg
    assert via_xsk == [expected_frame(image, o) for o in offsets]


@pytest.mark.parametrize("chunk", [1, 26, 1468])
def test_xsk_reuses_the_umem_across_many_frames(veth: tuple[Host, Host], chunk: int) -> None:
    # 8 chunks of UMEM, 1000 frames in one call and 300 more in another:
    # every chunk is sent, completed and filled again many times over.
    srv, peer_host = veth
    image = image_bytes(5000)
    offsets = [(i * 37) % 5100 for i in range(1000)]
    peer = _peer_socket(peer_host)
    x = _open_xsk(srv, frames=8)
    try:
        n, frames = _capture(peer, 1000, lambda: _xsk_send(x, image, offsets, chunk))
        assert n == 1000
        assert frames == [expected_frame(image, o, chunk) for o in offsets]
        n, frames = _capture(peer, 300, lambda: _xsk_send(x, image, offsets[:300], chunk))
        assert n == 300
        assert frames == [expected_frame(image, o, chunk) for o in offsets[:300]]
    finally:
        lib.ox_xsk_close(x)
        peer.close()


def test_xsk_open_failures(veth: tuple[Host, Host]) -> None:
    srv, _ = veth
    with netns(srv.ns):
        index = socket.if_nametoindex(srv.ifname)
        for frames in (0, 7, 100, 1 << 17):
            assert lib.ox_xsk_open(index, 0, frames) == ffi.NULL
            assert ffi.errno == errno.EINVAL
        assert lib.ox_xsk_open(0, 0, 64) == ffi.NULL
        assert lib.ox_xsk_open(index + 1000, 0, 64) == ffi.NULL  # no such device
        assert lib.ox_xsk_open(index, 7, 64) == ffi.NULL  # veth has one queue
        assert ffi.errno == errno.EINVAL
        x = lib.ox_xsk_open(index, 0, 64)
        assert x != ffi.NULL
        try:
            assert lib.ox_xsk_open(index, 0, 64) == ffi.NULL  # the queue is taken
            assert ffi.errno == errno.EBUSY
        finally:
            lib.ox_xsk_close(x)
        # Closed, the queue is free again once the kernel has released the
        # socket's pool (deferred to a work queue: moments later).
        deadline = time.monotonic() + 30  # generous: a busy machine runs the work late
        while (x := lib.ox_xsk_open(index, 0, 64)) == ffi.NULL and time.monotonic() < deadline:
            assert ffi.errno == errno.EBUSY
            time.sleep(0.01)
        assert x != ffi.NULL
        lib.ox_xsk_close(x)
    lib.ox_xsk_close(ffi.NULL)


def test_xsk_send_bad_arguments(veth: tuple[Host, Host]) -> None:
    srv, peer_host = veth
    image = image_bytes(3000)
    peer = _peer_socket(peer_host)
    peer.setblocking(False)
    x = _open_xsk(srv)
    stats = ffi.new("ox_tx_stats *")
    offs = ffi.new("uint64_t[]", [0])
    try:
        with CBuf(3000, image) as img, CBuf(6, DST) as d, CBuf(6, SRC) as s:
            for chunk in (0, 1469):
                assert lib.ox_xsk_send_data(x, d.ptr, s.ptr, img.ptr, 3000, offs, 1, chunk,
                                            stats) == -1
            assert lib.ox_xsk_send_data(ffi.NULL, d.ptr, s.ptr, img.ptr, 3000, offs, 1, 1024,
                                        stats) == -1
            assert lib.ox_xsk_send_data(x, d.ptr, s.ptr, img.ptr, 3000, offs, 1, 1024,
                                        ffi.NULL) == -1
            assert lib.ox_xsk_send_data(x, d.ptr, s.ptr, img.ptr, 3000, ffi.NULL, 1, 1024,
                                        stats) == -1
            assert lib.ox_xsk_send_data(x, d.ptr, s.ptr, ffi.NULL, 3000, offs, 1, 1024,
                                        stats) == -1
            assert lib.ox_xsk_send_data(x, ffi.NULL, s.ptr, img.ptr, 3000, offs, 1, 1024,
                                        stats) == -1
            assert lib.ox_xsk_send_data(x, d.ptr, ffi.NULL, img.ptr, 3000, offs, 1, 1024,
                                        stats) == -1
            assert lib.ox_xsk_send_data(x, d.ptr, s.ptr, ffi.NULL, 0, ffi.NULL, 0, 1024,
                                        stats) == 0
        assert stats.frames == 0 and stats.syscalls == 0
        with pytest.raises(BlockingIOError):
            peer.recv(4096)  # nothing was sent
    finally:
        lib.ox_xsk_close(x)
        peer.close()
