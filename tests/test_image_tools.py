"""mkimage, lookimage and extract as a user runs them (real processes, real
files), plus the Python API where the behaviour is not user-visible."""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import random
import re
import resource
import select
import signal
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import zstandard
from support.cli import SANITIZED, Run, command, genraw, one_line_error, run_cli
from zlib_ng import zlib_ng

from oxboot import build_image, extract_image, read_header, verify_image
from oxboot.codec import DEFAULT_ZLIB_LEVEL, ISAL_FAST_LEVEL, ParallelZlib
from oxboot.codec.deflate import _deflate_chunk, _isal_chunk
from oxboot.format import HEADER_SIZE, NETBOOT_ALIGN, Codec, Header, ImageError

MIB = 1 << 20

# ---- helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gen_raw() -> ModuleType:
    """The vectors' deterministic generator (mixed random/zero/text data)."""
    return genraw


@pytest.fixture(scope="module")
def raw_1m(gen_raw: ModuleType) -> bytes:
    return gen_raw.generate(4242, MIB + 12345)


@pytest.fixture(scope="module")
def raw_10m(gen_raw: ModuleType) -> bytes:
    # More than one 8 MiB read block, so the parallel compressor really cuts.
    return gen_raw.generate(777, 10 * MIB + 4321)


def noise(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def temps(directory: Path) -> list[Path]:
    """Temporary files an AtomicFile would leave behind."""
    return sorted(p for p in directory.iterdir() if p.name.startswith(".")
                  and p.name.endswith(".tmp"))


def mkimage(*args: str | Path, stdin: bytes | None = None) -> Run:
    return run_cli(["mkimage", *map(str, args)], stdin=stdin)


def lookimage(*args: str | Path) -> Run:
    return run_cli(["lookimage", *map(str, args)])


def oxboot(*args: str | Path) -> Run:
    return run_cli(["oxboot", *map(str, args)])


def payload(path: Path) -> bytes:
    return path.read_bytes()[HEADER_SIZE:]


def inflate_one_stream(data: bytes) -> bytes:
    """Inflate `data`, insisting it is exactly one complete zlib stream."""
    d = zlib.decompressobj()
    out = d.decompress(data) + d.flush()
    assert d.eof, "zlib stream does not end"
    assert d.unused_data == b"", f"{len(d.unused_data)} bytes after the zlib stream"
    return out


def write_image(path: Path, header: Header, data: bytes) -> Path:
    path.write_bytes(header.pack() + data)
    return path


def header_for(raw: bytes, data: bytes | None = None, **kw: object) -> Header:
    data = raw if data is None else data
    return Header(image_size=len(raw), data_size=len(data), sha256=hashlib.sha256(raw).digest(),
                  **kw)


def run_limited(args: list[str], mem: int = 1 << 30, timeout: float = 30) -> Run:
    """Run a command with its address space capped (not under ASan, which
    reserves terabytes of shadow memory)."""

    def limit() -> None:
        if not SANITIZED:
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    p = subprocess.run([*command(args[0]), *args[1:]], capture_output=True, timeout=timeout,
                       preexec_fn=limit)
    return Run(p.returncode, p.stdout.decode(), p.stderr.decode())


#: Root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: file modes bind it
#: like any user. It is still uid 0, the owner of the mode-700 /root where
#: the interpreter lives, so the tools start as usual.
NO_DAC = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all",
          "--bounding-set=-dac_override,-dac_read_search"]


def run_without_dac(args: list[str], timeout: float = 60) -> Run:
    """Run a console script with file permissions enforced, also as root."""
    prefix = NO_DAC if os.geteuid() == 0 else []
    p = subprocess.run([*prefix, *command(args[0]), *args[1:]], capture_output=True,
                       timeout=timeout)
    return Run(p.returncode, p.stdout.decode(), p.stderr.decode())


# ---- mkimage: codecs -----------------------------------------------------------


def test_zstd_round_trip(raw_1m: bytes, tmp_path: Path) -> None:
    (tmp_path / "in.raw").write_bytes(raw_1m)
    img = tmp_path / "z.img"
    r = mkimage("-i", tmp_path / "in.raw", "-o", img, "--codec", "zstd", "-N", "zs")
    assert r.status == 0, r.stderr
    assert r.stdout == "ok, image written!\n"
    assert "warning: " in r.stderr and "cannot boot" in r.stderr and "zstd" in r.stderr
    made = [ln for ln in r.stderr.splitlines() if "zstd" in ln]
    h = read_header(img)
    assert h.flags == 0x2 and h.codec is Codec.ZSTD
    assert h.image_size == len(raw_1m) and h.data_size == len(payload(img)) < len(raw_1m)
    assert h.sha256 == hashlib.sha256(raw_1m).digest()
    assert zstandard.ZstdDecompressor().decompressobj().decompress(payload(img)) == raw_1m
    r = lookimage(img)
    assert r.status == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "flags = 0x2 (ZSTD)" in lines
    assert lines[-1] == f"ratio = {len(raw_1m) / h.data_size:.2f}x"
    assert r.stderr.splitlines() == made  # the same warning, in the same words
    assert verify_image(img).checked


@pytest.mark.parametrize("level", [1, 9])
@pytest.mark.parametrize("threads", [1, 2])
def test_zlib_levels_and_threads(raw_1m: bytes, tmp_path: Path, level: int,
                                 threads: int) -> None:
    (tmp_path / "in.raw").write_bytes(raw_1m)
    img = tmp_path / "z.img"
    r = mkimage("-i", tmp_path / "in.raw", "-o", img, "--codec", "zlib", "--level", level,
                "--threads", threads)
    assert r.status == 0, r.stderr
    h = read_header(img)
    assert h.flags == 0x1 and h.data_size == len(payload(img))
    data = payload(img)
    assert inflate_one_stream(data) == raw_1m
    assert zlib.decompress(data) == raw_1m
    # The RFC 1950 header announces the level the way zlib itself does.
    assert data[:2] == zlib.compress(b"x", level)[:2]
    assert lookimage(img).status == 0


@pytest.mark.parametrize("codec", ["none", "zlib", "zstd"])
def test_one_thread_gives_the_same_results(tmp_path: Path, codec: str) -> None:
    """--threads 1 (everything in turn on one thread) writes the same image
    as the default (zstd: one that holds the same data; its multithreaded
    frames differ), and lookimage/extract with --threads 1 check it alike:
    a good image passes, a flipped byte fails with the same error."""
    raw = noise(3 * MIB + 4096, seed=7) + bytes(6 * MIB)  # > one read block, compressible
    (tmp_path / "in.raw").write_bytes(raw)
    images = {}
    for threads in ("1", "2"):
        img = tmp_path / f"t{threads}.img"
        r = mkimage("-i", tmp_path / "in.raw", "-o", img, "--codec", codec,
                    "--threads", threads, *(["--level", "6"] if codec != "none" else []))
        assert r.status == 0, r.stderr
        images[threads] = img.read_bytes()
        assert lookimage("--threads", threads, img).status == 0
    if codec != "zstd":
        assert images["1"] == images["2"]
    img = tmp_path / "t1.img"
    assert lookimage("--threads", "1", img).status == 0
    out = tmp_path / "out.raw"
    r = oxboot("extract", "--threads", "1", img, "-o", out)
    assert r.status == 0, r.stderr
    assert out.read_bytes() == raw
    bad = bytearray(images["1"])
    bad[HEADER_SIZE + len(bad[HEADER_SIZE:]) // 2] ^= 0x40
    (tmp_path / "bad.img").write_bytes(bad)
    one, every = lookimage("--threads", "1", tmp_path / "bad.img"), lookimage(tmp_path / "bad.img")
    one_line_error(one)
    assert one.status == every.status == 1 and one.stderr == every.stderr
    zero = lookimage("--threads", "0", img)
    one_line_error(zero)
    assert zero.stderr == "Error: argument --threads: must be at least 1\n"


def test_parallel_zlib_ratio_close_to_single_stream(raw_10m: bytes, tmp_path: Path) -> None:
    (tmp_path / "in.raw").write_bytes(raw_10m)
    sizes = {}
    for level in (1, 9):
        img = tmp_path / f"z{level}.img"
        r = mkimage("-i", tmp_path / "in.raw", "-o", img, "-z", "--level", level,
                    "--threads", "2")
        assert r.status == 0, r.stderr
        data = payload(img)
        assert inflate_one_stream(data) == raw_10m
        # The same deflater (ISA-L for the fast level, else libdeflate) over
        # the whole buffer, one stream.
        single = len(_isal_chunk(raw_10m) if level == ISAL_FAST_LEVEL
                     else _deflate_chunk(level, raw_10m))
        sizes[level] = len(data)
        assert abs(len(data) - single) <= 0.005 * single, (level, len(data), single)
        # ...and never worse than zlib-ng, a fast zlib, at the same level
        # (ISA-L, ~5x faster, within 2% of it: 0.75% larger on this mix,
        # smaller on real filesystems).
        slack = 1.02 if level == ISAL_FAST_LEVEL else 1.005
        assert len(data) <= slack * len(zlib_ng.compress(raw_10m, level))
    assert sizes[9] != sizes[1]  # the level is really used (on this mix 1 may even win)


@pytest.mark.parametrize("block", [64 * 1024, MIB, 3 * MIB + 17])
def test_parallel_zlib_api_small_blocks(raw_10m: bytes, block: int) -> None:
    """Cut into many independently compressed blocks (every core busy), the
    stream is still one valid zlib stream within 0.5% of single-stream."""
    data = raw_10m[:6 * MIB + 99]
    out: list[bytes] = []
    enc = ParallelZlib(out.append, DEFAULT_ZLIB_LEVEL, threads=2)
    try:
        for i in range(0, len(data), block):
            enc.feed(memoryview(data)[i:i + block])
        enc.finish()
    finally:
        enc.close()
    stream = b"".join(out)
    assert inflate_one_stream(stream) == data
    single = len(_deflate_chunk(DEFAULT_ZLIB_LEVEL, data))  # one stream, same deflater
    assert abs(len(stream) - single) <= 0.005 * single


def test_zlib_output_independent_of_threads_and_input_kind(raw_10m: bytes,
                                                           tmp_path: Path) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_10m)
    outs = []
    for n, extra in enumerate((["--threads", "1"], ["--threads", "2"], [])):
        img = tmp_path / f"{n}.img"
        assert mkimage("-i", src, "-o", img, "-z", *extra).status == 0
        outs.append(img.read_bytes())
    img = tmp_path / "stdin.img"
    r = mkimage("-i", "-", "-o", img, "-z", "--threads", "2", stdin=raw_10m)
    assert r.status == 0, r.stderr
    outs.append(img.read_bytes())
    assert all(o == outs[0] for o in outs)


def test_z_equals_compress_equals_codec_zlib(raw_1m: bytes, tmp_path: Path) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m)
    imgs = []
    for n, flag in enumerate((["-z"], ["--compress"], ["--codec", "zlib"])):
        img = tmp_path / f"{n}.img"
        r = mkimage("-i", src, "-o", img, *flag)
        assert r.status == 0, r.stderr
        imgs.append(img.read_bytes())
    assert imgs[0] == imgs[1] == imgs[2]
    assert Header.parse(imgs[0]).flags == 1


def test_compress_with_other_codec_is_refused(raw_1m: bytes, tmp_path: Path) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m)
    r = mkimage("-i", src, "-o", tmp_path / "x.img", "-z", "--codec", "zstd")
    one_line_error(r)
    assert not (tmp_path / "x.img").exists()


@pytest.mark.parametrize(("args", "why"), [
    (["-z", "--level", "10"], "level"),
    (["-z", "--level", "-1"], "level"),
    (["--codec", "zstd", "--level", "20"], "level"),
    (["--level", "5"], "level"),  # no codec to apply it to
    (["-z", "--threads", "0"], "threads"),
    (["-z", "--level", "x"], "x"),
    (["-s", "0"], "size"),
    (["-s", "1.5"], "size"),
    (["-s", str(1 << 44)], "range"),  # 2**64 bytes
    (["--codec", "lz4"], "lz4"),
])
def test_bad_options_are_one_line_errors(raw_1m: bytes, tmp_path: Path, args: list[str],
                                         why: str) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m)
    r = mkimage("-i", src, "-o", tmp_path / "x.img", *args)
    one_line_error(r)
    assert r.status == 1
    assert why in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.raw"]


@pytest.mark.parametrize("codec", ["zlib", "zstd"])
def test_level_zero_is_refused(raw_1m: bytes, tmp_path: Path, codec: str) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m)
    r = mkimage("-i", src, "-o", tmp_path / "x.img", "--codec", codec, "--level", "0")
    one_line_error(r)
    assert not (tmp_path / "x.img").exists()


# ---- mkimage: names, sizes, inputs -----------------------------------------------


def test_dataset_and_utf8_name(raw_1m: bytes, tmp_path: Path) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m)
    img = tmp_path / "n.img"
    name = "héllo wörld ☃ 构建 \U0001f680"
    r = mkimage("-i", src, "-o", img, "-N", name, "--dataset", "tank/ROOT/ßeta")
    assert r.status == 0, r.stderr
    h = read_header(img)
    assert h.image_name == name and h.dataset == "tank/ROOT/ßeta"
    raw = img.read_bytes()
    assert raw[200:328].rstrip(b"\0") == name.encode("utf-8")
    assert raw[72:200].rstrip(b"\0") == "tank/ROOT/ßeta".encode()
    r = lookimage(img)
    assert r.status == 0
    assert f"image name = {name}\n" in r.stdout
    assert "dataset name = tank/ROOT/ßeta\n" in r.stdout
    # --name is -N; the default dataset is the original's.
    img2 = tmp_path / "n2.img"
    assert mkimage("-i", src, "-o", img2, "--name", name).status == 0
    assert read_header(img2).image_name == name
    assert read_header(img2).dataset == "rpool/ROOT/ramdisk"


NAMES_127 = ["a" * 127, "é" * 63 + "a", "\U0001f600" * 31 + "abc"]
NAMES_128 = ["a" * 128, "é" * 64, "\U0001f600" * 32, "a" * 300]


@pytest.mark.parametrize("flag", ["-N", "--dataset"])
@pytest.mark.parametrize("name", NAMES_127, ids=["ascii", "2-byte", "4-byte"])
def test_name_of_127_bytes_fits(raw_1m: bytes, tmp_path: Path, flag: str, name: str) -> None:
    assert len(name.encode()) == 127
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m[:8192])
    img = tmp_path / "n.img"
    r = mkimage("-i", src, "-o", img, flag, name)
    assert r.status == 0, r.stderr
    h = read_header(img)
    assert (h.image_name if flag == "-N" else h.dataset) == name
    assert h.problems() == []
    assert lookimage(img).status == 0


@pytest.mark.parametrize("flag", ["-N", "--dataset"])
@pytest.mark.parametrize("name", NAMES_128, ids=["ascii", "2-byte", "4-byte", "300"])
def test_name_of_128_bytes_is_refused(raw_1m: bytes, tmp_path: Path, flag: str,
                                      name: str) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m[:8192])
    r = mkimage("-i", src, "-o", tmp_path / "n.img", flag, name)
    one_line_error(r)
    assert r.status == 1
    assert str(len(name.encode())) in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.raw"]


@pytest.mark.parametrize("via", ["file", "stdin"])
def test_target_smaller_than_image_is_refused(tmp_path: Path, via: str) -> None:
    raw = bytes(MIB + 4096)
    src = tmp_path / "in.raw"
    src.write_bytes(raw)
    img = tmp_path / "t.img"
    r = mkimage("-i", src if via == "file" else "-", "-o", img, "-s", "1",
                stdin=raw if via == "stdin" else None)
    one_line_error(r)
    assert r.status == 1
    assert "target size" in r.stderr
    assert not img.exists() and temps(tmp_path) == []
    # Exactly the target size fits.
    r = mkimage("-i", "-", "-o", img, "-s", "1", stdin=raw[:MIB])
    assert r.status == 0, r.stderr
    assert read_header(img).target_size == MIB


def test_pad_netboot_and_target_size(tmp_path: Path) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(bytes(MIB - 5))
    r = mkimage("-i", src, "-o", tmp_path / "t.img", "-s", "1")
    assert r.status == 0  # fits without padding ...
    r = mkimage("-i", src, "-o", tmp_path / "t2.img", "-s", "1", "--pad-netboot")
    assert r.status == 0  # ... and padded to exactly 1 MiB
    assert read_header(tmp_path / "t2.img").image_size == MIB
    src.write_bytes(bytes(MIB + 5))
    r = mkimage("-i", src, "-o", tmp_path / "t3.img", "-s", "2", "--pad-netboot")
    assert r.status == 0
    assert read_header(tmp_path / "t3.img").image_size == MIB + NETBOOT_ALIGN
    # Fits the target unpadded, not padded (targets are whole MiB on the
    # command line, so through the API).
    with pytest.raises(ImageError, match="target size"):
        build_image(src, tmp_path / "t4.img", target_size=MIB + 100, pad_netboot=True)
    assert build_image(src, tmp_path / "t4.img", target_size=MIB + 100).header.image_size \
        == MIB + 5
    assert temps(tmp_path) == []


def test_input_over_4_gib_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "huge.raw"
    with open(src, "wb") as f:
        f.truncate((4 << 30) + 1)  # sparse: costs no disk
    img = tmp_path / "huge.img"
    img.write_bytes(OLD_IMG)
    for target in ("4096", "8192"):
        t = time.monotonic()
        r = mkimage("-i", src, "-o", img, "-s", target)
        assert time.monotonic() - t < 20  # refused up front, not after reading 4 GiB
        one_line_error(r)
        assert "4 GiB" in r.stderr or "target size" in r.stderr
    assert "4 GiB" in r.stderr  # -s 8192: the target is not what stops it
    assert img.read_bytes() == OLD_IMG and temps(tmp_path) == []


@pytest.mark.parametrize("size", [0, 1, 4095])
@pytest.mark.parametrize("via", ["file", "stdin"])
def test_input_under_4096_bytes_is_refused(tmp_path: Path, size: int, via: str) -> None:
    raw = b"\x5a" * size
    src = tmp_path / "in.raw"
    src.write_bytes(raw)
    img = tmp_path / "small.img"
    r = mkimage("-i", src if via == "file" else "-", "-o", img,
                stdin=raw if via == "stdin" else None)
    one_line_error(r)
    assert r.status == 1
    assert "4096" in r.stderr
    assert not img.exists() and temps(tmp_path) == []


def test_input_of_4096_bytes_is_fine(tmp_path: Path) -> None:
    raw = noise(4096)
    img = tmp_path / "min.img"
    r = mkimage("-i", "-", "-o", img, stdin=raw)
    assert r.status == 0, r.stderr
    assert img.read_bytes() == header_for(raw).pack() + raw


@pytest.mark.parametrize("kind", ["missing", "directory", "unreadable"])
def test_unreadable_input(tmp_path: Path, kind: str) -> None:
    src = tmp_path / "in.raw"
    if kind == "directory":
        src.mkdir()
    elif kind == "unreadable":
        src.write_bytes(bytes(8192))
        src.chmod(0)
    img = tmp_path / "x.img"
    img.write_bytes(OLD_IMG)
    # As root too: without the capabilities that override file modes.
    r = run_without_dac(["mkimage", "-i", str(src), "-o", str(img)])
    one_line_error(r)
    assert r.status == 1
    assert str(src) in r.stderr
    if kind == "unreadable":
        assert "Permission denied" in r.stderr
    assert img.read_bytes() == OLD_IMG and temps(tmp_path) == []


@pytest.mark.parametrize("tool", ["lookimage", "lookimage-s", "extract"])
def test_unreadable_image(tmp_path: Path, tool: str) -> None:
    raw = noise(8192)
    img = write_image(tmp_path / "in.img", header_for(raw), raw)
    img.chmod(0)
    out = tmp_path / "out.raw"
    out.write_bytes(b"old raw image")
    args = {"lookimage": ["lookimage", str(img)], "lookimage-s": ["lookimage", "-s", str(img)],
            "extract": ["oxboot", "extract", str(img), "-o", str(out)]}[tool]
    r = run_without_dac(args)
    one_line_error(r)
    assert r.status == 1
    assert str(img) in r.stderr and "Permission denied" in r.stderr
    assert out.read_bytes() == b"old raw image" and temps(tmp_path) == []


@pytest.mark.parametrize("codec", ["none", "zlib", "zstd"])
def test_stdin_gives_the_same_bytes_as_the_file(raw_1m: bytes, tmp_path: Path,
                                                codec: str) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m)
    a, b = tmp_path / "file.img", tmp_path / "pipe.img"
    ra = mkimage("-i", src, "-o", a, "--codec", codec, "-N", "same", "-O", tmp_path / "a.csum")
    rb = mkimage("-i", "-", "-o", b, "--codec", codec, "-N", "same", "-O", tmp_path / "b.csum",
                 stdin=raw_1m)
    assert ra.status == rb.status == 0, (ra.stderr, rb.stderr)
    assert ra.stdout == rb.stdout
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a.csum").read_bytes() == (tmp_path / "b.csum").read_bytes()
    assert verify_image(b).header.image_size == len(raw_1m)


def test_stdin_from_a_real_pipe(raw_1m: bytes, tmp_path: Path) -> None:
    """`cat RAW | mkimage -i -`: a pipe that delivers the data in small pieces."""
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m)
    img = tmp_path / "p.img"
    cat = subprocess.Popen(["cat", str(src)], stdout=subprocess.PIPE)
    try:
        p = subprocess.run([*command("mkimage"), "-i", "-", "-o", str(img), "-z"],
                           stdin=cat.stdout, capture_output=True, timeout=60)
    finally:
        assert cat.stdout is not None
        cat.stdout.close()
        cat.wait()
    assert p.returncode == 0, p.stderr
    assert verify_image(img).header.sha256 == hashlib.sha256(raw_1m).digest()
    assert inflate_one_stream(payload(img)) == raw_1m


@pytest.mark.parametrize("codec", ["none", "zlib"])
@pytest.mark.parametrize("via", ["file", "stdin"])
def test_pad_netboot(tmp_path: Path, codec: str, via: str) -> None:
    raw = noise(3000) + bytes(200_000) + b"end"
    src = tmp_path / "in.raw"
    src.write_bytes(raw)
    img = tmp_path / "p.img"
    r = mkimage("-i", src if via == "file" else "-", "-o", img, "--pad-netboot", "--codec",
                codec, stdin=raw if via == "stdin" else None)
    assert r.status == 0, r.stderr
    assert "131072" not in r.stderr and "multiple" not in r.stderr
    padded = raw + bytes(-len(raw) % NETBOOT_ALIGN)
    assert len(padded) == 2 * NETBOOT_ALIGN
    h = read_header(img)
    assert h.image_size == len(padded)
    assert h.image_size % 131072 == 0
    assert h.sha256 == hashlib.sha256(padded).digest()
    data = payload(img)
    assert (data if codec == "none" else inflate_one_stream(data)) == padded
    assert lookimage(img).status == 0
    # Already aligned: nothing is added.
    src.write_bytes(padded)
    assert mkimage("-i", src, "-o", img, "--pad-netboot").status == 0
    assert img.read_bytes() == header_for(padded).pack() + padded


def test_netboot_alignment_warning(tmp_path: Path) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(noise(NETBOOT_ALIGN + 1))
    r = mkimage("-i", src, "-o", tmp_path / "a.img")
    assert r.status == 0
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and "131072" in warnings[0] and str(NETBOOT_ALIGN + 1) in warnings[0]
    assert r.stderr.count("\n") == 1
    src.write_bytes(noise(2 * NETBOOT_ALIGN))
    r = mkimage("-i", src, "-o", tmp_path / "b.img")
    assert r.status == 0
    assert r.stderr == ""


def test_mkimage_json(raw_1m: bytes, tmp_path: Path) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m)
    img, csum = tmp_path / "j.img", tmp_path / "j.csum"
    r = mkimage("-i", src, "-o", img, "-O", csum, "-z", "-N", "js", "-s", "64", "--json")
    assert r.status == 0, r.stderr
    out = json.loads(r.stdout)
    assert r.stdout.count("\n") == 1  # one JSON document, nothing else on stdout
    h = out["header"]
    assert h == read_header(img).as_dict()
    assert h["image_size"] == len(raw_1m)
    assert h["data_size"] == len(payload(img))
    assert h["target_size"] == 64 * MIB
    assert h["sha256"] == hashlib.sha256(raw_1m).hexdigest()
    assert h["flags"] == 1 and h["codec"] == "zlib"
    assert h["image_name"] == "js" and h["dataset"] == "rpool/ROOT/ramdisk"
    assert h["version"] == 2
    assert out["output"] == str(img) and out["csum_output"] == str(csum)
    assert out["stored_codec"] == "zlib"
    assert any("131072" in w for w in out["warnings"])


@pytest.mark.parametrize("codec", ["zlib", "zstd"])
def test_incompressible_input_is_stored(tmp_path: Path, codec: str) -> None:
    raw = noise(64 * 1024 + 17, seed=9)
    src = tmp_path / "in.raw"
    src.write_bytes(raw)
    img = tmp_path / "i.img"
    flag = ["-z"] if codec == "zlib" else ["--codec", "zstd"]
    r = mkimage("-i", src, "-o", img, *flag)
    assert r.status == 0, r.stderr
    assert "compress" in r.stderr  # says why
    assert img.read_bytes() == header_for(raw).pack() + raw  # flags 0, raw data
    r = lookimage(img)
    assert r.status == 0, r.stderr
    assert "flags = 0x0 ((empty))" in r.stdout and "ratio" not in r.stdout


def test_checksum_file_is_32_raw_bytes(raw_1m: bytes, tmp_path: Path) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m)
    csum = tmp_path / "boot_image_csum"
    r = mkimage("-i", src, "-o", tmp_path / "c.img", "-O", csum, "-z")
    assert r.status == 0
    assert r.stdout == "ok, image written!\nok, boot_image_csum file written!\n"
    assert csum.read_bytes() == hashlib.sha256(raw_1m).digest()
    assert read_header(tmp_path / "c.img").sha256 == csum.read_bytes()


def test_build_image_api_from_a_file_object(raw_1m: bytes, tmp_path: Path) -> None:
    import io

    res = build_image(io.BytesIO(raw_1m), tmp_path / "api.img", codec=Codec.ZSTD,
                      image_name="api", threads=2)
    assert res.codec is Codec.ZSTD and res.header.flags == 2
    assert any("cannot boot" in w for w in res.warnings)
    assert verify_image(tmp_path / "api.img").header == res.header
    with pytest.raises(ImageError):
        build_image(io.BytesIO(b"x" * 4095), tmp_path / "small.img")
    with pytest.raises(ImageError):
        build_image(io.BytesIO(raw_1m), tmp_path / "t.img", target_size=MIB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.img"]


@pytest.mark.parametrize("codec", ["zlib", "zstd"])
def test_build_image_api_accepts_codec_names(raw_1m: bytes, tmp_path: Path, codec: str) -> None:
    import io

    assert codec == Codec(codec)
    res = build_image(io.BytesIO(raw_1m), tmp_path / "s.img", codec=codec)  # type: ignore[arg-type]
    assert res.header.codec == Codec(codec)
    assert res.header.data_size < len(raw_1m)


# ---- atomicity -----------------------------------------------------------------

OLD_IMG = b"previous image, must survive"
OLD_CSUM = b"previous checksum, must survive"


@pytest.mark.parametrize("case", ["target-too-small", "target-too-small-stdin", "name-too-long",
                                  "dataset-too-long", "missing-input", "small-input",
                                  "small-input-stdin", "empty-stdin", "bad-level"])
def test_failure_leaves_existing_outputs_untouched(tmp_path: Path, case: str) -> None:
    raw = bytes(2 * MIB)
    src = tmp_path / "in.raw"
    src.write_bytes(raw)
    img, csum = tmp_path / "out.img", tmp_path / "out.csum"
    img.write_bytes(OLD_IMG)
    csum.write_bytes(OLD_CSUM)
    args: list[str | Path] = ["-i", src, "-o", img, "-O", csum, "-z"]
    stdin = None
    if case == "target-too-small":
        args += ["-s", "1"]
    elif case == "target-too-small-stdin":
        args[1], stdin = "-", raw
        args += ["-s", "1"]
    elif case == "name-too-long":
        args += ["-N", "n" * 128]
    elif case == "dataset-too-long":
        args += ["--dataset", "d" * 128]
    elif case == "missing-input":
        args[1] = tmp_path / "nope.raw"
    elif case == "small-input":
        src.write_bytes(raw[:4095])
    elif case == "small-input-stdin":
        args[1], stdin = "-", raw[:4095]
    elif case == "empty-stdin":
        args[1], stdin = "-", b""
    elif case == "bad-level":
        args += ["--level", "10"]
    r = mkimage(*args, stdin=stdin)
    one_line_error(r)
    assert r.status == 1
    assert r.stdout == ""
    assert img.read_bytes() == OLD_IMG
    assert csum.read_bytes() == OLD_CSUM
    assert temps(tmp_path) == []


@pytest.mark.parametrize(("which", "where"), [
    ("-o", "missing-dir"), ("-o", "parent-is-file"), ("-o", "is-a-directory"),
    ("-O", "missing-dir"), ("-O", "parent-is-file"),
    # ("-O", "is-a-directory"): test_checksum_file_that_is_a_directory_keeps_the_image
])
def test_unwritable_output(tmp_path: Path, which: str, where: str) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(bytes(8192))
    (tmp_path / "file").write_bytes(b"a regular file")
    (tmp_path / "adir").mkdir()
    bad = {"missing-dir": tmp_path / "no" / "such" / "dir" / "x",
           "parent-is-file": tmp_path / "file" / "x",
           "is-a-directory": tmp_path / "adir"}[where]
    img, csum = tmp_path / "out.img", tmp_path / "out.csum"
    img.write_bytes(OLD_IMG)
    csum.write_bytes(OLD_CSUM)
    args = ["-i", src, "-o", bad, "-O", csum] if which == "-o" else \
        ["-i", src, "-o", img, "-O", bad]
    r = mkimage(*args)
    one_line_error(r)
    assert r.status == 1
    assert str(bad) in r.stderr
    assert img.read_bytes() == OLD_IMG
    assert csum.read_bytes() == OLD_CSUM
    assert (tmp_path / "file").read_bytes() == b"a regular file"
    assert (tmp_path / "adir").is_dir() and list((tmp_path / "adir").iterdir()) == []
    assert temps(tmp_path) == []


def test_checksum_file_that_is_a_directory_keeps_the_image(tmp_path: Path) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(bytes(8192))
    (tmp_path / "adir").mkdir()
    img = tmp_path / "out.img"
    img.write_bytes(OLD_IMG)
    r = mkimage("-i", src, "-o", img, "-O", tmp_path / "adir")
    one_line_error(r)
    assert temps(tmp_path) == []
    assert img.read_bytes() == OLD_IMG


@pytest.mark.parametrize("tool", ["mkimage", "extract"])
def test_output_name_of_250_bytes(raw_1m: bytes, tmp_path: Path, tool: str) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m)
    long_name = tmp_path / ("n" * 250)
    long_name.write_bytes(b"a valid file name")  # the file system takes the name
    if tool == "mkimage":
        r = mkimage("-i", src, "-o", long_name)
        assert r.status == 0, r.stderr
        assert verify_image(long_name).checked
    else:
        img = write_image(tmp_path / "i.img", header_for(raw_1m), raw_1m)
        r = oxboot("extract", img, "-o", long_name)
        assert r.status == 0, r.stderr
        assert long_name.read_bytes() == raw_1m


def test_success_replaces_outputs_and_leaves_no_temp(raw_1m: bytes, tmp_path: Path) -> None:
    src = tmp_path / "in.raw"
    src.write_bytes(raw_1m)
    img, csum = tmp_path / "out.img", tmp_path / "out.csum"
    img.write_bytes(OLD_IMG * 100_000)  # longer than the new image: no stale tail
    csum.write_bytes(OLD_CSUM)
    assert mkimage("-i", src, "-o", img, "-O", csum).status == 0
    assert img.read_bytes() == header_for(raw_1m).pack() + raw_1m
    assert csum.read_bytes() == hashlib.sha256(raw_1m).digest()
    assert temps(tmp_path) == []


def _small_files() -> None:
    """preexec_fn: files may not grow past 300 kB (EFBIG instead of SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


@pytest.mark.parametrize("codec", ["none", "zlib", "zstd"])
def test_write_failure_mid_run(tmp_path: Path, codec: str) -> None:
    """The disk refuses a write half way through (RLIMIT_FSIZE stands in
    for a full disk): one-line error, old outputs intact, no temp left."""
    src = tmp_path / "in.raw"
    src.write_bytes(noise(MIB, seed=5))
    img, csum = tmp_path / "out.img", tmp_path / "out.csum"
    img.write_bytes(OLD_IMG)
    csum.write_bytes(OLD_CSUM)
    p = subprocess.run([*command("mkimage"), "-i", str(src), "-o", str(img), "-O", str(csum),
                        "--codec", codec], capture_output=True, timeout=60,
                       preexec_fn=_small_files)
    r = Run(p.returncode, p.stdout.decode(), p.stderr.decode())
    one_line_error(r)
    assert r.status == 1
    assert str(img) in r.stderr
    assert img.read_bytes() == OLD_IMG and csum.read_bytes() == OLD_CSUM
    assert temps(tmp_path) == []


def test_extract_write_failure_mid_run(tmp_path: Path) -> None:
    raw = noise(MIB, seed=6)
    img = write_image(tmp_path / "big.img", header_for(raw), raw)
    out = tmp_path / "out.raw"
    out.write_bytes(b"old raw image")
    p = subprocess.run([*command("oxboot"), "extract", str(img), "-o", str(out)],
                       capture_output=True, timeout=60, preexec_fn=_small_files)
    r = Run(p.returncode, p.stdout.decode(), p.stderr.decode())
    one_line_error(r)
    assert out.read_bytes() == b"old raw image"
    assert temps(tmp_path) == []


class ReadGate:
    """Holds each read(2) of one file until the test lets it through:
    fanotify permission events (FAN_ACCESS_PERM) make the reader wait in
    the kernel for our answer. Closing the gate lets everything through."""

    FAN_CLOEXEC, FAN_CLASS_CONTENT, FAN_ACCESS_PERM = 0x1, 0x4, 0x20000
    FAN_MARK_ADD, FAN_ALLOW = 0x1, 0x1
    EVENT = struct.Struct("=IBBHQii")  # struct fanotify_event_metadata

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64,
                                       ctypes.c_int, ctypes.c_char_p]
        self.fd = libc.fanotify_init(self.FAN_CLOEXEC | self.FAN_CLASS_CONTENT, os.O_RDONLY)
        if self.fd < 0:
            pytest.fail(f"fanotify_init: {os.strerror(ctypes.get_errno())}")
        if libc.fanotify_mark(self.fd, self.FAN_MARK_ADD, self.FAN_ACCESS_PERM, -100,
                              os.fsencode(path)) != 0:
            err = ctypes.get_errno()
            self.close()
            pytest.fail(f"fanotify_mark: {os.strerror(err)}")

    def next_read(self, timeout: float = 20) -> int:
        """Wait for the next read of the file; returns the reader's pid. The
        read waits until :meth:`allow` (or :meth:`close`)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        assert ready, "no read of the input within the timeout"
        buf = os.read(self.fd, self.EVENT.size)  # one event at a time
        _, _, _, _, mask, self._event_fd, pid = self.EVENT.unpack(buf)
        assert mask & self.FAN_ACCESS_PERM, hex(mask)
        return pid

    def allow(self) -> None:
        os.write(self.fd, struct.pack("=iI", self._event_fd, self.FAN_ALLOW))
        os.close(self._event_fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@pytest.mark.parametrize("codec", ["none", "zlib"])
@pytest.mark.parametrize("change", ["grow", "shrink", "shrink-below-read"])
def test_input_changing_size_while_read(tmp_path: Path, codec: str, change: str) -> None:
    """The input file grows or shrinks after mkimage has read 3 of its
    8 MiB. Deterministic: each of mkimage's reads waits for the test's
    go-ahead (fanotify), and the 4th waits while the file changes."""
    if os.geteuid() != 0:
        pytest.skip("fanotify permission events need root (CI runs as root)")
    size = 8 * MIB + 4096
    src = tmp_path / "in.raw"
    src.write_bytes(noise(size, seed=8))
    img, csum = tmp_path / "out.img", tmp_path / "out.csum"
    img.write_bytes(OLD_IMG)
    csum.write_bytes(OLD_CSUM)
    gate = ReadGate(src)
    p = None
    try:
        p = subprocess.Popen([*command("mkimage"), "-i", str(src), "-o", str(img), "-O",
                              str(csum), "--codec", codec],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3):  # 3 reads of 1 MiB
            assert gate.next_read() == p.pid
            gate.allow()
        assert gate.next_read() == p.pid  # the 4th read waits
        assert temps(tmp_path), "mkimage reads before it creates its output?"
        if change == "grow":
            with open(src, "ab") as f:
                f.write(b"more" * 1000)
        elif change == "shrink":
            os.truncate(src, 5 * MIB + 17)
        else:
            os.truncate(src, 2 * MIB)  # less than was read already
        gate.allow()
        gate.close()
        out, err = p.communicate(timeout=60)
    finally:
        gate.close()
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
    r = Run(p.returncode, out.decode(), err.decode())
    one_line_error(r)
    assert r.status == 1 and r.stdout == ""
    now = src.stat().st_size
    read = {"grow": now, "shrink": now, "shrink-below-read": 3 * MIB}[change]
    assert f"input changed size while being read ({size} bytes, then {read})" in r.stderr
    assert img.read_bytes() == OLD_IMG and csum.read_bytes() == OLD_CSUM
    assert temps(tmp_path) == []


class SmallDisk:
    """A small tmpfs (a disk that fills up), mounted in a private mount
    namespace held by one process: the tools run in that namespace
    (nsenter), the test reaches its files through /proc/PID/root. Nothing
    is mounted where anyone else looks, and the mount goes with the process
    even if the test run is killed."""

    def __init__(self, where: Path, size: str = "512k") -> None:
        where.mkdir()
        self.path = where
        script = ('mount -t tmpfs -o "size=$1,mode=0755" oxboot-test "$2" && echo ready '
                  '&& exec sleep 600')
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
             size, str(where)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.close()
            pytest.fail(f"cannot mount a tmpfs in a new mount namespace: {line!r} "
                        f"{self.proc.stderr.read() if self.proc.stderr else ''}")
        # Not visible from here.
        assert str(where) not in Path("/proc/self/mountinfo").read_text()

    def outside(self, name: str) -> Path:
        """`name` on the tmpfs, as the test (outside the namespace) reaches it."""
        return Path(f"/proc/{self.proc.pid}/root") / self.path.relative_to("/") / name

    def run(self, args: list[str], timeout: float = 60) -> Run:
        """A console script run where the tmpfs is mounted."""
        p = subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "--",
                            *command(args[0]), *args[1:]], capture_output=True, timeout=timeout)
        return Run(p.returncode, p.stdout.decode(), p.stderr.decode())

    def remount_read_only(self) -> None:
        subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "--", "mount", "-o",
                        "remount,ro", str(self.path)], check=True, capture_output=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 512 KiB tmpfs at tmp_path/disk, mounted for the tools only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    disk = SmallDisk(tmp_path / "disk")
    try:
        yield disk
    finally:
        disk.close()


@pytest.mark.parametrize("codec", ["none", "zlib", "zstd"])
def test_mkimage_full_disk(small_disk: SmallDisk, tmp_path: Path, codec: str) -> None:
    """A real ENOSPC half way through: a 1 MiB image onto a 512 KiB tmpfs."""
    src = tmp_path / "in.raw"
    src.write_bytes(noise(MIB, seed=5))  # does not compress: every codec writes ~1 MiB
    small_disk.outside("out.img").write_bytes(OLD_IMG)
    small_disk.outside("out.csum").write_bytes(OLD_CSUM)
    img, csum = small_disk.path / "out.img", small_disk.path / "out.csum"
    r = small_disk.run(["mkimage", "-i", str(src), "-o", str(img), "-O", str(csum),
                        "--codec", codec])
    one_line_error(r)
    assert r.status == 1 and r.stdout == ""
    assert f"{img}: No space left on device" in r.stderr
    assert small_disk.outside("out.img").read_bytes() == OLD_IMG
    assert small_disk.outside("out.csum").read_bytes() == OLD_CSUM
    assert sorted(p.name for p in small_disk.outside("").iterdir()) == ["out.csum", "out.img"]
    # The space is free again: an image that fits is written.
    src.write_bytes(noise(256 * 1024, seed=5))
    r = small_disk.run(["mkimage", "-i", str(src), "-o", str(img), "--codec", codec])
    assert r.status == 0, r.stderr
    assert verify_image(small_disk.outside("out.img")).header.image_size == 256 * 1024


@pytest.mark.parametrize("codec", ["none", "zlib", "zstd"])
def test_extract_full_disk(small_disk: SmallDisk, images: dict[str, Path], codec: str) -> None:
    small_disk.outside("out.raw").write_bytes(b"old raw image")
    out = small_disk.path / "out.raw"
    r = small_disk.run(["oxboot", "extract", str(images[codec]), "-o", str(out)])
    one_line_error(r)
    assert r.status == 1 and r.stdout == ""
    assert f"{out}: No space left on device" in r.stderr
    assert small_disk.outside("out.raw").read_bytes() == b"old raw image"
    assert [p.name for p in small_disk.outside("").iterdir()] == ["out.raw"]


@pytest.mark.parametrize("tool", ["mkimage", "extract"])
@pytest.mark.parametrize("how", ["mode-555", "read-only-mount"])
def test_read_only_output_directory(request: pytest.FixtureRequest, images: dict[str, Path],
                                    tmp_path: Path, tool: str, how: str) -> None:
    """A directory the tool may not write in (as root too: without the
    capabilities that override file modes), or a read-only file system."""
    src = tmp_path / "in.raw"
    src.write_bytes(noise(64 * 1024))
    if how == "mode-555":
        out_dir = outside = tmp_path / "ro"
        out_dir.mkdir()
        run, why = run_without_dac, "Permission denied"
    else:
        disk: SmallDisk = request.getfixturevalue("small_disk")
        out_dir, outside = disk.path, disk.outside("")
        run, why = disk.run, "Read-only file system"
    (outside / "out.img").write_bytes(OLD_IMG)
    (outside / "out.csum").write_bytes(OLD_CSUM)
    if how == "mode-555":
        out_dir.chmod(0o555)
    else:
        disk.remount_read_only()
    try:
        if tool == "mkimage":
            args = ["mkimage", "-i", str(src), "-o", str(out_dir / "out.img"), "-O",
                    str(out_dir / "out.csum"), "-z"]
        else:
            args = ["oxboot", "extract", str(images["zlib"]), "-o", str(out_dir / "out.img")]
        r = run(args)
    finally:
        if how == "mode-555":
            out_dir.chmod(0o755)
    one_line_error(r)
    assert r.status == 1 and r.stdout == ""
    assert f"{out_dir / 'out.img'}: {why}" in r.stderr
    assert (outside / "out.img").read_bytes() == OLD_IMG
    assert (outside / "out.csum").read_bytes() == OLD_CSUM
    assert sorted(p.name for p in outside.iterdir()) == ["out.csum", "out.img"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("codec", [["-z"], ["--codec", "none"], ["--codec", "zstd"]],
                         ids=["z", "none", "zstd"])
def test_signal_mid_run(tmp_path: Path, sig: int, codec: list[str]) -> None:
    img = tmp_path / "OUT"
    img.write_bytes(OLD_IMG)
    p = subprocess.Popen([*command("mkimage"), "-i", "-", "-o", str(img), *codec],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=tmp_path)
    try:
        assert p.stdin is not None
        # More than one 8 MiB read block, so compressor and writer are busy.
        chunk = noise(MIB, seed=3)
        for _ in range(10):
            p.stdin.write(chunk)
        p.stdin.flush()
        deadline = time.monotonic() + 20
        while not temps(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert temps(tmp_path), "mkimage never started writing its temporary file"
        time.sleep(0.2)
        assert p.poll() is None, "mkimage ended while its input was still open"
        p.send_signal(sig)
        _, err = p.communicate(timeout=30)  # closes stdin only after the signal
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    r = Run(p.returncode, "", err.decode())
    one_line_error(r)
    assert r.status != 0
    assert img.read_bytes() == OLD_IMG
    assert temps(tmp_path) == []
    assert sorted(q.name for q in tmp_path.iterdir()) == ["OUT"]


# ---- lookimage -------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(raw_1m: bytes, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same raw image stored each way (read-only: tests copy to damage)."""
    tmp_path = tmp_path_factory.mktemp("images")
    out = {}
    for codec in Codec:
        out[codec.value] = tmp_path / f"{codec.value}.img"
        build_image(_write(tmp_path / "in.raw", raw_1m), out[codec.value], codec=codec,
                    image_name=f"img-{codec.value}")
    (tmp_path / "in.raw").unlink()
    return out


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_lookimage_json(images: dict[str, Path], raw_1m: bytes) -> None:
    for codec, img in images.items():
        r = lookimage("--json", img)
        assert r.status == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["checksum_verified"] is True
        assert out["path"] == str(img)
        assert out["header"]["codec"] == codec
        assert out["header"]["sha256"] == hashlib.sha256(raw_1m).hexdigest()
        assert out["header"]["image_size"] == len(raw_1m)
        assert out["header"]["image_name"] == f"img-{codec}"
        r = lookimage("--json", "-s", img)
        assert r.status == 0
        out = json.loads(r.stdout)
        assert out["checksum_verified"] is False
        assert out["header"] == read_header(img).as_dict()


def test_lookimage_text(images: dict[str, Path], raw_1m: bytes) -> None:
    r = lookimage(images["zlib"])
    h = read_header(images["zlib"])
    assert r.status == 0 and r.stderr == ""
    assert r.stdout == h.describe()
    assert r.stdout.splitlines()[1] == "flags = 0x1 (COMPRESSED)"
    assert re.fullmatch(r"ratio = \d+\.\d\dx", r.stdout.splitlines()[-1])
    r = lookimage(images["none"])
    assert r.status == 0 and r.stdout == read_header(images["none"]).describe()
    assert "ratio" not in r.stdout


def test_lookimage_skip_checksum_does_not_read_data(images: dict[str, Path],
                                                    tmp_path: Path) -> None:
    for codec, img in images.items():
        head = img.read_bytes()[:HEADER_SIZE]
        for data in (b"", b"garbage" * 1000):
            bad = _write(tmp_path / f"headonly-{codec}.img", head + data)
            r = lookimage("-s", bad)
            assert r.status == 0, r.stderr
            assert r.stdout == read_header(img).describe()
            r = lookimage("--skip-checksum", bad)
            assert r.status == 0
            one_line_error(lookimage(bad))
    # A header that promises 4 GiB of data the file does not have: -s is instant.
    h = Header(image_size=4 << 30, sha256=bytes(32))
    big = write_image(tmp_path / "big.img", h, b"")
    t = time.monotonic()
    assert lookimage("-s", big).status == 0
    assert time.monotonic() - t < 10


def test_v1_image(raw_1m: bytes, tmp_path: Path) -> None:
    h = Header(version=1, image_size=len(raw_1m), target_size=8 * MIB,
               sha256=hashlib.sha256(raw_1m).digest(), dataset="rpool/ROOT/old")
    img = write_image(tmp_path / "v1.img", h, raw_1m)
    raw = img.read_bytes()
    assert raw[4:8] == b"\x01\0\0\0" and raw[8:16] == len(raw_1m).to_bytes(8, "little")
    r = lookimage(img)
    assert r.status == 0, r.stderr
    assert r.stdout == (
        "image name = \n"
        "flags = 0x0 ((empty))\n"
        f"data size = {len(raw_1m)}\n"
        f"image size = {len(raw_1m)}\n"
        f"target size = {8 * MIB}\n"
        f"image sum = {hashlib.sha256(raw_1m).hexdigest()}\n"
        "dataset name = rpool/ROOT/old\n"
    )
    res = verify_image(img)
    assert res.checked and res.header.version == 1 and res.header.flags == 0
    assert json.loads(lookimage("--json", img).stdout)["header"]["version"] == 1
    r = oxboot("extract", img, "-o", tmp_path / "v1.raw")
    assert r.status == 0, r.stderr
    assert (tmp_path / "v1.raw").read_bytes() == raw_1m
    # A v1 image with a bad sum is still refused.
    bad = bytearray(raw)
    bad[HEADER_SIZE + 1000] ^= 1
    one_line_error(lookimage(_write(tmp_path / "v1bad.img", bytes(bad))))


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_zstd_corrupt_frame(images: dict[str, Path], tmp_path: Path, where: str) -> None:
    data = bytearray(images["zstd"].read_bytes())
    pos = {"start": HEADER_SIZE + 1, "middle": (HEADER_SIZE + len(data)) // 2,
           "end": len(data) - 2}[where]
    data[pos] ^= 0x55
    img = _write(tmp_path / "bad.img", bytes(data))
    r = lookimage(img)
    one_line_error(r)
    assert r.status == 1
    with pytest.raises(ImageError):
        verify_image(img)


def test_zstd_truncated_content_is_refused(images: dict[str, Path], tmp_path: Path) -> None:
    full = images["zstd"].read_bytes()
    h = Header.parse(full)
    cut = h.data_size // 2
    img = write_image(tmp_path / "t.img", dataclasses.replace(h, data_size=cut),
                      full[HEADER_SIZE:HEADER_SIZE + cut])
    one_line_error(lookimage(img))


@pytest.mark.parametrize("fields", [
    {"image_size": 1 << 63, "data_size": 1 << 63, "flags": 0},
    {"image_size": 1 << 63, "data_size": 1 << 63, "flags": 1},
    {"image_size": 4 << 30, "data_size": 1 << 63, "flags": 1},
    {"image_size": 4 << 30, "data_size": 1 << 63, "flags": 2},
    {"image_size": 4 << 30, "data_size": (1 << 64) - 1, "flags": 0},
    {"image_size": (1 << 64) - 1, "data_size": 1, "flags": 1},
], ids=["none-2^63", "zlib-2^63", "zlib-data-2^63", "zstd-data-2^63", "none-data-2^64",
        "zlib-image-2^64"])
def test_huge_sizes_fail_fast_in_bounded_memory(tmp_path: Path, fields: dict[str, int]) -> None:
    h = Header(sha256=bytes(32), target_size=(1 << 64) - 1, **fields)
    img = write_image(tmp_path / "huge.img", h, zlib.compress(bytes(100_000)))
    for args in (["lookimage", str(img)], ["lookimage", "-s", str(img)],
                 ["lookimage", "--json", str(img)],
                 ["oxboot", "extract", str(img), "-o", str(tmp_path / "x.raw")]):
        t = time.monotonic()
        r = run_limited(args, timeout=30)
        assert time.monotonic() - t < 20
        one_line_error(r)
        assert r.status == 1
        assert "MemoryError" not in r.stderr
    assert not (tmp_path / "x.raw").exists() and temps(tmp_path) == []
    with pytest.raises(ImageError):
        verify_image(img)


@pytest.mark.parametrize("codec", ["zlib", "zstd"])
def test_stream_inflating_beyond_image_size(tmp_path: Path, codec: str) -> None:
    """A small stream that inflates to 64 MiB, in a header that says 1 MiB:
    refused after about 1 MiB, under a 1 GiB address-space cap."""
    bomb = bytes(64 * MIB)
    data = zlib.compress(bomb, 9) if codec == "zlib" else \
        zstandard.ZstdCompressor(level=3).compress(bomb)
    del bomb
    raw = bytes(MIB)
    h = header_for(raw, data, flags=1 if codec == "zlib" else 2)
    img = write_image(tmp_path / "bomb.img", h, data)
    for args in (["lookimage", str(img)], ["oxboot", "extract", str(img), "-o",
                                           str(tmp_path / "x.raw")]):
        t = time.monotonic()
        r = run_limited(args)
        assert time.monotonic() - t < 20
        one_line_error(r)
        assert "more than the image size" in r.stderr
    assert not (tmp_path / "x.raw").exists()
    assert temps(tmp_path) == []


def test_zlib_trailing_bytes_after_stream(images: dict[str, Path], tmp_path: Path) -> None:
    full = images["zlib"].read_bytes()
    h = Header.parse(full)
    data = full[HEADER_SIZE:]
    for extra in (b"\0", b"junk", zlib.compress(b"second stream")):
        # data_size covers the extra bytes, so only the stream's end can tell.
        img = write_image(tmp_path / "trail.img",
                          dataclasses.replace(h, data_size=len(data) + len(extra)), data + extra)
        r = lookimage(img)
        one_line_error(r)
        assert "stray" in r.stderr
        # Bytes past data_size (the file is longer than the header says).
        img = write_image(tmp_path / "long.img", h, data + extra)
        one_line_error(lookimage(img))


def test_zstd_junk_after_frame(images: dict[str, Path], tmp_path: Path) -> None:
    full = images["zstd"].read_bytes()
    h = Header.parse(full)
    data = full[HEADER_SIZE:] + b"\0"
    img = write_image(tmp_path / "trail.img", dataclasses.replace(h, data_size=len(data)), data)
    one_line_error(lookimage(img))
    img = write_image(tmp_path / "long.img", h, data)  # past data_size
    one_line_error(lookimage(img))


@pytest.mark.parametrize("cut", [-1, 1])
@pytest.mark.parametrize("codec", list(Codec))
def test_server_and_lookimage_share_the_layout_rule(images: dict[str, Path], tmp_path: Path,
                                                    codec: Codec, cut: int) -> None:
    """A file one byte short of, or one byte past, the data its header
    announces: the boot server refuses it in lookimage's words (one rule,
    format.check_layout), whatever the codec; but it serves the data of an
    uncompressed image with a tail (tests/netns/test_netboot.py: the tail never)."""
    from oxboot._native import HAS_NET

    if not HAS_NET:
        pytest.skip("the boot server needs the network core")
    from oxboot.serve import load_image

    full = images[codec.value].read_bytes()
    img = tmp_path / "bad.img"
    img.write_bytes(full[:cut] if cut < 0 else full + bytes(cut))
    with pytest.raises(ImageError) as looked:
        verify_image(img)
    if codec is Codec.NONE and cut > 0:
        assert load_image(img, str(tmp_path)).size == read_header(img).image_size
        return
    with pytest.raises(ImageError) as served:
        load_image(img, str(tmp_path))
    assert str(served.value) == f"{img}: {looked.value}"


ZSTD_TRAILERS = {
    # The first 4 bytes of a new frame (its magic), nothing more.
    "frame-magic": b"\x28\xb5\x2f\xfd",
    # A complete skippable frame (magic 0x184D2A50, 4 bytes of content).
    "skippable-frame": b"\x50\x2a\x4d\x18\x04\x00\x00\x00abcd",
}


@pytest.mark.parametrize("extra", sorted(ZSTD_TRAILERS))
def test_zstd_trailing_bytes_after_frame(images: dict[str, Path], tmp_path: Path,
                                         extra: str) -> None:
    full = images["zstd"].read_bytes()
    h = Header.parse(full)
    data = full[HEADER_SIZE:] + ZSTD_TRAILERS[extra]
    img = write_image(tmp_path / "trail.img", dataclasses.replace(h, data_size=len(data)), data)
    with pytest.raises(ImageError):
        verify_image(img)


@pytest.mark.parametrize("cut", [1, 3])  # inside the frame's 4-byte content checksum
def test_zstd_truncated_frame_is_refused(images: dict[str, Path], tmp_path: Path,
                                         cut: int) -> None:
    full = images["zstd"].read_bytes()
    h = Header.parse(full)
    data = full[HEADER_SIZE:-cut]
    img = write_image(tmp_path / "cut.img", dataclasses.replace(h, data_size=len(data)), data)
    with pytest.raises(ImageError):
        verify_image(img)


# ---- extract ---------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "zlib", "zstd"])
def test_extract_writes_the_raw_image(images: dict[str, Path], raw_1m: bytes, tmp_path: Path,
                                      codec: str) -> None:
    out = tmp_path / "out" / "x.raw"
    out.parent.mkdir()
    out.write_bytes(b"old")
    r = oxboot("extract", images[codec], "-o", out)
    assert r.status == 0, r.stderr
    assert r.stdout == f"ok, {len(raw_1m)} bytes written to {out}\n"
    assert out.read_bytes() == raw_1m
    assert temps(out.parent) == []
    r = oxboot("extract", images[codec], "-o", out, "--json")
    assert r.status == 0
    assert json.loads(r.stdout)["header"]["sha256"] == hashlib.sha256(raw_1m).hexdigest()
    # Python API too.
    extract_image(images[codec], tmp_path / "api.raw")
    assert (tmp_path / "api.raw").read_bytes() == raw_1m


@pytest.mark.parametrize("codec", ["none", "zlib", "zstd"])
@pytest.mark.parametrize("damage", ["data", "sum", "magic", "truncated"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_extract_corrupt_image(images: dict[str, Path], tmp_path: Path, codec: str,
                               damage: str, existing: bool) -> None:
    data = bytearray(images[codec].read_bytes())
    if damage == "data":
        data[len(data) - 100] ^= 0x10
    elif damage == "sum":
        data[40] ^= 1
    elif damage == "magic":
        data[0] ^= 1
    else:
        del data[-10:]
    img = _write(tmp_path / "bad.img", bytes(data))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.raw"
    if existing:
        out.write_bytes(b"old raw image")
    r = oxboot("extract", img, "-o", out)
    if r.status == 0 and damage == "data" and codec != "none":
        # A flipped bit in compressed data can leave the output unchanged
        # (say, the distance of a match inside a run of zeros): then the
        # image is still valid, and extract must have written exactly it.
        assert out.read_bytes() == raw_image_of(images[codec])
        return
    one_line_error(r)
    assert r.status == 1
    assert r.stdout == ""
    if existing:
        assert out.read_bytes() == b"old raw image"
    else:
        assert not out.exists()
    assert temps(out_dir) == [] and sorted(p.name for p in out_dir.iterdir()) == (
        ["x.raw"] if existing else [])


def raw_image_of(image: Path) -> bytes:
    """The raw bytes of a good image, decoded by the reference libraries."""
    data = image.read_bytes()
    header = Header.parse(data)
    payload = data[4096:4096 + header.data_size]
    if header.codec is Codec.ZLIB:
        return zlib.decompress(payload)
    if header.codec is Codec.ZSTD:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(payload)
    return payload


def test_extract_bad_arguments(images: dict[str, Path], tmp_path: Path) -> None:
    one_line_error(oxboot("extract", images["none"]))  # no -o
    one_line_error(oxboot("extract", tmp_path / "missing.img", "-o", tmp_path / "x.raw"))
    one_line_error(oxboot("extract", images["none"], "-o", tmp_path / "no" / "x.raw"))
    assert not (tmp_path / "x.raw").exists()


# ---- the oxboot entry point --------------------------------------------------------


def test_oxboot_without_arguments() -> None:
    r = oxboot()
    assert r.status != 0
    assert "Traceback" not in r.stderr
    assert "usage: oxboot" in r.stdout + r.stderr
    for name in ("mkimage", "lookimage", "extract"):
        assert name in r.stdout + r.stderr


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_oxboot_help(flag: str) -> None:
    r = oxboot(flag)
    assert r.status == 0
    assert r.stdout.startswith("usage: oxboot")
    for name in ("mkimage", "lookimage", "extract"):
        assert f"  {name} " in r.stdout


def test_oxboot_unknown_subcommand() -> None:
    r = oxboot("frobnicate", "x")
    assert r.status == 1
    assert r.stderr.splitlines()[0].startswith("Error: unknown command 'frobnicate'")
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_oxboot_unknown_subcommand_is_one_line() -> None:
    one_line_error(oxboot("frobnicate"))


@pytest.mark.parametrize("how", [["oxboot", "mkimage"], ["mkimage"]])
def test_mkimage_help_mentions_the_default_level(how: list[str]) -> None:
    r = run_cli([*how, "--help"])
    assert r.status == 0
    text = " ".join(r.stdout.split())
    assert f"default {DEFAULT_ZLIB_LEVEL}" in text
    for flag in ("--level", "--threads", "--codec", "--pad-netboot", "--dataset", "-z"):
        assert flag in text


def test_subcommand_errors_are_one_line(tmp_path: Path) -> None:
    one_line_error(oxboot("mkimage"))
    one_line_error(oxboot("mkimage", "-i", tmp_path / "x"))
    one_line_error(oxboot("lookimage"))
    one_line_error(oxboot("lookimage", "--bogus", tmp_path / "x"))
    one_line_error(oxboot("lookimage", tmp_path / "missing.img"))
    one_line_error(oxboot("lookimage", tmp_path))  # a directory


@pytest.mark.parametrize("compress", [False, True])
def test_verify_unmaps_its_buffers(raw_10m: bytes, tmp_path: Path, compress: bool,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-running boot server verifies every image it loads: the
    verification's buffers (12-16 MiB) must be unmapped when it returns, not
    whenever the cyclic garbage collector next runs (a pool and its consumer
    refer to each other). Each buffer verify maps is followed to its end.
    (Not by the process's mappings: glibc's per-thread malloc arenas keep
    what threads freed, more of it the busier the machine.)"""
    import gc
    import mmap

    from oxboot import pipeline

    raw = tmp_path / "raw"
    raw.write_bytes(raw_10m)
    img = tmp_path / "img"
    build_image(raw, img, codec=Codec.ZLIB if compress else Codec.NONE)
    mapped: list[mmap.mmap] = []

    class Tracked(mmap.mmap):
        def __new__(cls, *args: object, **kw: object) -> Tracked:
            m = super().__new__(cls, *args, **kw)  # type: ignore[misc]
            mapped.append(m)
            return m

    monkeypatch.setattr(pipeline, "mmap", SimpleNamespace(mmap=Tracked,
                                                          MAP_PRIVATE=mmap.MAP_PRIVATE))
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            verify_image(img, progress=False)
        still = [m for m in mapped if not m.closed]
    finally:
        gc.enable()
    assert mapped, "verify mapped no buffer through the pool"
    assert not still, f"{len(still)} of {len(mapped)} buffers still mapped"
