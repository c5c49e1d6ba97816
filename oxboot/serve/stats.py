"""What the server reports: its counters, and each sled's progress.

The protocol layer counts what it decided, the C receive loops what they
answered themselves, the transmit workers what they sent; :func:`server_stats`
adds them up as one JSON-ready dict (the ``stats`` event, the benchmarks).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from oxboot.link import mac_str
from oxboot.protocol import BootServer
from oxboot.serve.images import ServedImage
from oxboot.serve.policy import BlockPolicy
from oxboot.serve.receiver import POLICE_FIELDS, TOTAL_FIELDS, Receiver
from oxboot.serve.txworkers import TxPool


@dataclass
class SledState:
    """What the I/O layer keeps per sled: the image version it boots."""

    image: ServedImage
    index: int
    started: float
    frames: int = 0
    bytes: int = 0
    high: int = 0

    def progress(self, mac: bytes, now: float) -> dict[str, object]:
        """Where its boot is: percent, MB/s and the time left at that rate."""
        secs = max(now - self.started, 1e-6)
        rate = self.high / secs
        eta = (self.image.size - self.high) / rate if rate else 0.0
        return {"mac": mac_str(mac), "image": str(self.image.path), "name": self.image.name,
                "percent": round(100.0 * self.high / self.image.size, 1),
                "mbps": round(rate / 1e6, 2), "eta": round(eta, 1)}


class RxTotals:
    """The kernel's receive counters (which reset on each read), summed."""

    def __init__(self) -> None:
        self.packets = 0
        self.drops = 0

    def update(self, receivers: Sequence[Receiver]) -> None:
        for r in receivers:
            packets, drops = r.rx_stats()
            self.packets += packets
            self.drops += drops


def server_stats(proto: BootServer, receivers: Sequence[Receiver], pool: TxPool,
                 rx: RxTotals, policy: BlockPolicy, finished: int) -> dict[str, object]:
    """Counters for monitoring and benchmarks (JSON-ready)."""
    t = os.times()
    rx.update(receivers)
    police = {k: sum(r.police_counts[k] for r in receivers) for k in POLICE_FIELDS}
    fast = {k: sum(r.totals[k] for r in receivers) for k in TOTAL_FIELDS}
    counters = dict(proto.counters)
    # READs answered in C count as the protocol layer would have.
    for key in ("reads", "offsets", "retransmits", "repeats"):
        counters[key] = counters.get(key, 0) + fast[key]
    counters["frames"] = counters.get("frames", 0) + fast["reads"]
    tx = pool.totals()
    for key in ("frames", "bytes", "syscalls", "errors"):
        tx[f"tx_{key}"] += fast[key]
    tx["tx_jobs"] += fast["reads"]
    return {**counters, "sessions_created": counters.get("sessions", 0),
            "rx_packets": rx.packets, "rx_drops": rx.drops,
            "rx_policed": police["policed"], "rx_foreign": police["foreign"],
            "rx_accepted": police["accepted"],
            "sources_blocked": policy.blocks, "blocked_now": len(policy.blocked),
            "rx_served_in_c": police["served"],
            "rx_served_per_worker": [r.police_counts["served"] for r in receivers],
            **tx, "workers": len(pool.workers),
            "tx_methods": [w.link.tx_method for w in pool.workers],
            "cpu_user": t.user,
            "cpu_system": t.system,
            # Live values last: the protocol's counters of the same names
            # count events, these are states.
            "sessions": len(proto.sessions), "finished": finished}
