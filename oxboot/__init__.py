"""oxboot: build, inspect and netboot Oxide-style ramdisk boot images.

The public API is imported lazily (PEP 562), so that a command such as
``lookimage`` only pays for the modules it uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "BuildResult": "oxboot.build",
    "build_image": "oxboot.build",
    "Codec": "oxboot.format",
    "Flags": "oxboot.format",
    "Header": "oxboot.format",
    "ImageError": "oxboot.format",
    "VerifyResult": "oxboot.verify",
    "extract_image": "oxboot.verify",
    "read_header": "oxboot.verify",
    "verify_image": "oxboot.verify",
}

__all__ = [
    "BuildResult",
    "Codec",
    "Flags",
    "Header",
    "ImageError",
    "VerifyResult",
    "build_image",
    "extract_image",
    "read_header",
    "verify_image",
]

if TYPE_CHECKING:
    from oxboot.build import BuildResult, build_image
    from oxboot.format import Codec, Flags, Header, ImageError
    from oxboot.verify import VerifyResult, extract_image, read_header, verify_image


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'oxboot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
