"""bootserver's configuration file (--config) and its image folder watch,
without a network: a file that cannot be used is one line naming the file,
the line and the key (exit status 2) before any socket is opened; the
config and the positional usage exclude each other; the folder watch sees
files renamed in and removed, by inotify and by comparing listings."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from support.cli import one_line_error, run_cli

from oxboot.serve import watch
from oxboot.serve.config import ConfigError, load_config
from oxboot.serve.watch import DirWatch, image_files

GOOD = """\
link = "eth1"
listen = "127.0.0.1:9187"     # optional
read_rate = 8000              # optional
image_dir = "images"

[[image]]
path = "host.img"
sleds = ["02:00:00:00:00:07", "02:00:00:00:00:08"]   # omitted: offered to every sled

[[image]]
path = "recovery.img"
"""


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    for name in ("host.img", "recovery.img"):
        (tmp_path / name).write_bytes(b"not checked until served")
    return tmp_path


def test_the_readme_example_is_read(conf_dir: Path) -> None:
    (conf_dir / "lab.toml").write_text(GOOD)
    c = load_config(conf_dir / "lab.toml")
    assert (c.link, c.listen, c.read_rate) == ("eth1", "127.0.0.1:9187", 8000.0)
    # Relative paths are the file's folder's.
    assert c.image_dir == conf_dir / "images"
    assert [e.path for e in c.images] == [conf_dir / "host.img", conf_dir / "recovery.img"]
    assert c.images[0].sleds == {bytes.fromhex("020000000007"), bytes.fromhex("020000000008")}
    assert c.images[1].sleds is None
    assert (c.workers, c.user, c.tx, c.busy_poll) == (None, None, None, None)


def test_an_image_folder_alone_is_enough(conf_dir: Path) -> None:
    (conf_dir / "lab.toml").write_text('link = "eth1"\nimage_dir = "images"\nworkers = 2\n'
                                       'tx = "sendmmsg"\nbusy_poll = 0\nuser = "nobody"\n')
    c = load_config(conf_dir / "lab.toml")
    assert (c.images, c.workers, c.tx, c.busy_poll, c.user) == ((), 2, "sendmmsg", 0.0,
                                                                  "nobody")


# (the file, the line the error must name, the key it must name)
BAD = {
    "syntax": ('link = "eth1"\nread_rate = fast\n', 2, "read_rate"),
    "duplicate key": ('link = "eth1"\nimage_dir = "images"\nlink = "eth2"\n', 3, "link"),
    "unknown key": ('link = "eth1"\nimage_dir = "images"\n\nspeed = 3\n', 4, "speed"),
    "read_rate negative": ('link = "eth1"\nimage_dir = "images"\nread_rate = -5\n', 3,
                           "read_rate"),
    "read_rate text": ('image_dir = "images"\nread_rate = "fast"\nlink = "eth1"\n', 2,
                       "read_rate"),
    "workers": ('link = "eth1"\nworkers = 0\nimage_dir = "images"\n', 2, "workers"),
    "tx": ('link = "eth1"\nimage_dir = "images"\ntx = "warp"\n', 3, "tx"),
    "busy_poll": ('link = "eth1"\nimage_dir = "images"\nbusy_poll = -1\n', 3, "busy_poll"),
    "listen": ('link = "eth1"\nimage_dir = "images"\nlisten = "localhost"\n', 3, "listen"),
    "user": ('link = "eth1"\nimage_dir = "images"\nuser = "no-such-user-xyz"\n', 3, "user"),
    "link": ('link = 3\nimage_dir = "images"\n', 1, "link"),
    "image_dir missing": ('link = "eth1"\n\nimage_dir = "nowhere"\n', 3, "image_dir"),
    "bad MAC": ('link = "eth1"\n\n[[image]]\npath = "host.img"\nsleds = ["02:00:zz"]\n', 5,
                "image.sleds"),
    "sleds not a list": ('link = "eth1"\n[[image]]\npath = "host.img"\nsleds = "any"\n', 4,
                         "image.sleds"),
    "no such image": ('link = "eth1"\n[[image]]\npath = "host.img"\n[[image]]\n'
                      'path = "gone.img"\n', 5, "image.path"),
    "image without path": ('link = "eth1"\n[[image]]\npath = "host.img"\n\n[[image]]\n'
                           'sleds = []\n', 5, "image.path"),
    "image listed twice": ('link = "eth1"\n[[image]]\npath = "host.img"\n[[image]]\n'
                           'path = "host.img"\n', 5, "image.path"),
    "unknown image key": ('link = "eth1"\n[[image]]\npath = "host.img"\nsize = 3\n', 4,
                          "image.size"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_file_is_one_line_naming_line_and_key_exit_2(conf_dir: Path, name: str) -> None:
    text, line, key = BAD[name]
    conf = conf_dir / "lab.toml"
    conf.write_text(text)
    r = run_cli(["bootserver", "--config", str(conf)])
    one_line_error(r)
    assert r.status == 2, r
    assert re.search(rf"^Error: {re.escape(str(conf))}:{line}: {re.escape(key)}: ", r.stderr), \
        r.stderr
    with pytest.raises(ConfigError):  # the same check as SIGHUP's
        load_config(conf)


@pytest.mark.parametrize(("text", "key"), [
    ('image_dir = "images"\n', "link"),
    ('link = "eth1"\n', "image"),
])
def test_a_missing_key_is_named(conf_dir: Path, text: str, key: str) -> None:
    conf = conf_dir / "lab.toml"
    conf.write_text(text)
    r = run_cli(["bootserver", "--config", str(conf)])
    one_line_error(r)
    assert r.status == 2 and f"{conf}: {key}: " in r.stderr, r.stderr


def test_an_unreadable_file_is_exit_2(tmp_path: Path) -> None:
    r = run_cli(["bootserver", "--config", str(tmp_path / "none.toml")])
    one_line_error(r)
    assert r.status == 2 and "none.toml" in r.stderr and "No such file" in r.stderr, r.stderr
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    r = run_cli(["bootserver", "--config", str(tmp_path / "bin.toml")])
    one_line_error(r)
    assert r.status == 2, r


@pytest.mark.parametrize("extra", [["eth1"], ["eth1", "x.img", "any"], ["--image", "x.img"]])
def test_config_and_positional_usage_exclude_each_other(conf_dir: Path,
                                                        extra: list[str]) -> None:
    conf = conf_dir / "lab.toml"
    conf.write_text(GOOD)
    r = run_cli(["bootserver", "--config", str(conf), *extra])
    one_line_error(r)
    assert "--config" in r.stderr and "not both" in r.stderr, r.stderr


def test_positional_usage_still_needs_all_three(tmp_path: Path) -> None:
    r = run_cli(["bootserver", "eth1"])
    one_line_error(r)
    assert "IMAGE_FILE, MAC|any" in r.stderr and "LINK," not in r.stderr, r.stderr
    r = run_cli(["bootserver", "--image-dir", str(tmp_path / "no"), "eth1", "x.img", "any"])
    one_line_error(r)
    assert "--image-dir" in r.stderr, r.stderr


def test_help_names_both_usages() -> None:
    r = run_cli(["bootserver", "--help"])
    assert r.status == 0
    assert "LINK IMAGE_FILE MAC|any" in r.stdout and "--config FILE" in r.stdout
    assert "--image-dir DIR" in r.stdout and "SIGHUP" in r.stdout


# ---- the image folder watch -------------------------------------------------


def test_image_files_skips_hidden_and_folders(tmp_path: Path) -> None:
    for name in ("b.img", "a.img", ".a.img.tmp", "c.img~"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.img").symlink_to(tmp_path / "a.img")
    assert [p.name for p in image_files(tmp_path)] == ["a.img", "b.img", "link.img"]
    assert image_files(tmp_path / "gone") == []


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "listing"])
def test_dir_watch_sees_renames_in_and_removals(tmp_path: Path, inotify: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if not inotify:
        monkeypatch.setattr(watch, "_libc", lambda: None)
    w = DirWatch(tmp_path)
    try:
        if inotify and w.fallback:
            pytest.skip(w.fallback)
        assert bool(w.fallback) != inotify
        assert not w.changed()
        (tmp_path / ".new.img").write_bytes(b"x")  # written aside...
        assert w.changed() == inotify and not w.changed()
        os.rename(tmp_path / ".new.img", tmp_path / "new.img")  # ... then renamed in
        assert w.changed() and not w.changed()
        os.replace(tmp_path / "new.img", tmp_path / "other.img")
        assert w.changed()
        (tmp_path / "other.img").unlink()
        assert w.changed() and not w.changed()
    finally:
        w.close()


def test_dir_watch_of_a_removed_folder_goes_on_by_listing(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    w = DirWatch(folder)
    try:
        if w.fallback:
            pytest.skip(w.fallback)
        folder.rmdir()
        assert w.changed() and w.fd < 0 and "removed" in w.fallback
        folder.mkdir()
        (folder / "a.img").write_bytes(b"x")
        assert w.changed() and not w.changed()
    finally:
        w.close()


def test_command_line_options_win_over_the_file(conf_dir: Path) -> None:
    from oxboot.cli.bootserver import _with_command_line, build_parser
    from oxboot.protocol import DEFAULT_READ_RATE
    from oxboot.serve import DEFAULT_BUSY_POLL

    conf = conf_dir / "lab.toml"
    conf.write_text(GOOD)
    parser = build_parser()

    def settings(*argv: str) -> tuple[object, ...]:
        c = _with_command_line(load_config(conf), parser.parse_args(["--config", str(conf),
                                                                     *argv]))
        return c.read_rate, c.tx, c.busy_poll, c.workers, c.image_dir

    # The file's read_rate; the defaults for what it does not set.
    assert settings() == (8000.0, "auto", DEFAULT_BUSY_POLL * 1e6, None,
                          conf_dir / "images")
    # Given on the command line, even at its default value: the command line's.
    assert settings("--read-rate", str(DEFAULT_READ_RATE), "--tx", "send", "--busy-poll", "0",
                    "--workers", "3", "--image-dir", "elsewhere") == (
        DEFAULT_READ_RATE, "send", 0.0, 3, Path("elsewhere"))
