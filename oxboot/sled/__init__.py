"""The sled emulator: the OS network-boot client over a real link.

:class:`~oxboot.protocol.ClientSession` decides, as the OS client does;
:mod:`.boot` is the loop that sends what it asks for and feeds it what
arrives, :mod:`.rx` the C core's DATA path, :mod:`.ramdisk` the sled's RAM.
"""

from oxboot.sled.boot import RECEIVE_METHODS, NetbootResult, netboot, want_from_image

__all__ = ["RECEIVE_METHODS", "NetbootResult", "netboot", "want_from_image"]
