"""A lab on one machine: network namespaces joined by veth pairs (and a
bridge for several sleds), for the demo, the tests and the benchmarks.

Everything made here is removed by :meth:`Lab.close`, even after a failure;
names carry the pid so parallel runs and leftovers never collide. Needs root
(or CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_seq = itertools.count()


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def _name(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 100000}x{next(_seq)}"


@dataclass
class Host:
    """A network namespace with one interface towards the lab."""

    ns: str
    ifname: str

    def cmd(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def mac(self) -> str:
        out = sh("ip", "-n", self.ns, "-o", "link", "show", self.ifname).stdout
        return out.split("link/ether ")[1].split()[0]


@dataclass
class Lab:
    """Namespaces, links and processes of one test; ``close`` removes all."""

    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _ns(self, prefix: str) -> str:
        ns = _name(prefix)
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def pair(self) -> tuple[Host, Host]:
        """Two hosts joined by one veth pair."""
        a, b = self._ns("oxs"), self._ns("oxc")
        ia, ib = _name("va"), _name("vb")
        sh("ip", "link", "add", ia, "netns", a, "type", "veth", "peer", "name", ib, "netns", b)
        for ns, ifname in ((a, ia), (b, ib)):
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        return Host(a, ia), Host(b, ib)

    def bridge(self, n: int, queues: int = 1) -> list[Host]:
        """`n` hosts, each on a veth to a bridge in a namespace of its own;
        `queues` transmit and receive queues on each veth (AF_XDP binds one
        socket per queue)."""
        q = ["numtxqueues", str(queues), "numrxqueues", str(queues)]
        core = self._ns("oxl")
        sh("ip", "-n", core, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", core, "link", "set", "br0", "up")
        hosts = []
        for _ in range(n):
            ns = self._ns("oxh")
            inner, outer = _name("vh"), _name("vp")
            sh("ip", "link", "add", inner, "netns", ns, *q, "type", "veth", "peer", "name", outer,
               "netns", core, *q)
            sh("ip", "-n", core, "link", "set", outer, "master", "br0")
            sh("ip", "-n", core, "link", "set", outer, "up")
            sh("ip", "-n", ns, "link", "set", inner, "up")
            hosts.append(Host(ns, inner))
        return hosts

    def start(self, host: Host, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        f = open(log, "wb")  # kept open for the process
        p = subprocess.Popen(host.cmd(argv), stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
        f.close()
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for ns in reversed(self.namespaces):
            # Killing whatever still runs inside, then the namespace; its
            # veth ends go with it (and their peers with them).
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def lingering_namespaces() -> list[str]:
    """Namespaces this process made and did not remove (should be none)."""
    tag = f"{os.getpid() % 100000}x"
    out = sh("ip", "netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in out if line and tag in line.split()[0]]
