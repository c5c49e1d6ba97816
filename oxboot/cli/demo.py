"""oxboot demo: the main job end to end on one machine.

Makes two network namespaces joined by a veth pair, builds an ext4
filesystem of real files (``mke2fs -d``), turns it into a compressed boot
image, serves it with ``bootserver`` in one namespace and boots it with
the sled emulator in the other, then checks what arrived. Everything it
creates is removed at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from oxboot.build import build_image
from oxboot.cli.common import Parser, UsageError, run_network_command
from oxboot.errors import BootError
from oxboot.format import MIB, Codec
from oxboot.netlab import Lab, wait_for
from oxboot.progress import human

SOURCES = ("/usr/share/doc", "/usr/share/perl5", "/usr/lib/python3", "/usr/share/zoneinfo",
           "/usr/bin")


def build_parser(prog: str = "oxboot demo") -> Parser:
    p = Parser(prog=prog, description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--size-mib", type=int, default=64,
                   help="filesystem size in MiB (default 64)")
    p.add_argument("--codec", choices=[c.value for c in Codec], default="zlib",
                   help="how the image is stored (default zlib)")
    p.add_argument("--keep", metavar="DIR", help="keep the image and the received raw copy here")
    return p


def make_filesystem(out: Path, size: int, staging: Path) -> int:
    """An ext4 image of real files from this machine; returns files copied."""
    if shutil.which("mke2fs") is None:
        raise BootError("mke2fs not found (install e2fsprogs)")
    budget = int(size * 0.6)
    count = 0
    for root in SOURCES:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                src = Path(dirpath, name)
                try:
                    if not src.is_file() or src.is_symlink():
                        continue
                    n = src.stat().st_size
                    if n > budget:
                        continue
                    dst = staging / src.relative_to("/")
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
                except OSError:
                    continue
                budget -= n
                count += 1
                if budget < 64 * 1024:
                    break
            if budget < 64 * 1024:
                break
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-d", str(staging), "-F",
                    str(out), f"{size // 1024}k"], check=True, capture_output=True)
    return count


def _say(text: str) -> None:
    sys.stdout.write(f"==> {text}\n")
    sys.stdout.flush()


def _body(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise UsageError("the demo creates network namespaces: run it as root")
    if args.size_mib < 2:
        raise UsageError("--size-mib must be at least 2")
    size = args.size_mib * MIB
    lab = Lab()
    work = Path(tempfile.mkdtemp(prefix="oxboot-demo-"))
    server = None
    try:
        _say(f"building a {args.size_mib} MiB ext4 filesystem of real files")
        raw = work / "rootfs.raw"
        files = make_filesystem(raw, size, work / "staging")
        shutil.rmtree(work / "staging")
        _say(f"  {files} files from {', '.join(SOURCES)}")

        _say(f"mkimage ({args.codec}, padded for netboot)")
        img = work / "ramdisk.img"
        result = build_image(raw, img, codec=Codec(args.codec), image_name="oxboot-demo",
                             pad_netboot=True, target_size=max(size, 64 * MIB))
        h = result.header
        _say(f"  {human(h.image_size)} -> {human(h.data_size)} in {result.seconds:.2f} s, "
             f"sha256 {h.sha256.hex()}")

        _say("network: two namespaces joined by a veth pair")
        srv, sled = lab.pair()
        _say(f"  server {srv.ns}/{srv.ifname} {srv.mac()}, sled {sled.ns}/{sled.ifname} "
             f"{sled.mac()}")

        log = work / "bootserver.log"
        me = [sys.executable, "-m", "oxboot.cli.main"]
        server = lab.start(srv, [*me, "bootserver", "-s", "--json", srv.ifname, str(img),
                                 sled.mac()], log)
        wait_for(lambda: server.poll() is not None or '"event": "image"' in log.read_text(),
                 60, "the boot server")
        if server.poll() is not None:
            raise BootError(f"bootserver failed: {log.read_text().strip()}")
        _say("bootserver is up; booting the emulated sled")

        saved = work / "received.raw"
        started = time.monotonic()
        boot = subprocess.run(
            sled.cmd([*me, "netboot", sled.ifname, "--want-sha256", h.sha256.hex(),
                      "--save", str(saved), "-t", "120"]),
            stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - started
        if boot.returncode != 0:
            raise BootError("the sled did not boot (see above)")
        server.wait(10)
        events = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        same = saved.read_bytes() == raw.read_bytes() + bytes(h.image_size - raw.stat().st_size)
        _say("summary")
        print(f"  image     {h.image_size} bytes raw, {h.data_size} stored ({h.codec})")
        print(f"  netboot   {elapsed:.2f} s wall, {h.image_size / elapsed / 1e6:.1f} MB/s")
        print(f"  server    {', '.join(e['event'] for e in events if e['event'] != 'image')}")
        print(f"  verified  sha256 by the sled: yes; received bytes equal the filesystem: "
              f"{'yes' if same else 'NO'}")
        if args.keep:
            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(img, keep / img.name)
            shutil.copy(saved, keep / saved.name)
        return 0 if same else 1
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None, prog: str = "oxboot demo") -> int:
    return run_network_command(prog, build_parser, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
