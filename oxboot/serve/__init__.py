"""The boot server's I/O: serves images over a raw link to many sleds.

:mod:`.loop` (:class:`Server`) moves frames and carries out what the
sans-I/O :class:`~oxboot.protocol.BootServer` decides; :mod:`.images` holds
the images and their versions, :mod:`.events` the event log, :mod:`.policy`
the blocking of flooding hosts, :mod:`.stats` the counters and progress;
:mod:`.receiver` (the C receive loops and policer) and :mod:`.txworkers`
(the transmit threads) wrap the C core's server half.
"""

from oxboot.serve.events import EventLog
from oxboot.serve.images import ImageStore, ServedImage, load_image
from oxboot.serve.loop import DEFAULT_BUSY_POLL, DEFAULT_WORKERS, PROTOCOL_RATE_MARGIN, Server

__all__ = ["DEFAULT_BUSY_POLL", "DEFAULT_WORKERS", "PROTOCOL_RATE_MARGIN", "EventLog",
           "ImageStore", "ServedImage", "Server", "load_image"]
