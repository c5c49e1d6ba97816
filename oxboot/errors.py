"""The exceptions of a network boot that are not about an image.

Image problems are :class:`oxboot.format.ImageError`. Every command prints
each of these as one ``Error:`` line (oxboot/cli/common.py).
"""

from __future__ import annotations


class BootError(Exception):
    """A network boot cannot go on: no HELLO in time, a transmit failure,
    memory the server cannot get, privileges it cannot drop, a helper
    missing; described in one line."""


class LinkError(OSError):
    """The interface cannot be used (missing, down, no permission)."""
