"""The boot image header: layout, versions and the rules the OS enforces.

This module is the one place that knows the on-disk layout (see
``docs/format.md``): a 4096-byte little-endian header followed by the data.
It is pure Python and portable; it never touches the data region.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

MAGIC = 0x1DEB0075
HEADER_SIZE = 4096
VERSION = 2
DEFAULT_DATASET = "rpool/ROOT/ramdisk"
NAME_FIELD = 128  # dataset and image name fields; the last byte must stay NUL
MIB = 1 << 20
GIB = 1 << 30
MAX_IMAGE_SIZE = 4 * GIB  # the OS refuses larger ramdisks
MIN_IMAGE_SIZE = 4096  # ... and smaller ones
DEFAULT_TARGET_SIZE = 4 * GIB
#: The OS network-boot client hashes a multiple of this many bytes (128
#: slots of 1 KiB), so only images of such a size verify after a netboot.
NETBOOT_ALIGN = 128 * 1024
#: ... and ignores OFFERs of images or ramdisks smaller than this.
MIN_OFFER_SIZE = 1 * MIB

# v2: magic, version, flags, data_size, image_size, target_size, sha256,
# dataset, image_name; the rest of the 4096 bytes is zero.
_V2 = struct.Struct("<IIQQQQ32s128s128s")
# v1: magic, version, image_size, target_size, sha256, dataset.
_V1 = struct.Struct("<IIQQ32s128s")
_PREFIX = struct.Struct("<II")


class Flags(enum.IntFlag):
    """Header flag bits. The OS defines only COMPRESSED (zlib)."""

    COMPRESSED = 0x1
    #: oxboot extension: data is one zstd frame. Only meaningful while
    #: COMPRESSED is clear: with bit 0 set the OS inflates with zlib, so
    #: that is what the data must be.
    ZSTD = 0x2


KNOWN_FLAGS = Flags.COMPRESSED | Flags.ZSTD


class ImageError(Exception):
    """A problem with an image or its input, described in one line."""


class Codec(enum.StrEnum):
    NONE = "none"
    ZLIB = "zlib"
    ZSTD = "zstd"


def _encode_name(what: str, value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) >= NAME_FIELD:
        # The original panics here; the OS needs a terminating NUL.
        raise ImageError(
            f"{what} is {len(raw)} bytes; at most {NAME_FIELD - 1} fit the header"
        )
    if b"\0" in raw:
        raise ImageError(f"{what} must not contain NUL bytes")
    return raw


def _decode_name(what: str, raw: bytes) -> str:
    # The original trims NULs at both ends and insists on UTF-8.
    text = raw.strip(b"\0")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as e:
        lead = len(raw) - len(raw.lstrip(b"\0"))
        where = lead + e.start
        raise ImageError(f"{what} is not valid UTF-8 (byte {where} of the field)") from None


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded image header (either version).

    For version 1 headers, ``flags`` is 0, ``data_size`` equals
    ``image_size`` and ``image_name`` is empty: v1 had neither.
    """

    image_size: int
    sha256: bytes
    target_size: int = DEFAULT_TARGET_SIZE
    data_size: int = -1  # -1: same as image_size
    flags: int = 0
    dataset: str = DEFAULT_DATASET
    image_name: str = ""
    version: int = VERSION
    #: True when byte 127 of the dataset field on disk is NUL (the OS rule).
    dataset_terminated: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        if self.data_size == -1:
            object.__setattr__(self, "data_size", self.image_size)

    # ---- derived views --------------------------------------------------

    @property
    def known_flags(self) -> Flags:
        """The defined flag bits, as the original prints them."""
        if self.flags & Flags.COMPRESSED:
            return Flags.COMPRESSED
        return Flags(self.flags & KNOWN_FLAGS)

    @property
    def undefined_flags(self) -> int:
        """Bits set in ``flags`` that no reader gives a meaning to."""
        return self.flags & ~int(self.known_flags)

    @property
    def codec(self) -> Codec:
        known = self.known_flags
        if known & Flags.COMPRESSED:
            return Codec.ZLIB
        if known & Flags.ZSTD:
            return Codec.ZSTD
        return Codec.NONE

    @property
    def compressed(self) -> bool:
        return self.codec is not Codec.NONE

    @property
    def ratio(self) -> float:
        return self.image_size / self.data_size

    # ---- bytes ----------------------------------------------------------

    def pack(self) -> bytes:
        """The 4096 header bytes, exactly as the original mkimage writes them."""
        if len(self.sha256) != 32:
            raise ImageError("sha256 must be 32 bytes")
        for value in (self.data_size, self.image_size, self.target_size, self.flags):
            if not 0 <= value < 1 << 64:
                raise ImageError(f"header field out of range: {value}")
        dataset = _encode_name("dataset name", self.dataset)
        if self.version == 1:
            if self.flags or self.data_size != self.image_size or self.image_name:
                raise ImageError("version 1 headers have no flags, data size or image name")
            head = _V1.pack(MAGIC, 1, self.image_size, self.target_size, self.sha256, dataset)
        elif self.version == VERSION:
            name = _encode_name("image name", self.image_name)
            head = _V2.pack(
                MAGIC, VERSION, self.flags, self.data_size, self.image_size,
                self.target_size, self.sha256, dataset, name,
            )
        else:
            raise ImageError(f"cannot write header version {self.version}")
        return head.ljust(HEADER_SIZE, b"\0")

    @classmethod
    def parse(cls, buf: bytes | bytearray | memoryview) -> Header:
        """Decode a header, checking what the original lookimage checks
        before it prints anything (magic, version, sizes vs target, UTF-8).

        The OS's further rules are in :meth:`problems`.
        """
        buf = bytes(buf[:HEADER_SIZE])
        if len(buf) < HEADER_SIZE:
            raise ImageError(
                f"file is {len(buf)} bytes, shorter than the {HEADER_SIZE}-byte header"
            )
        magic, version = _PREFIX.unpack_from(buf)
        if magic != MAGIC:
            raise ImageError(f"wrong magic: {magic:x} != expected {MAGIC:x}")
        if version == VERSION:
            (_, _, flags, data_size, image_size, target_size, sha, dataset_raw,
             name_raw) = _V2.unpack_from(buf)
            name = _decode_name("image name", name_raw)
        elif version == 1:
            _, _, image_size, target_size, sha, dataset_raw = _V1.unpack_from(buf)
            flags, data_size, name = 0, image_size, ""
        else:
            raise ImageError(f"wrong version: {version} != expected {VERSION}")
        if image_size > target_size:
            raise ImageError(f"image size {image_size} > target size {target_size}")
        return cls(
            image_size=image_size,
            sha256=sha,
            target_size=target_size,
            data_size=data_size,
            flags=flags,
            dataset=_decode_name("dataset name", dataset_raw),
            image_name=name,
            version=version,
            dataset_terminated=dataset_raw[-1] == 0,
        )

    def size_problems(self) -> list[str]:
        """The original lookimage's data-size checks, in its order and words."""
        out: list[str] = []
        if self.data_size == 0:
            out.append("data size is 0")
        if self.image_size < self.data_size:
            out.append(f"image size {self.image_size} < data size {self.data_size}")
        return out

    def problems(self) -> list[str]:
        """Every rule of the original lookimage and of the OS this header
        breaks, most basic first; empty when it is bootable."""
        out = self.size_problems()
        # The OS's rules (docs/format.md, "What the OS accepts").
        if self.image_size > MAX_IMAGE_SIZE:
            out.append(f"image size {self.image_size} is over the OS limit of 4 GiB")
        if self.image_size < MIN_IMAGE_SIZE:
            out.append(f"image size {self.image_size} is under the OS minimum of 4096 bytes")
        if not self.dataset_terminated:
            out.append("dataset name is not NUL-terminated (byte 127 is not zero)")
        return out

    def describe(self, ratio: bool = True) -> str:
        """The text the original lookimage prints, line for line.

        The original prints the ``ratio`` line only once the data sizes have
        passed its checks; ``ratio=False`` leaves it out for that reason.
        """
        known = self.known_flags
        names = " | ".join(f.name for f in Flags if f & known) or "(empty)"
        lines = [
            f"image name = {self.image_name}",
            f"flags = {int(known):#x} ({names})",
            f"data size = {self.data_size}",
            f"image size = {self.image_size}",
            f"target size = {self.target_size}",
            f"image sum = {self.sha256.hex()}",
            f"dataset name = {self.dataset}",
        ]
        if ratio and self.compressed and self.data_size:
            lines.append(f"ratio = {self.ratio:.2f}x")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view of every field."""
        return {
            "version": self.version,
            "flags": self.flags,
            "codec": str(self.codec),
            "data_size": self.data_size,
            "image_size": self.image_size,
            "target_size": self.target_size,
            "sha256": self.sha256.hex(),
            "dataset": self.dataset,
            "image_name": self.image_name,
        }


def check_header(header: Header) -> None:
    """Raise the first rule the header breaks (original's, then the OS's)."""
    problems = header.problems()
    if problems:
        raise ImageError(problems[0])


def check_layout(header: Header, file_size: int, *, raw_tail: bool = False) -> None:
    """Raise if a file of `file_size` bytes does not hold exactly the
    ``data_size`` bytes of data `header` announces after its 4096 bytes.

    A longer file is refused too, as the original lookimage refuses it,
    unless `raw_tail` lets an uncompressed image have a tail: the boot
    server reads ``data_size`` bytes of it and never serves the rest. After
    a zlib or zstd stream, extra bytes are always refused.
    """
    have = file_size - HEADER_SIZE
    if header.codec is Codec.NONE:
        if have < header.data_size or (have > header.data_size and not raw_tail):
            # The original's words.
            raise ImageError(
                f"read {max(have, 0)} bytes of image, but header says there "
                f"should be {header.data_size}"
            )
    elif have < header.data_size:
        raise ImageError(
            f"file holds {max(have, 0)} bytes of data, but header says there "
            f"should be {header.data_size}"
        )
    elif have > header.data_size:
        raise ImageError(
            f"{have - header.data_size} stray bytes after the "
            f"{header.data_size} bytes of data"
        )


class Warn(enum.Flag):
    """What :func:`header_warnings` looks at: each caller asks for the
    warnings that matter for what it does with the image."""

    #: Flag bits no reader gives a meaning to (they are ignored).
    FLAGS = enum.auto()
    #: The OS network-boot client's size rules.
    NETBOOT = enum.auto()
    #: ... including its 1 MiB minimum (which mkimage does not insist on:
    #: small images are fine on disk).
    OFFER = enum.auto()
    #: zstd data: an oxboot extension the OS cannot boot from disk.
    ZSTD = enum.auto()


def header_warnings(header: Header, checks: Warn) -> list[str]:
    """What is legal in `header` but will not do what its user may expect,
    for the `checks` asked for, one line each."""
    out = []
    if Warn.FLAGS in checks and header.undefined_flags:
        out.append(f"undefined flag bits {header.undefined_flags:#x} are ignored")
    if Warn.NETBOOT in checks and header.image_size % NETBOOT_ALIGN:
        out.append(
            f"image size {header.image_size} is not a multiple of {NETBOOT_ALIGN} bytes: the "
            "OS network-boot client will fail to verify it (mkimage --pad-netboot pads it)"
        )
    if Warn.OFFER in checks and min(header.image_size, header.target_size) < MIN_OFFER_SIZE:
        out.append("the OS network-boot client ignores offers of images or ramdisks "
                   "under 1 MiB")
    if Warn.ZSTD in checks and header.codec is Codec.ZSTD:
        out.append("zstd images are an oxboot extension: the OS cannot boot them from disk; "
                   "only an oxboot boot server can serve them")
    return out


def netboot_padding(image_size: int) -> int:
    """Zero bytes needed to make an image verify after a netboot."""
    return -image_size % NETBOOT_ALIGN
