"""Helpers of the tests over real kernel networking (tests/netns): the
boot server and the sled emulator run as their commands in namespaces of an
:class:`oxboot.netlab.Lab`, the raw peers of tests/peers beside them, and
loss injected by nftables at a host's ingress."""

from __future__ import annotations

import json
import random
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from oxboot.netlab import Host, Lab, sh, wait_for
from support.cli import command

PEERS = Path(__file__).resolve().parents[1] / "peers"
FUZZ = PEERS / "fuzz_frames.py"
RAWPEER = PEERS / "rawpeer.py"


def raw_image(size: int, seed: int) -> bytes:
    """Image-like data: random runs, zero runs and text, deterministic."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        kind = rng.randrange(3)
        n = rng.randrange(1, 64 * 1024)
        out += rng.randbytes(n) if kind == 0 else bytes(n) if kind == 1 else \
            (b"oxide ramdisk %d\n" % rng.randrange(1 << 30)) * (n // 24 + 1)
    return bytes(out[:size])


def bootserver(lab: Lab, host: Host, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return lab.start(host, [*command("bootserver"), *args], log)


def netboot(host: Host, image: Path, tmp: Path, *extra: str,
            timeout: float = 60) -> tuple[int, dict, Path]:
    save = tmp / f"saved-{host.ns}.raw"
    p = subprocess.run(
        host.cmd([*command("oxboot"), "netboot", host.ifname, "--want-image", str(image),
                  "--save", str(save), "--json", "-t", str(timeout), *extra]),
        capture_output=True, text=True, timeout=timeout + 30)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, (p.stdout, p.stderr)
    return p.returncode, json.loads(lines[-1]), save


def events(log: Path) -> list[dict]:
    return [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]


def rawpeer(host: Host, script: list[dict], timeout: float = 30) -> dict:
    env_py = sys.executable
    p = subprocess.run(host.cmd([env_py, str(RAWPEER), host.ifname,
                                 json.dumps(script)]),
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def wait_listening(log: Path) -> None:
    wait_for(lambda: log.exists() and '"event": "image"' in log.read_text(), 30,
             "the boot server to start")


def drop_at_ingress(host: Host, match: str) -> None:
    """Drop, in the kernel at the host's ingress (nftables netdev hook), our
    frames that `match` selects; the protocol type is at frame byte 18."""
    rules = (
        f"table netdev oxloss {{\n chain in {{\n"
        f"  type filter hook ingress device {host.ifname} priority 0;\n"
        f"  ether type 0x1de0 {match} counter drop\n }}\n}}\n"
    )
    subprocess.run(["ip", "netns", "exec", host.ns, "nft", "-f", "-"], input=rules,
                   text=True, check=True, capture_output=True)


def drop_data(host: Host, percent: int, msg_type: int = 0x9104, only_to: str | None = None) -> None:
    """Drop `percent`% of our frames of one type at the host's ingress (only
    those addressed to MAC `only_to`, if given: a bridge floods frames for a
    MAC it has not learned to every port, and those must not count)."""
    daddr = f"ether daddr {only_to} " if only_to else ""
    drop_at_ingress(host, f"{daddr}@ll,144,32 {msg_type:#x} numgen random mod 100 < {percent}")


def hold_data(host: Host, from_offset: int) -> None:
    """Drop, at the host's ingress, every DATA at or past `from_offset` (an
    image under 4 GiB: the low word of the offset, frame bytes 30..33), so a
    boot gets that far and waits there, retransmitting its READs, until
    :func:`clear_loss`: mid-boot for as long as a test needs, on any machine."""
    drop_at_ingress(host, f"@ll,144,32 0x9104 @ll,240,32 >= {from_offset}")


def dropped_frames(host: Host) -> int:
    out = sh("ip", "netns", "exec", host.ns, "nft", "list", "table", "netdev", "oxloss").stdout
    return int(out.split("packets ")[1].split()[0])



def boot_once(lab: Lab, srv: Host, sled: Host, image: tuple[Path, bytes], tmp: Path,
              timeout: float = 60, server_args: Sequence[str] = ()) -> tuple[float, dict]:
    """`bootserver -s` on `srv`, one boot of `image` (path, raw bytes) by
    `sled`, which must complete and verify, and the server exit 0 after it.
    Returns (seconds from the netboot's start, the sled's result)."""
    img, raw = image
    log = tmp / "server.log"
    server = bootserver(lab, srv, ["-s", "--json", *server_args, srv.ifname, str(img), "any"],
                        log)
    wait_listening(log)
    started = time.monotonic()
    status, result, saved = netboot(sled, img, tmp, timeout=timeout)
    took = time.monotonic() - started
    assert status == 0 and result["verified"], result
    assert saved.read_bytes() == raw
    assert server.wait(10) == 0
    return took, result


def start_netboot(host: Host, want: Path, save: Path, timeout: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        host.cmd([*command("oxboot"), "netboot", host.ifname, "--want-image", str(want),
                  "--save", str(save), "--json", "-t", str(timeout)]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str], timeout: float) -> tuple[int, dict, str]:
    out, err = p.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, (out, err)
    return p.returncode, json.loads(lines[-1]), err


def clear_loss(host: Host) -> None:
    sh("ip", "netns", "exec", host.ns, "nft", "delete", "table", "netdev", "oxloss")


def has_event(log: Path, kind: str, **fields: object) -> bool:
    return any(e["event"] == kind and all(e.get(k) == v for k, v in fields.items())
               for e in events(log))


def start_helper(lab: Lab, host: Host, *args: str) -> subprocess.Popen[str]:
    """fuzz_frames.py in `host`'s namespace; returns once it says ready."""
    p = subprocess.Popen(host.cmd([sys.executable, str(FUZZ), *args]), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    lab.procs.append(p)  # type: ignore[arg-type]
    ready, _, _ = select.select([p.stderr], [], [], 20)
    line = p.stderr.readline() if ready else ""  # type: ignore[union-attr]
    assert line.strip() == "ready", (line, p.poll())
    return p


def stop_helper(p: subprocess.Popen[str]) -> dict:
    p.terminate()
    out, err = p.communicate(timeout=30)
    assert out.strip(), err
    return json.loads(out.strip().splitlines()[-1])


def chain(lab: Lab) -> tuple[Host, Host, Host, Host]:
    """server -- (a) middlebox (b) -- sled: two veth pairs, the middle ends
    in one namespace."""
    srv, a = lab.pair()
    b, sled = lab.pair()
    sh("ip", "-n", b.ns, "link", "set", b.ifname, "netns", a.ns)
    sh("ip", "-n", a.ns, "link", "set", b.ifname, "up")
    return srv, a, Host(a.ns, b.ifname), sled

