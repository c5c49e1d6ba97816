"""oxboot: build, inspect and netboot Oxide-style ramdisk boot images."""

from oxboot.build import BuildResult, build_image
from oxboot.format import Codec, Flags, Header, ImageError
from oxboot.verify import VerifyResult, extract_image, read_header, verify_image

__version__ = "0.1.0"

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
