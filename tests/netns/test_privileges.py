"""The boot server without full root: under ``setpriv`` with CAP_NET_RAW only
(as the systemd units in contrib/ run it), and started as root with
``--user NAME`` (drops to NAME once its sockets and images are open). The
units' sandbox (address families, locked memory, no new privileges) is
applied by tests/support/sandbox.py where systemd cannot be asked, and
must leave --tx auto its AF_XDP path.

An unprivileged server must be able to read its interpreter and the
installed package, which a Python installed under /root (pyenv, the test
runner's own) is not. So these tests install the project, non-editable, into
a venv of the system's /usr/bin/python3 outside /root, world-readable, built
once and reused while the sources are unchanged (a stamp holds their hash).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import ROOT, Run, one_line_error
from support.lab import events, netboot

from oxboot.netlab import Host, Lab, wait_for

pytestmark = pytest.mark.skipif(shutil.which("setpriv") is None,
                                reason="setpriv (util-linux) is not installed")

SYSTEM_PYTHON = Path("/usr/bin/python3")
VENV = Path(os.environ.get("OXBOOT_PRIVTEST_VENV", "/opt/oxboot-privtest-venv"))
STAMP = VENV / ".oxboot-source-stamp"
NOBODY = 65534
CAP_NET_RAW = 13

#: What the build reads: a change to any of these rebuilds the venv.
_SOURCE_GLOBS = ("pyproject.toml", "setup.py", "csrc/*.c", "csrc/*.h", "csrc/*.py",
                 "oxboot/**/*.py")
#: Copied for the build but not hashed: package metadata only (and absent
#: from the sanitizer run's copy of the tree, which must reuse the venv).
_EXTRA_FILES = ("README.md", "LICENSE", "MANIFEST.in")

# The environment the unprivileged server gets: nothing from ours (no
# PYTHONPATH, no LD_PRELOAD of the sanitizer run, no HOME under /root).
_CLEAN_ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]

_SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
SETPRIV_NET_RAW = [*_SETPRIV, "--inh-caps=-all,+net_raw", "--ambient-caps=-all,+net_raw",
                   "--bounding-set=-all,+net_raw"]
SETPRIV_NO_CAPS = [*_SETPRIV, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]


# ---- the venv --------------------------------------------------------------


def _source_files(root: Path) -> list[Path]:
    files: set[Path] = set()
    for pattern in _SOURCE_GLOBS:
        files.update(p for p in root.glob(pattern) if p.is_file())
    return sorted(files)


def _source_stamp(root: Path, python: str) -> str:
    h = hashlib.sha256(python.encode() + b"\0")
    for p in _source_files(root):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"needs {' '.join(packages)} and cannot install them here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=True,
                   capture_output=True, env=env)


def _system_python() -> str:
    """The system interpreter, installing what a venv build needs; its version."""
    if not SYSTEM_PYTHON.exists():
        _apt_install("python3", "python3-venv", "python3-dev")

    def probe(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SYSTEM_PYTHON), "-I", "-c", code], capture_output=True,
                              text=True)

    version = probe("import sys; print(sys.version_info >= (3, 11), sys.version)").stdout
    if not version.startswith("True"):
        pytest.skip(f"{SYSTEM_PYTHON} is older than 3.11: {version.strip()}")
    if probe("import venv, ensurepip").returncode != 0:
        _apt_install("python3-venv")
    headers = "import os, sysconfig; assert os.path.exists(sysconfig.get_path('include') + " \
              "'/Python.h')"
    if probe(headers).returncode != 0:
        _apt_install("python3-dev")
    return version.split(None, 1)[1].strip()


def _build_env() -> dict[str, str]:
    drop = ("PYTHONPATH", "PYTHONHOME", "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS",
            "OXBOOT_SANITIZE", "OXBOOT_SANITIZED", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_ROOT_USER_ACTION="ignore",
               PIP_NO_INPUT="1")
    return env


def _run_build_step(argv: list[str], what: str) -> None:
    p = subprocess.run(argv, capture_output=True, text=True, env=_build_env(),
                       preexec_fn=lambda: os.umask(0o022))
    if p.returncode != 0:
        pytest.fail(f"{what} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")


def _build_venv(root: Path) -> None:
    if VENV.exists():
        shutil.rmtree(VENV)
    _run_build_step([str(SYSTEM_PYTHON), "-m", "venv", str(VENV)], "python3 -m venv")
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run_build_step([*pip, "setuptools>=65", "cffi>=1.16", "wheel"], "pip install build deps")
    # A copy of the sources: pip builds in the source tree (build/,
    # *.egg-info), which must not race the other users of the work tree.
    with tempfile.TemporaryDirectory(prefix="oxboot-privtest-src-") as tmp:
        src = Path(tmp) / "src"
        for p in [*_source_files(root), *(root / n for n in _EXTRA_FILES)]:
            if p.exists():
                dst = src / p.relative_to(root)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, dst)
        _run_build_step([*pip, "--no-build-isolation", str(src)], "pip install oxboot")
    # Readable (and its directories searchable) by every user, whatever
    # umask pip's own extraction used.
    subprocess.run(["chmod", "-R", "a+rX", str(VENV)], check=True)


@pytest.fixture(scope="session")
def venv() -> Path:
    """A non-editable install of this tree in a venv of /usr/bin/python3 that
    every user can read; rebuilt only when the sources change."""
    python = _system_python()
    stamp = _source_stamp(ROOT, python)
    for parent in VENV.parents:
        if parent.exists() and parent.stat().st_mode & 0o001 == 0:
            pytest.fail(f"{parent} is not searchable by other users: move the venv "
                        "(OXBOOT_PRIVTEST_VENV)")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{VENV}.lock", "w") as lock:  # parallel runs build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        fresh = (STAMP.exists() and STAMP.read_text() == stamp
                 and (VENV / "bin" / "bootserver").exists())
        if not fresh:
            started = time.monotonic()
            _build_venv(ROOT)
            STAMP.write_text(stamp)
            STAMP.chmod(0o644)
            sys.stderr.write(f"\nbuilt {VENV} in {time.monotonic() - started:.1f} s\n")
    return VENV


# ---- helpers ---------------------------------------------------------------


@pytest.fixture
def public() -> Iterator[tuple[Path, Path]]:
    """(a world-readable directory for images, a world-writable scratch):
    pytest's own tmp_path is private to root."""
    top = Path(tempfile.mkdtemp(prefix="oxboot-priv-", dir="/tmp"))
    try:
        top.chmod(0o755)
        imgs, scratch = top / "images", top / "scratch"
        imgs.mkdir(mode=0o755)
        scratch.mkdir()
        scratch.chmod(0o1777)
        yield imgs, scratch
    finally:
        shutil.rmtree(top, ignore_errors=True)


def publish(img: Path, directory: Path, mode: int = 0o644) -> Path:
    out = directory / img.name
    shutil.copyfile(img, out)
    out.chmod(mode)
    return out


def bootserver(venv: Path, *args: str, scratch: Path | None = None,
               setpriv: list[str] | None = None) -> list[str]:
    """argv of the venv's bootserver, in a clean environment, maybe under setpriv."""
    env = [*_CLEAN_ENV, *([f"OXBOOT_SCRATCH={scratch}"] if scratch else [])]
    return [*(setpriv or []), *env, str(venv / "bin" / "bootserver"), *args]


def status_of(pid: int | str, task: int | str | None = None) -> dict[str, str]:
    path = f"/proc/{pid}/status" if task is None else f"/proc/{pid}/task/{task}/status"
    out = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def ids(status: dict[str, str], key: str) -> set[int]:
    """The real, effective, saved and filesystem ids of a Uid:/Gid: line."""
    return {int(v) for v in status[key].split()}


def run_in(host: Host, argv: list[str], timeout: float = 60) -> Run:
    p = subprocess.run(host.cmd(argv), capture_output=True, text=True, timeout=timeout)
    return Run(p.returncode, p.stdout, p.stderr)


def wait_ready(server: subprocess.Popen[bytes], log: Path) -> None:
    """Until the server has logged its images (after opening its sockets and,
    with --user, dropping root); fails at once, with its log, if it exits."""
    def ready() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"the server exited {server.returncode}:\n"
                                 f"{log.read_text() if log.exists() else ''}")
        return log.exists() and '"event": "image"' in log.read_text()
    wait_for(ready, 30, "the boot server to start")


def the_server(pid: int) -> None:
    """The process is the Python server itself (ip netns exec, setpriv and env
    all exec, so the pid we started is the server's)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert any(arg.endswith(b"/bootserver") for arg in cmdline), cmdline


# ---- tests -----------------------------------------------------------------


def test_venv_is_usable_by_an_unprivileged_user(venv: Path) -> None:
    """The install these tests run is the venv's, and nobody can import it."""
    code = ("import os, sys, oxboot, oxboot._core; "
            "print(os.getuid(), sys.executable, oxboot.__file__, oxboot._core.__file__)")
    p = subprocess.run([*SETPRIV_NO_CAPS, *_CLEAN_ENV, str(venv / "bin" / "python"), "-I", "-c",
                        code], capture_output=True, text=True, cwd="/", timeout=60)
    assert p.returncode == 0, p.stderr
    uid, exe, package, core = p.stdout.split()
    assert int(uid) == NOBODY
    assert exe.startswith(str(venv)) and package.startswith(str(venv)), p.stdout
    assert core.startswith(str(venv)), p.stdout


def test_setpriv_net_raw_only_serves_a_boot(venv: Path, lab: Lab, images: dict,
                                            public: tuple[Path, Path], tmp_path: Path) -> None:
    srv, sled = lab.pair()
    imgs, scratch = public
    img = publish(images["zlib"][0], imgs)
    raw = images["zlib"][1]
    log = tmp_path / "server.log"
    server = lab.start(srv, bootserver(venv, "-s", "--json", srv.ifname, str(img), "any",
                                       scratch=scratch, setpriv=SETPRIV_NET_RAW), log)
    wait_ready(server, log)
    the_server(server.pid)
    st = status_of(server.pid)
    assert ids(st, "Uid") == {NOBODY} and ids(st, "Gid") == {NOBODY}, st
    assert st["Groups"] == "", st
    for key in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
        assert int(st[key], 16) == 1 << CAP_NET_RAW, (key, st[key])
    for task in os.listdir(f"/proc/{server.pid}/task"):  # the transmit threads too
        tst = status_of(server.pid, task)
        assert ids(tst, "Uid") == {NOBODY} and int(tst["CapEff"], 16) == 1 << CAP_NET_RAW
    # The served copy is the unlinked temporary file in OXBOOT_SCRATCH.
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert any(str(scratch) in line and "(deleted)" in line for line in maps.splitlines()), maps

    status, result, saved = netboot(sled, img, tmp_path)
    assert status == 0 and result["verified"], result
    assert saved.read_bytes() == raw
    assert server.wait(10) == 0, log.read_text()
    assert "finished" in [e["event"] for e in events(log)]
    assert list(scratch.iterdir()) == []  # nothing left behind


def test_setpriv_without_net_raw_is_one_line_error(venv: Path, lab: Lab, images: dict,
                                                   public: tuple[Path, Path]) -> None:
    srv, _ = lab.pair()
    imgs, scratch = public
    img = publish(images["plain"][0], imgs)
    r = run_in(srv, bootserver(venv, "-s", srv.ifname, str(img), "any", scratch=scratch,
                               setpriv=SETPRIV_NO_CAPS))
    one_line_error(r)
    assert "CAP_NET_RAW" in r.stderr, r.stderr
    assert list(scratch.iterdir()) == []


def test_setpriv_unreadable_image_is_one_line_error(venv: Path, lab: Lab,
                                                    images: dict,
                                                    public: tuple[Path, Path]) -> None:
    srv, _ = lab.pair()
    imgs, scratch = public
    img = publish(images["plain"][0], imgs, mode=0o600)  # root's only
    r = run_in(srv, bootserver(venv, "-s", srv.ifname, str(img), "any", scratch=scratch,
                               setpriv=SETPRIV_NET_RAW))
    one_line_error(r)
    assert str(img) in r.stderr and "Permission denied" in r.stderr, r.stderr


def _start_with_user(venv: Path, lab: Lab, srv: Host, img: Path, user: str,
                     log: Path) -> subprocess.Popen[bytes]:
    server = lab.start(srv, bootserver(venv, "-s", "--json", "--user", user, srv.ifname,
                                       str(img), "any"), log)
    wait_ready(server, log)
    wait_for(lambda: ids(status_of(server.pid), "Uid") == {NOBODY}, 10,
             "the server to drop to nobody")
    the_server(server.pid)
    for task in os.listdir(f"/proc/{server.pid}/task"):  # every thread, not just main
        st = status_of(server.pid, task)
        assert ids(st, "Uid") == {NOBODY} and ids(st, "Gid") == {NOBODY}, st
        assert st["Groups"] == "", st
        assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, st
    return server


@pytest.mark.parametrize("user", ["nobody", str(NOBODY)])
def test_user_drops_root_after_start_up(venv: Path, lab: Lab, images: dict,
                                        public: tuple[Path, Path], tmp_path: Path,
                                        user: str) -> None:
    srv, sled = lab.pair()
    img, raw = publish(images["plain"][0], public[0]), images["plain"][1]
    log = tmp_path / "server.log"
    server = _start_with_user(venv, lab, srv, img, user, log)
    status, result, saved = netboot(sled, img, tmp_path)
    assert status == 0 and result["verified"], (result, log.read_text())
    assert saved.read_bytes() == raw
    assert server.wait(10) == 0, log.read_text()


def test_user_serves_an_image_only_root_can_read(venv: Path, lab: Lab, images: dict,
                                                 tmp_path: Path) -> None:
    srv, sled = lab.pair()
    img, raw = images["plain"]  # under pytest's tmp dir: mode 0700, root's only
    log = tmp_path / "server.log"
    server = _start_with_user(venv, lab, srv, img, "nobody", log)
    status, result, saved = netboot(sled, img, tmp_path, timeout=5)
    assert status == 0 and result["verified"], (result, log.read_text())
    assert saved.read_bytes() == raw
    assert server.wait(10) == 0, log.read_text()


def test_user_unknown_is_one_line_error(venv: Path, lab: Lab, images: dict,
                                        public: tuple[Path, Path]) -> None:
    srv, _ = lab.pair()
    img = images["plain"][0]
    r = run_in(srv, bootserver(venv, "-s", "--user", "no-such-user-xyz", srv.ifname, str(img),
                               "any", scratch=public[1]))
    one_line_error(r)
    assert "no-such-user-xyz" in r.stderr, r.stderr


def test_user_other_than_self_without_root_is_one_line_error(
        venv: Path, lab: Lab, images: dict, public: tuple[Path, Path]) -> None:
    """Under setpriv (not root), --user can't become someone else."""
    srv, _ = lab.pair()
    imgs, scratch = public
    img = publish(images["plain"][0], imgs)
    r = run_in(srv, bootserver(venv, "-s", "--user", "root", srv.ifname, str(img), "any",
                               scratch=scratch, setpriv=SETPRIV_NET_RAW))
    one_line_error(r)
    assert "--user root" in r.stderr, r.stderr



# ---- the systemd unit ------------------------------------------------------

UNIT = ROOT / "contrib" / "oxboot-bootserver.service"
CONFIG_UNIT = ROOT / "contrib" / "oxboot-bootserver-config.service"
SANDBOX = ROOT / "tests" / "support" / "sandbox.py"


def _unit_settings(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        else:
            key, sep, value = line.partition("=")
            assert sep, f"not a key=value line: {line!r}"
            current[key.strip()] = value.strip()
    return sections


def _size(text: str) -> int:
    """A systemd size (LimitMEMLOCK=64M) in bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


@pytest.mark.parametrize("unit", [UNIT, CONFIG_UNIT], ids=lambda u: u.name)
def test_systemd_unit_runs_with_net_raw_only_as_a_dynamic_user(venv: Path, tmp_path: Path,
                                                              unit: Path) -> None:
    service = _unit_settings(unit.read_text())["Service"]
    assert service["DynamicUser"] == "yes"
    assert service["AmbientCapabilities"] == "CAP_NET_RAW"
    assert service["CapabilityBoundingSet"] == "CAP_NET_RAW"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict" and service["ProtectHome"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["Environment"] == "OXBOOT_SCRATCH=/var/tmp"
    # The fastest transmit path stays open: AF_XDP and room for its UMEM.
    families = set(service["RestrictAddressFamilies"].split())
    assert {"AF_PACKET", "AF_XDP", "AF_UNIX"} <= families
    assert _size(service["LimitMEMLOCK"]) >= 32 * 2 << 20
    assert service["Restart"] == "on-failure"
    exe, *args = service["ExecStart"].split()
    assert exe.endswith("/bin/bootserver") and "--user" not in args and "--json" in args
    if unit == UNIT:
        assert families == {"AF_PACKET", "AF_XDP", "AF_UNIX"}  # no IP at all
        assert args[-1] == "any"
    else:
        # The HTTP listener (the file's `listen`) needs IP; a mistake in the
        # file (exit 2) is not retried; systemctl reload is SIGHUP.
        assert families == {"AF_PACKET", "AF_XDP", "AF_UNIX", "AF_INET", "AF_INET6"}
        assert args[-2] == "--config"
        assert service["RestartPreventExitStatus"] == "2"
        assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # Verified with ExecStart pointing at a bootserver that exists.
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(exe, str(venv / "bin" / "bootserver")))
    p = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and str(copy) not in p.stderr, p.stderr


def _sandboxed(families: list[str], memlock: int) -> list[str]:
    """The unit's RestrictAddressFamilies=, LimitMEMLOCK= and NoNewPrivileges=
    (tests/support/sandbox.py), then its user and capabilities (setpriv)."""
    return [sys.executable, str(SANDBOX), "--families", ",".join(families),
            "--memlock", str(memlock), "--", *SETPRIV_NET_RAW]


def _memlock(wanted: int) -> int:
    """`wanted`, or the hard limit if lower: a container may hold even root
    below a unit's limit (no CAP_SYS_RESOURCE)."""
    return min(wanted, resource.getrlimit(resource.RLIMIT_MEMLOCK)[1])


def _skip_without_xdp_or_seccomp() -> None:
    from oxboot.link import af_xdp_unavailable

    if why := af_xdp_unavailable():
        pytest.skip(why)
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip(f"no seccomp filter for {platform.machine()} in tests/support/sandbox.py")


def _transmit(log: Path) -> dict:
    return next(e for e in events(log) if e["event"] == "transmit")


@pytest.mark.parametrize("unit", [UNIT, CONFIG_UNIT], ids=lambda u: u.name)
def test_systemd_unit_sandbox_keeps_af_xdp(venv: Path, lab: Lab, images: dict,
                                           public: tuple[Path, Path], tmp_path: Path,
                                           unit: Path) -> None:
    """The server as the unit runs it: its address families, locked-memory
    limit, no new privileges, user and capability (no systemd as PID 1 in a
    container: the same settings by seccomp and setpriv). --tx auto must
    still get AF_XDP, and the boot must work."""
    _skip_without_xdp_or_seccomp()
    service = _unit_settings(unit.read_text())["Service"]
    srv, sled = lab.pair()
    imgs, scratch = public
    img, raw = publish(images["zlib"][0], imgs), images["zlib"][1]
    _exe, *args = service["ExecStart"].split()
    if "--config" in args:
        conf = imgs / "bootserver.toml"
        conf.write_text(f'link = "{srv.ifname}"\nlisten = "127.0.0.1:9187"\n\n'
                        f'[[image]]\npath = "{img}"\n')
        conf.chmod(0o644)
        args[args.index("--config") + 1] = str(conf)
    else:
        args = [*args[:-3], srv.ifname, str(img), "any"]
    memlock = _memlock(_size(service["LimitMEMLOCK"]))
    if memlock < 4 << 20:  # one worker's UMEM must fit in what can be had
        pytest.skip(f"the locked-memory limit cannot be raised here (hard limit {memlock})")
    log = tmp_path / "server.log"
    server = lab.start(srv, [*_sandboxed(service["RestrictAddressFamilies"].split(), memlock),
                             *bootserver(venv, "-s", *args, scratch=scratch)], log)
    wait_ready(server, log)
    the_server(server.pid)
    st = status_of(server.pid)
    assert ids(st, "Uid") == {NOBODY} and int(st["CapEff"], 16) == 1 << CAP_NET_RAW, st
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st
    transmit = _transmit(log)
    assert transmit["methods"] == ["xdp"], transmit
    status, result, saved = netboot(sled, img, tmp_path)
    assert status == 0 and result["verified"], (result, log.read_text())
    assert saved.read_bytes() == raw
    assert server.wait(10) == 0, log.read_text()


@pytest.mark.parametrize(("families", "memlock", "why"), [
    (["AF_PACKET", "AF_UNIX"], 64 << 20, "RestrictAddressFamilies= must list AF_XDP"),
    (["AF_PACKET", "AF_XDP", "AF_UNIX"], 64 << 10, "LimitMEMLOCK="),
], ids=["AF_XDP not allowed", "memlock 64K"])
def test_a_tighter_sandbox_turns_auto_into_sendmmsg(venv: Path, lab: Lab, images: dict,
                                                    public: tuple[Path, Path], tmp_path: Path,
                                                    families: list[str], memlock: int,
                                                    why: str) -> None:
    """What the unit once shipped (no AF_XDP) and a default locked-memory
    limit: the server still serves, by sendmmsg, and says why (what the
    test above would see if the unit lost either setting)."""
    _skip_without_xdp_or_seccomp()
    srv, _ = lab.pair()
    imgs, scratch = public
    img = publish(images["small"][0], imgs)
    log = tmp_path / "server.log"
    server = lab.start(srv, [*_sandboxed(families, _memlock(memlock)),
                             *bootserver(venv, "--json", srv.ifname, str(img), "any",
                                         scratch=scratch)], log)
    wait_ready(server, log)
    transmit = _transmit(log)
    assert transmit["methods"] == ["sendmmsg"], transmit
    assert why in " ".join(transmit["fallbacks"]), transmit
    server.terminate()
    assert server.wait(10) == 0, log.read_text()
