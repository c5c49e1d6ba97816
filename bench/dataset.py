"""Build (once, cached) a reproducible raw ext4 image full of real files.

The image is the benchmark input for compression/hash measurements: a raw
ext4 filesystem, like the ones the ramdisk tooling packs, filled to ~70% with
regular files copied (hard-linked) from this machine's /usr tree.

Reproducibility: on the same machine (same /usr contents), rebuilding gives
byte-identical output.  mke2fs gets a fixed UUID, a fixed directory hash seed
and a fixed fake clock; inode timestamps (which ``mke2fs -d`` copies from the
staging tree, and ctime cannot be set from user space) are normalized
afterwards with ``debugfs``.

Usage::

    python3 bench/dataset.py --size-mib 1024 [--cache-dir DIR] [--verify]

Library use::

    from bench.dataset import ensure_dataset
    image = ensure_dataset(256)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Bump whenever the selection or build recipe changes: it invalidates caches.
GENERATOR_VERSION = 1

BLOCK_SIZE = 4096
FILL_FRACTION = 0.70
# Fixed identity so that mke2fs output is reproducible.
FS_UUID = "0c5b0070-0000-4000-8000-00000000b007"
HASH_SEED = "0c5b0070-0000-4000-8000-00000000a5ed"
FAKE_TIME = 1_700_000_000  # 2023-11-14T22:13:20Z
# Source trees and the share of the data budget each one gets.  Any unused
# share rolls over to the next tree.  Paths inside the image mirror the host.
SOURCE_ROOTS: tuple[tuple[str, float], ...] = (
    ("/usr/bin", 0.20),
    ("/usr/lib", 0.55),
    ("/usr/share", 0.25),
)
# A single file may take at most this fraction of the data budget, so small
# (CI) images still hold a mix of files rather than one large library.
MAX_FILE_FRACTION = 1 / 8
# Stop walking a tree once its remaining quota is smaller than this.
QUOTA_SLACK = 64 * 1024
# Warn when more than this fraction of the image's 4 KiB blocks are all-zero.
MAX_ZERO_FRACTION = 0.5

DEFAULT_CACHE_DIR = Path("~/.cache/oxboot-bench")
CACHE_ENV = "OXBOOT_BENCH_CACHE"


@dataclass
class Selection:
    """Files chosen for the image, as paths relative to ``/``."""

    files: list[str] = field(default_factory=list)
    dirs: set[str] = field(default_factory=set)
    data_bytes: int = 0
    block_bytes: int = 0
    skipped_unreadable: int = 0
    skipped_name: int = 0
    skipped_large: int = 0


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def image_name(size_mib: int) -> str:
    return f"ext4-{size_mib}m.img"


def _blocks(size: int) -> int:
    return -(-size // BLOCK_SIZE) * BLOCK_SIZE


def _debugfs_safe(name: str) -> bool:
    """Names that survive debugfs' command parser when double-quoted."""
    if '"' in name or "\\" in name:
        return False
    if not name.isprintable():
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes became surrogates
        return False
    return True


def _sorted_walk(root: str) -> Iterator[tuple[str, list[str]]]:
    """Deterministic top-down walk; does not follow symlinks."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        dirnames[:] = [d for d in dirnames if _debugfs_safe(d)]
        yield dirpath, sorted(filenames)


def _readable(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError:
        return False
    return True


def select_files(data_budget: int) -> Selection:
    sel = Selection()
    seen: set[tuple[int, int]] = set()
    max_file = max(int(data_budget * MAX_FILE_FRACTION), 1024 * 1024)
    carry = 0
    for root, share in SOURCE_ROOTS:
        quota = int(data_budget * share) + carry
        if not os.path.isdir(root):
            carry = quota
            continue
        for dirpath, filenames in _sorted_walk(root):
            if quota < QUOTA_SLACK:
                break
            for name in filenames:
                if quota < QUOTA_SLACK:
                    break
                path = os.path.join(dirpath, name)
                if not _debugfs_safe(name):
                    sel.skipped_name += 1
                    continue
                try:
                    st = os.lstat(path)
                except OSError:
                    sel.skipped_unreadable += 1
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:  # another name of an already chosen file
                    continue
                cost = _blocks(st.st_size)
                if st.st_size > max_file or cost > quota:
                    sel.skipped_large += 1
                    continue
                if not _readable(path):
                    sel.skipped_unreadable += 1
                    continue
                seen.add(key)
                rel = path.lstrip("/")
                sel.files.append(rel)
                parent = os.path.dirname(rel)
                while parent and parent not in sel.dirs:
                    sel.dirs.add(parent)
                    parent = os.path.dirname(parent)
                sel.data_bytes += st.st_size
                sel.block_bytes += cost
                quota -= cost
        carry = max(quota, 0)
    return sel


def _stage(sel: Selection, staging: Path) -> str:
    """Populate ``staging`` with hard links (or copies) of the selection."""
    for d in sorted(sel.dirs):
        (staging / d).mkdir(mode=0o755, exist_ok=True)
    method = "hardlink"
    for rel in sel.files:
        src = "/" + rel
        dst = staging / rel
        try:
            os.link(src, dst)
        except OSError:  # e.g. cache on another filesystem: copy with metadata
            shutil.copyfile(src, dst)
            st = os.lstat(src)
            with contextlib.suppress(PermissionError):
                os.chown(dst, st.st_uid, st.st_gid)  # before copystat: chown drops suid
            shutil.copystat(src, dst)  # mode, times, xattrs
            method = "hardlink+copy"
    return method


def _fake_time_env() -> dict[str, str]:
    env = dict(os.environ)
    env["E2FSPROGS_FAKE_TIME"] = str(FAKE_TIME)
    env["SOURCE_DATE_EPOCH"] = str(FAKE_TIME)
    return env


def _run(cmd: list[str]) -> str:
    """Run an e2fsprogs tool under the fixed fake clock; return its stderr."""
    proc = subprocess.run(cmd, env=_fake_time_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc.stderr


def _tool_version(tool: str) -> str:
    proc = subprocess.run([tool, "-V"], capture_output=True, text=True, check=False)
    return (proc.stderr or proc.stdout).splitlines()[0].strip() if proc.returncode == 0 else ""


def _normalize_times(image: Path, sel: Selection, workdir: Path) -> None:
    """Set atime/ctime/mtime of every inode we created to FAKE_TIME."""
    script = workdir / "debugfs.cmds"
    stamp = f"@{FAKE_TIME}"
    with script.open("w", encoding="utf-8") as f:
        for rel in ["", *sorted(sel.dirs), *sel.files]:
            target = f'"/{rel}"'
            for fld in ("atime", "ctime", "mtime", "crtime"):
                f.write(f"sif {target} {fld} {stamp}\n")
    err = _run(["debugfs", "-w", "-f", str(script), str(image)])
    problems = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if problems:
        raise RuntimeError("debugfs reported errors:\n" + "\n".join(problems[:20]))


def scan_image(path: Path) -> tuple[str, float]:
    """Return (sha256 hex, fraction of all-zero 4 KiB blocks)."""
    h = hashlib.sha256()
    zero_block = bytes(BLOCK_SIZE)
    zero = total = 0
    chunk = 256 * BLOCK_SIZE
    with path.open("rb") as f:
        while buf := f.read(chunk):
            h.update(buf)
            mv = memoryview(buf)
            for off in range(0, len(buf), BLOCK_SIZE):
                total += 1
                if mv[off : off + BLOCK_SIZE] == zero_block:
                    zero += 1
    return h.hexdigest(), (zero / total if total else 1.0)


def _build(size_mib: int, cache_dir: Path, image: Path, meta_path: Path) -> dict[str, object]:
    size_bytes = size_mib * 1024 * 1024
    sel = select_files(int(size_bytes * FILL_FRACTION))
    if not sel.files:
        raise RuntimeError("no readable files found under " + ", ".join(r for r, _ in SOURCE_ROOTS))
    # Enough inodes for every file and directory, with headroom.
    inodes = int((len(sel.files) + len(sel.dirs)) * 1.25) + 1024
    workdir = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
    # Temp image beside the final one (same directory => atomic rename).
    fd, tmp_name = tempfile.mkstemp(prefix=f".{image.name}.", suffix=".tmp", dir=cache_dir)
    os.fchmod(fd, 0o644)
    os.close(fd)
    tmp_image = Path(tmp_name)
    try:
        staging = workdir / "staging"
        staging.mkdir()
        method = _stage(sel, staging)
        cmd = [
            "mke2fs", "-q", "-t", "ext4", "-d", str(staging),
            "-U", FS_UUID,
            "-E", f"hash_seed={HASH_SEED},root_owner=0:0",
            "-b", str(BLOCK_SIZE), "-N", str(inodes),
            "-F", str(tmp_image), f"{size_mib}M",
        ]  # fmt: skip
        _run(cmd)
        _normalize_times(tmp_image, sel, workdir)
        if shutil.which("e2fsck"):
            _run(["e2fsck", "-fn", str(tmp_image)])
        sha, zero_frac = scan_image(tmp_image)
        meta: dict[str, object] = {
            "generator_version": GENERATOR_VERSION,
            "file": image.name,
            "size_mib": size_mib,
            "size_bytes": tmp_image.stat().st_size,
            "sha256": sha,
            "file_count": len(sel.files),
            "dir_count": len(sel.dirs),
            "file_data_bytes": sel.data_bytes,
            "file_data_fraction": round(sel.data_bytes / size_bytes, 4),
            "zero_block_fraction": round(zero_frac, 4),
            "skipped": {
                "unreadable": sel.skipped_unreadable,
                "unsafe_name": sel.skipped_name,
                "too_large": sel.skipped_large,
            },
            "how": {
                "sources": [{"root": r, "budget_share": s} for r, s in SOURCE_ROOTS],
                "selection": (
                    f"sorted top-down walk, regular files only, dedup by inode, "
                    f"per-root byte quota, file <= {MAX_FILE_FRACTION:.3f} x budget, "
                    f"stop at {FILL_FRACTION:.0%} of image size (4 KiB-rounded)"
                ),
                "staging": method,
                "mke2fs": " ".join(
                    "STAGING" if a == str(staging) else "FILE" if a == str(tmp_image) else a
                    for a in cmd
                ),
                "mke2fs_version": _tool_version("mke2fs"),
                "env": {"E2FSPROGS_FAKE_TIME": FAKE_TIME, "SOURCE_DATE_EPOCH": FAKE_TIME},
                "post": f"debugfs sif atime/ctime/mtime/crtime @{FAKE_TIME} on every inode",
                "host": os.uname().nodename,
            },
        }
        if zero_frac > MAX_ZERO_FRACTION:
            print(
                f"warning: {image.name}: {zero_frac:.1%} of 4 KiB blocks are all-zero",
                file=sys.stderr,
            )
        tmp_meta = workdir / meta_path.name
        tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # Image first: a sidecar never describes a missing or partial image.
        tmp_image.replace(image)
        tmp_meta.replace(meta_path)
        return meta
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        tmp_image.unlink(missing_ok=True)


def _load_meta(meta_path: Path) -> dict[str, object] | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _cached_ok(image: Path, meta: dict[str, object] | None, size_mib: int, verify: bool) -> bool:
    if meta is None or not image.is_file():
        return False
    if meta.get("generator_version") != GENERATOR_VERSION or meta.get("size_mib") != size_mib:
        return False
    if image.stat().st_size != meta.get("size_bytes"):
        return False
    return not verify or scan_image(image)[0] == meta.get("sha256")


def ensure_dataset(
    size_mib: int = 1024, cache_dir: Path | None = None, *, verify: bool = False
) -> Path:
    """Return the path of the cached ``ext4-<size>m.img``, building it if needed.

    ``verify`` re-hashes an existing image against its sidecar before reuse.
    """
    if size_mib < 16:
        raise ValueError("size_mib must be >= 16")
    cache = (cache_dir or default_cache_dir()).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    image = cache / image_name(size_mib)
    meta_path = image.with_suffix(".json")
    if _cached_ok(image, _load_meta(meta_path), size_mib, verify):
        return image
    with (cache / f".{image.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # serialize concurrent builders
        if not _cached_ok(image, _load_meta(meta_path), size_mib, verify):
            with contextlib.suppress(FileNotFoundError):
                image.unlink()
            _build(size_mib, cache, image, meta_path)
    return image


#: The shapes of helios-build's two images (issue 15), at full size; quick
#: mode builds them at 1/8 of this (conftest).
HOST_MIB = 1200
RECOVERY_MIB = 2000
#: Real files at the front of the recovery shape: an ext4 data set of this
#: size (70% full of files), then zeros.
RECOVERY_FILES_MIB = 256
#: The host shape's gzip -9 output is made from an ext4 data set of this
#: size, then repeated to fill the shape.
HOST_SOURCE_MIB = 256
SHAPE_VERSION = 1


def _ensure_shape(name: str, size_mib: int, make: Callable[[Path], None],
                  cache_dir: Path | None) -> Path:
    """The cached file `name`, else made by `make` into a temp file beside
    it and renamed into place (a sidecar records its size and version)."""
    cache = (cache_dir or default_cache_dir()).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / name
    meta_path = path.with_suffix(".json")

    def ok() -> bool:
        meta = _load_meta(meta_path)
        return (meta is not None and path.is_file() and meta.get("version") == SHAPE_VERSION
                and path.stat().st_size == meta.get("size_bytes") == size_mib << 20)

    if ok():
        return path
    with (cache / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ok():
            return path
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=cache)
        os.fchmod(fd, 0o644)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            make(tmp)
            with tmp.open("r+b") as f:
                f.truncate(size_mib << 20)
                os.fsync(f.fileno())
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        meta_path.write_text(json.dumps({"version": SHAPE_VERSION, "file": name,
                                         "size_bytes": size_mib << 20}) + "\n")
    return path


def ensure_host_shape(size_mib: int = HOST_MIB, source_mib: int = HOST_SOURCE_MIB,
                      cache_dir: Path | None = None) -> Path:
    """The helios **host** image's raw input: a 1200 MB ZFS pool with
    gzip-9 compression on, so nearly every block is deflate output. zpool
    and zfs are not on this machine; approximated by real ``gzip -9 -n``
    output of the ext4 data set of `source_mib` (real files), repeated to
    `size_mib`. The repeats are hundreds of MiB apart, beyond any codec's
    window, and the tools it measures (mkimage without -z: hash and copy)
    do the same work whatever the bytes are."""

    def make(tmp: Path) -> None:
        source = ensure_dataset(source_mib, cache_dir)
        unit = tmp.with_suffix(".gz")
        try:
            with unit.open("wb") as out:
                subprocess.run(["gzip", "-9", "-n", "-c", str(source)], stdout=out, check=True)
            piece = unit.read_bytes()
        finally:
            unit.unlink(missing_ok=True)
        left = size_mib << 20
        with tmp.open("wb") as f:
            while left > 0:
                f.write(piece[:left])
                left -= len(piece)

    return _ensure_shape(f"host-{size_mib}m-gz9-of-{source_mib}m.raw", size_mib, make, cache_dir)


def ensure_recovery_shape(size_mib: int = RECOVERY_MIB, files_mib: int = RECOVERY_FILES_MIB,
                          cache_dir: Path | None = None) -> Path:
    """The helios **recovery** image's raw input: a 2000 MB ZFS pool,
    compression off, trimmed, so a few hundred MB of files and then zeros.
    Approximated by the ext4 data set of `files_mib` (real files, 70% full)
    followed by zeros to `size_mib`."""

    def make(tmp: Path) -> None:
        shutil.copyfile(ensure_dataset(files_mib, cache_dir), tmp)  # then zeros (truncate)

    return _ensure_shape(f"recovery-{size_mib}m-ext4-{files_mib}m.raw", size_mib, make,
                         cache_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="image size (default 1024)")
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"cache directory (default ${CACHE_ENV} or {DEFAULT_CACHE_DIR})",
    )
    ap.add_argument("--verify", action="store_true", help="re-hash a cached image")
    args = ap.parse_args(argv)
    image = ensure_dataset(args.size_mib, args.cache_dir, verify=args.verify)
    meta = _load_meta(image.with_suffix(".json")) or {}
    print(image)
    for key in ("size_bytes", "sha256", "file_count", "file_data_fraction", "zero_block_fraction"):
        print(f"  {key}: {meta.get(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
