"""Oxide network boot protocol (ethertype 0x1DE0), as a sans-I/O layer.

Nothing here touches a socket, a thread or a clock: callers feed frames in
and get decisions out, with the time passed as ``now`` (seconds, any epoch).
That keeps the wire format, the server's policy and a model of the OS client
testable in memory, and lets the I/O layers (:mod:`oxboot.serve`,
:mod:`oxboot.sled`) stay thin loops. Those change the state machines only
through their methods (a test scans the tree for assignments).

* :mod:`~oxboot.protocol.wire`: constants, messages, :func:`parse_frame` /
  :func:`pack_frame`, :class:`FrameError`.
* :mod:`~oxboot.protocol.rules`: the OS client's rules: what one READ asks
  for (:func:`due_offsets`), what one DATA carries (:func:`data_extent`,
  :func:`data_frame`), which OFFER it takes (:func:`offer_acceptable`).
* :mod:`~oxboot.protocol.server`: :class:`BootServer` decides what to send.
* :mod:`~oxboot.protocol.client`: :class:`ClientSession`, the OS client.
"""

from oxboot.format import MIN_OFFER_SIZE, NETBOOT_ALIGN
from oxboot.protocol.client import ClientSession, ClientState
from oxboot.protocol.rules import (
    HELLO_INTERVAL,
    RETRANSMIT_AFTER,
    data_extent,
    data_frame,
    due_offsets,
    offer_acceptable,
    ramdisk_capacity,
)
from oxboot.protocol.server import (
    ACTIVE_WINDOW,
    DEFAULT_READ_RATE,
    Action,
    BootServer,
    Ignored,
    SendOffer,
    SendReset,
    ServeData,
    Session,
    SessionFinished,
    SessionStarted,
)
from oxboot.protocol.wire import (
    BROADCAST,
    CHUNK,
    DATA_HDR_LEN,
    DATASET_LEN,
    ETH_HLEN,
    ETHERTYPE,
    HDR_LEN,
    HELLO_TEXT,
    MAGIC,
    MAX_DATA,
    MAX_HELLO,
    MIN_DATA_PAYLOAD,
    OFFER_LEN,
    READ_LEN,
    SLOTS,
    U64_MAX,
    Data,
    Finished,
    Frame,
    FrameError,
    Hello,
    Message,
    MsgType,
    Offer,
    Read,
    Reset,
    check_mac,
    encode_dataset,
    pack_frame,
    parse_frame,
)

__all__ = [
    "ACTIVE_WINDOW", "BROADCAST", "CHUNK", "DATASET_LEN", "DATA_HDR_LEN", "DEFAULT_READ_RATE",
    "ETHERTYPE", "ETH_HLEN", "HDR_LEN", "HELLO_INTERVAL", "HELLO_TEXT", "MAGIC", "MAX_DATA",
    "MAX_HELLO", "MIN_DATA_PAYLOAD", "MIN_OFFER_SIZE", "NETBOOT_ALIGN", "OFFER_LEN",
    "READ_LEN", "RETRANSMIT_AFTER", "SLOTS", "U64_MAX", "Action", "BootServer",
    "ClientSession", "ClientState", "Data", "Finished", "Frame", "FrameError", "Hello",
    "Ignored", "Message", "MsgType", "Offer", "Read", "Reset", "SendOffer", "SendReset",
    "ServeData", "Session", "SessionFinished", "SessionStarted", "check_mac", "data_extent",
    "data_frame", "due_offsets", "encode_dataset", "offer_acceptable", "pack_frame",
    "parse_frame", "ramdisk_capacity",
]
