"""Properties of the header format and of the readers on hostile or
truncated input (hypothesis)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.cli import one_line_error, run_cli

from oxboot.format import HEADER_SIZE, MAGIC, Flags, Header, ImageError
from oxboot.verify import read_header, verify_image

U64 = (1 << 64) - 1
u64 = st.integers(0, U64)
# Interesting edges are drawn more often than a uniform u64 would.
u64_edges = st.one_of(u64, st.sampled_from([0, 1, 4095, 4096, 4 << 30, (4 << 30) + 1,
                                            1 << 63, U64 - 1, U64]))


def _fits(text: str) -> bool:
    return len(text.encode("utf-8")) <= 127


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    max_size=127,
).filter(_fits)
# Names right at the 127-byte limit, made of multi-byte characters.
long_names = st.sampled_from(["a" * 127, "é" * 63 + "a", "\U0001f600" * 31 + "abc",
                              "€" * 42 + "a", " " * 127])
any_name = st.one_of(names, long_names)


@st.composite
def v2_headers(draw: st.DrawFn) -> Header:
    image_size = draw(u64_edges)
    target_size = draw(st.one_of(st.just(image_size), st.integers(image_size, U64)))
    return Header(
        image_size=image_size,
        target_size=target_size,
        data_size=draw(u64_edges),
        flags=draw(st.one_of(u64, st.sampled_from([0, 1, 2, 3]))),
        sha256=draw(st.binary(min_size=32, max_size=32)),
        dataset=draw(any_name),
        image_name=draw(any_name),
    )


@st.composite
def v1_headers(draw: st.DrawFn) -> Header:
    image_size = draw(u64_edges)
    return Header(
        version=1,
        image_size=image_size,
        target_size=draw(st.one_of(st.just(image_size), st.integers(image_size, U64))),
        sha256=draw(st.binary(min_size=32, max_size=32)),
        dataset=draw(any_name),
    )


# ---- round trip --------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(v2_headers())
def test_v2_pack_parse_round_trip(h: Header) -> None:
    raw = h.pack()
    assert len(raw) == HEADER_SIZE
    assert raw[328:] == bytes(HEADER_SIZE - 328)
    assert struct.unpack_from("<IIQQQQ", raw) == (
        MAGIC, 2, h.flags, h.data_size, h.image_size, h.target_size)
    assert raw[40:72] == h.sha256
    assert raw[72 + 127] == 0 and raw[200 + 127] == 0
    back = Header.parse(raw)
    assert back == h
    assert back.dataset_terminated
    assert back.pack() == raw


@settings(max_examples=200, deadline=None)
@given(v1_headers())
def test_v1_pack_parse_round_trip(h: Header) -> None:
    raw = h.pack()
    assert len(raw) == HEADER_SIZE
    assert struct.unpack_from("<IIQQ", raw) == (MAGIC, 1, h.image_size, h.target_size)
    assert raw[24:56] == h.sha256
    assert raw[184:] == bytes(HEADER_SIZE - 184)
    back = Header.parse(raw)
    assert back == h
    assert back.version == 1 and back.flags == 0 and back.image_name == ""
    assert back.data_size == back.image_size
    assert back.pack() == raw


@pytest.mark.parametrize("name", ["a" * 128, "é" * 64, "\U0001f600" * 32, "x\0y"])
def test_pack_refuses_names_that_do_not_fit(name: str) -> None:
    base = Header(image_size=4096, sha256=bytes(32))
    for field in ("dataset", "image_name"):
        with pytest.raises(ImageError):
            dataclasses.replace(base, **{field: name}).pack()


# ---- hostile headers -----------------------------------------------------------


def _parse_or_image_error(buf: bytes) -> Header | None:
    """The contract: a Header or ImageError, never another exception; and a
    parsed header can always be described, judged and re-packed (or refused
    with ImageError)."""
    try:
        h = Header.parse(buf)
    except ImageError as e:
        assert "\n" not in str(e) and str(e)
        return None
    text = h.describe()
    assert text.startswith("image name = ") and text.endswith("\n")
    # Names may hold line breaks of their own; count lines of the rest.
    assert text.count("\n") - h.image_name.count("\n") - h.dataset.count("\n") in (7, 8)
    h.describe(ratio=False)
    h.problems()
    h.as_dict()
    try:
        assert len(h.pack()) == HEADER_SIZE
    except ImageError:
        pass
    return h


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.large_base_example])
@given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE))
def test_parse_arbitrary_buffers(buf: bytes) -> None:
    _parse_or_image_error(buf)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.large_base_example])
@given(version=st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF]),
       body=st.binary(min_size=HEADER_SIZE - 8, max_size=HEADER_SIZE - 8))
def test_parse_arbitrary_buffers_with_magic(version: int, body: bytes) -> None:
    # Random bytes almost never have the magic; these get past it.
    buf = struct.pack("<II", MAGIC, version) + body
    h = _parse_or_image_error(buf)
    if version not in (1, 2):
        assert h is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.one_of(v2_headers(), v1_headers()),
       flips=st.lists(st.tuples(st.integers(0, 327), st.integers(1, 255)), min_size=1,
                      max_size=8),
       length=st.one_of(st.just(HEADER_SIZE), st.integers(0, HEADER_SIZE + 10)))
def test_parse_mutated_headers(h: Header, flips: list[tuple[int, int]], length: int) -> None:
    buf = bytearray(h.pack())
    for pos, mask in flips:
        buf[pos] ^= mask
    buf = bytes(buf[:length]) + bytes(max(0, length - HEADER_SIZE))
    got = _parse_or_image_error(buf)
    if length < HEADER_SIZE:
        assert got is None


@example(b"\xff" * 127 + b"\0")  # not UTF-8
@example(b"\0" * 5 + "é".encode()[:1] + b"\0" * 122)
@given(st.binary(min_size=128, max_size=128))
@settings(max_examples=200, deadline=None)
def test_parse_any_name_field_bytes(field: bytes) -> None:
    base = bytearray(Header(image_size=4096, sha256=bytes(32)).pack())
    for start in (72, 200):
        buf = bytearray(base)
        buf[start:start + 128] = field
        h = _parse_or_image_error(bytes(buf))
        try:
            text = field.strip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            assert h is None
            continue
        assert h is not None
        assert (h.dataset if start == 72 else h.image_name) == text
        if start == 72:
            assert h.dataset_terminated == (field[127] == 0)


@pytest.mark.parametrize("length", [0, 1, 8, 327, 328, 4095])
def test_parse_short_buffers(length: int) -> None:
    raw = Header(image_size=4096, sha256=bytes(32)).pack()
    with pytest.raises(ImageError, match="shorter than"):
        Header.parse(raw[:length])
    with pytest.raises(ImageError):
        Header.parse(memoryview(raw)[:length])


# ---- describe() ----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(image_size=u64_edges, data_size=st.one_of(st.integers(1, U64), st.just(1)),
       flags=st.sampled_from([1, 2, 3, 1 | (1 << 63), 2 | 4, 0xFF]))
@example(image_size=1, data_size=3, flags=1)  # 0.33
@example(image_size=2, data_size=3, flags=2)  # 0.67: rounds, does not truncate
@example(image_size=U64, data_size=1, flags=1)
@example(image_size=10**6, data_size=999_999, flags=1)  # 1.00
def test_describe_ratio_two_decimals(image_size: int, data_size: int, flags: int) -> None:
    h = Header(image_size=image_size, target_size=U64, data_size=data_size, flags=flags,
               sha256=bytes(32))
    lines = h.describe().splitlines()
    assert len(lines) == 8
    m = re.fullmatch(r"ratio = (\d+\.\d\d)x", lines[-1])
    assert m, lines[-1]
    assert m.group(1) == f"{image_size / data_size:.2f}"
    assert h.describe(ratio=False).splitlines() == lines[:-1]
    if flags & 1:
        assert lines[1] == "flags = 0x1 (COMPRESSED)"
    else:
        assert lines[1] == "flags = 0x2 (ZSTD)"


@pytest.mark.parametrize(("flags", "data_size"), [(0, 100), (4, 100), (1 << 63, 100),
                                                   (1, 0), (2, 0)])
def test_describe_no_ratio_when_not_compressed_or_empty(flags: int, data_size: int) -> None:
    h = Header(image_size=4096, data_size=data_size, flags=flags, sha256=bytes(32))
    text = h.describe()
    assert "ratio" not in text
    assert len(text.splitlines()) == 7


def test_describe_exact_text() -> None:
    h = Header(image_size=838860800, data_size=300000000, flags=1, target_size=4 << 30,
               sha256=bytes(range(32)), dataset="rpool/ROOT/ramdisk", image_name="testing-tar")
    assert h.describe() == (
        "image name = testing-tar\n"
        "flags = 0x1 (COMPRESSED)\n"
        "data size = 300000000\n"
        "image size = 838860800\n"
        "target size = 4294967296\n"
        f"image sum = {bytes(range(32)).hex()}\n"
        "dataset name = rpool/ROOT/ramdisk\n"
        "ratio = 2.80x\n"
    )
    assert Flags(h.flags) is Flags.COMPRESSED


# ---- truncated files -------------------------------------------------------------


def _image(raw: bytes, compressed: bool) -> bytes:
    data = zlib.compress(raw, 9) if compressed else raw
    h = Header(image_size=len(raw), data_size=len(data), flags=int(compressed),
               sha256=hashlib.sha256(raw).digest(), image_name="trunc")
    return h.pack() + data


RAW = bytes(range(256)) * 20 + b"tail" * 700  # 7920 bytes, compressible
IMAGES = {"none": _image(RAW, False), "zlib": _image(RAW, True)}


@pytest.fixture(scope="module")
def trunc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trunc")


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_full_images_verify(kind: str, trunc_dir: Path) -> None:
    path = trunc_dir / f"full-{kind}.img"
    path.write_bytes(IMAGES[kind])
    assert verify_image(path).header.image_size == len(RAW)
    assert read_header(path).image_name == "trunc"


@pytest.mark.parametrize("kind", sorted(IMAGES))
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_prefix_is_refused(kind: str, trunc_dir: Path, data: st.DataObject) -> None:
    img = IMAGES[kind]
    cut = data.draw(st.one_of(
        st.integers(0, len(img) - 1),
        st.sampled_from([0, 1, 8, 4095, 4096, 4097, len(img) - 1]),
    ))
    path = trunc_dir / f"cut-{kind}.img"
    path.write_bytes(img[:cut])
    with pytest.raises(ImageError) as e:
        verify_image(path)
    assert "\n" not in str(e.value)
    with pytest.raises(ImageError):
        verify_image(path, output=trunc_dir / f"out-{kind}.raw")
    assert not (trunc_dir / f"out-{kind}.raw").exists()
    if cut < HEADER_SIZE:
        with pytest.raises(ImageError):
            read_header(path)
        with pytest.raises(ImageError):
            verify_image(path, skip_checksum=True)
    else:
        # The header is whole: read_header succeeds, -s does not look further.
        assert read_header(path).image_size == len(RAW)
        assert verify_image(path, skip_checksum=True).checked is False


@pytest.mark.parametrize("kind", sorted(IMAGES))
@pytest.mark.parametrize("cut", ["0", "100", "4095", "header", "half", "all-but-1"])
def test_truncated_through_cli(kind: str, cut: str, tmp_path: Path) -> None:
    img = IMAGES[kind]
    n = {"header": HEADER_SIZE, "half": (HEADER_SIZE + len(img)) // 2,
         "all-but-1": len(img) - 1}.get(cut) or int(cut)
    path = tmp_path / "t.img"
    path.write_bytes(img[:n])
    r = run_cli(["lookimage", str(path)])
    one_line_error(r)
    assert r.status == 1
    if n >= HEADER_SIZE:
        # The header is printed, as the original does, before the data fails.
        assert r.stdout.startswith("image name = trunc\n")
    else:
        assert r.stdout == ""
