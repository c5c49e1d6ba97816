"""The golden vectors of the original tools, byte for byte."""

from __future__ import annotations

import hashlib
import shlex
import zlib
from pathlib import Path

import pytest
from support.cli import VECTORS, VECTORS_TOOLING, genraw, one_line_error, run_cli, vector_manifest

from oxboot.format import HEADER_SIZE, Header


def _load_ids(section: str) -> list[str]:
    data = vector_manifest()
    key = "file" if section == "corruptions" else "id"
    return [item[key] for item in data[section]]


def _by(manifest: dict, section: str, key: str, value: str) -> dict:
    key_name = "file" if section == "corruptions" else "id"
    return next(item for item in manifest[section] if item[key_name] == value)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("image_id", _load_ids("images"))
def test_mkimage_matches_original(image_id: str, manifest: dict, vectors: Path,
                                  tmp_path: Path) -> None:
    img = _by(manifest, "images", "id", image_id)
    argv = list(img["mkimage"]["argv"])
    # Same flags, inputs from the vectors, outputs in a scratch folder.
    out_name = img["output_file"]
    argv = [str(tmp_path / a) if a in (out_name, img.get("csum_file")) else
            str(vectors / a) if (vectors / a).is_file() and a.endswith(".raw") else a
            for a in argv]
    r = run_cli(argv, cwd=tmp_path)
    out = tmp_path / out_name
    raw = (vectors / img["input"]).read_bytes()

    if img["mkimage"]["exit_status"] == 0 and img["header"]["image_size"] < 4096:
        # The original writes an image the OS refuses; we refuse to.
        one_line_error(r)
        assert "minimum" in r.stderr
        assert not out.exists()
        return
    if img["mkimage"]["exit_status"] != 0:
        assert r.status == img["mkimage"]["exit_status"]
        assert r.stderr == img["mkimage"]["stderr"]
        assert not out.exists() and list(tmp_path.iterdir()) == []
        return

    assert r.status == 0, r.stderr
    assert r.stdout == img["mkimage"]["stdout"]
    if img.get("csum_file"):
        assert (tmp_path / img["csum_file"]).read_bytes().hex() == img["csum_file_hex"]
    want = img["header"]
    got = Header.parse(out.read_bytes())
    if not img["compressed"]:
        assert _sha(out) == img["output_sha256"]
        assert out.stat().st_size == img["output_size"]
        return
    payload = out.read_bytes()[HEADER_SIZE:]
    if len(zlib.compress(raw, 9)) >= len(raw):
        # Does not compress: stored raw (the original's output fails its own
        # lookimage, see the vectors' README).
        assert got.flags == 0 and payload == raw
    else:
        assert got.flags == want["flags"]
        assert zlib.decompress(payload) == raw
        assert got.data_size == len(payload)
    assert got.image_size == want["image_size"]
    assert got.target_size == want["target_size"]
    assert got.sha256.hex() == want["sha256"]
    assert got.dataset == want["dataset_name"]
    assert got.image_name == want["image_name"]
    assert got.version == 2
    # Every header byte but flags/data_size (offsets 8..24) is the original's.
    with (vectors / img["stored_file"]).open("rb") if img["stored"] != "none" else \
            open(out, "rb") as f:
        theirs = f.read(HEADER_SIZE)
    mine = out.read_bytes()[:HEADER_SIZE]
    assert mine[:8] == theirs[:8] and mine[24:] == theirs[24:]


def _lookimage_cases(manifest_section: str) -> list[tuple[str, int]]:
    ids = _load_ids(manifest_section)
    return [(i, k) for i in ids for k in (0, 1)]


@pytest.mark.parametrize(("image_id", "which"), _lookimage_cases("images"))
def test_lookimage_matches_original(image_id: str, which: int, manifest: dict,
                                    vectors: Path) -> None:
    img = _by(manifest, "images", "id", image_id)
    if img["stored"] == "none":
        pytest.skip("the original's output was not kept (recorded hashes are checked "
                    "in test_mkimage_matches_original)")
    case = img["lookimage"][which]
    r = run_cli(shlex.split(case["command"]), cwd=vectors)
    assert r.stdout == case["stdout"]
    assert r.status == case["exit_status"]
    if case["exit_status"]:
        one_line_error(r)
        assert r.stderr == case["stderr"]
    else:
        assert r.stderr == case["stderr"]


@pytest.mark.parametrize(("name", "which"), _lookimage_cases("corruptions"))
def test_lookimage_corruptions(name: str, which: int, manifest: dict, vectors: Path) -> None:
    item = _by(manifest, "corruptions", "file", name)
    case = item["lookimage"][which]
    assert _sha(vectors / name) == item["sha256"]
    r = run_cli(shlex.split(case["command"]), cwd=vectors)
    if case["exit_status"] == 0:
        # Headers the OS accepts too (odd names, reserved bytes, extra flag
        # bits), or -s on damage in the data it skips.
        assert r.status == 0, r.stderr
        assert r.stdout == case["stdout"]
        assert "Traceback" not in r.stderr
    else:
        one_line_error(r)
        # What was printed before the error is the original's too.
        assert case["stdout"].startswith(r.stdout)


@pytest.mark.parametrize("name", _load_ids("corruptions"))
def test_extract_corruptions(name: str, manifest: dict, vectors: Path, tmp_path: Path) -> None:
    """extract on every corrupt vector: it writes exactly what lookimage
    (without -s) accepts, the verified raw image, and otherwise fails the
    same way, with nothing written."""
    item = _by(manifest, "corruptions", "file", name)
    full = item["lookimage"][0]
    assert shlex.split(full["command"]) == ["lookimage", name]
    out = tmp_path / "x.raw"
    r = run_cli(["oxboot", "extract", str(vectors / name), "-o", str(out)])
    if full["exit_status"] == 0:
        # Accepted by the OS too (extra flag bits, a leading NUL in the
        # name, non-zero reserved bytes).
        assert r.status == 0, r.stderr
        assert "Traceback" not in r.stderr
        header = Header.parse((vectors / name).read_bytes()[:HEADER_SIZE])
        raw = out.read_bytes()
        assert len(raw) == header.image_size
        assert hashlib.sha256(raw).digest() == header.sha256
        assert [p.name for p in tmp_path.iterdir()] == ["x.raw"]
        return
    one_line_error(r)
    assert r.status == 1 and r.stdout == ""
    look = run_cli(["lookimage", str(vectors / name)])
    assert r.stderr == look.stderr  # the same rule, in the same words
    assert list(tmp_path.iterdir()) == []  # no output, no temporary


@pytest.mark.parametrize("item_id", _load_ids("misc"))
def test_misc_errors(item_id: str, manifest: dict, vectors: Path, tmp_path: Path) -> None:
    item = _by(manifest, "misc", "id", item_id)
    if item_id == "m_leftover_after_error":
        (vectors / "err_u_1m1_s1.img").write_bytes(
            bytes(HEADER_SIZE) + (vectors / "in_1m_plus1.raw").read_bytes())
    for tool in ("mkimage", "lookimage"):
        for case in item.get(tool, []):
            r = run_cli(case["argv"], cwd=vectors)
            one_line_error(r)
            assert r.status == case["exit_status"] == 1
            assert r.stdout == case["stdout"]
            if "os error" not in case["stderr"] and "digit" not in case["stderr"]:
                assert r.stderr == case["stderr"]
    assert not (vectors / "bad.img").exists() and not (vectors / "nope.img").exists()


def _used_files(manifest: dict) -> set[str]:
    used = {"manifest.json"}
    used |= {i["file"] for i in manifest["inputs"]}
    for img in manifest["images"]:
        used |= {img["output_file"], img.get("stored_file"), img.get("csum_file")}
    used |= {c["file"] for c in manifest["corruptions"]}
    return used - {None}


def test_every_vector_file_is_used(manifest: dict, vectors: Path) -> None:
    used = _used_files(manifest)
    on_disk = {p.name for p in vectors.iterdir()}
    assert on_disk - used <= {"err_u_1m1_s1.img"}, on_disk - used
    # The repository's folder: data the manifest names, and its tooling.
    kept = {p.name for p in VECTORS.iterdir() if p.is_file()}
    assert kept - used <= VECTORS_TOOLING, kept - used
    assert {"manifest.json", "README.md", "genraw.py"} <= kept


def test_every_stored_file_is_there(manifest: dict) -> None:
    """What the manifest says is kept is in the repository; the rest is
    what genraw rebuilds."""
    stored = {i["file"] for i in manifest["inputs"] if i["stored"]}
    stored |= {img["stored_file"] for img in manifest["images"] if img["stored"] != "none"}
    stored |= {img["csum_file"] for img in manifest["images"]
               if img.get("csum_file") and img["stored"] != "none"}
    stored |= {c["file"] for c in manifest["corruptions"]}
    missing = {name for name in stored if not (VECTORS / name).is_file()}
    assert not missing, missing


@pytest.mark.parametrize("name", [i["file"] for i in vector_manifest()["inputs"] if i["stored"]])
def test_generator_reproduces_stored_inputs(name: str, manifest: dict) -> None:
    """genraw's algorithm is the one that made the inputs: it gives back,
    byte for byte, every input that is kept (the others are checked
    against their recorded SHA-256 as they are rebuilt)."""
    item = next(i for i in manifest["inputs"] if i["file"] == name)
    data = genraw.generate(item["seed"], item["size"])
    assert data == (VECTORS / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == item["sha256"]


def test_rebuild_refuses_a_wrong_file(tmp_path: Path) -> None:
    """A header-only image whose header was damaged is not rebuilt."""
    src = tmp_path / "src"
    src.mkdir()
    manifest = vector_manifest()
    for p in VECTORS.iterdir():
        if p.is_file() and p.name not in VECTORS_TOOLING:
            (src / p.name).write_bytes(p.read_bytes())
    hdr = next(img["stored_file"] for img in manifest["images"] if img["stored"] == "header")
    damaged = bytearray((src / hdr).read_bytes())
    damaged[200] ^= 1  # a byte of the image name
    (src / hdr).write_bytes(bytes(damaged))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(genraw.VectorError, match="does not match"):
        genraw.rebuild(out, src)
