"""The block policy: how long the kernel drops the frames of a flooding host.

A host the C policer flags as flooding has its frames dropped by the kernel
(a socket filter) for BLOCK_SECONDS, doubled for each repeat up to
BLOCK_MAX_SECONDS: it then costs the server nothing, while an OS client (one
READ per 128 KiB batch) is never flagged. Short enough that a spoofed MAC is
not shut out for long. Pure bookkeeping: the loop applies the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oxboot.link import MAX_BLOCKED

BLOCK_SECONDS = 2.0
BLOCK_MAX_SECONDS = 64.0
STRIKES_KEPT = 4096  # offenders remembered for the doubling


@dataclass
class BlockPolicy:
    """Who is blocked until when, and how often each offender was."""

    blocked: dict[bytes, float] = field(default_factory=dict)  # MAC -> unblocked at
    strikes: dict[bytes, int] = field(default_factory=dict)  # most recent offender last
    blocks: int = 0  # blocks ever imposed

    def block(self, mac: bytes, now: float) -> tuple[float, int]:
        """Block ``mac`` from ``now``; returns (seconds, its strikes)."""
        strikes = self.strikes.pop(mac, 0) + 1
        self.strikes[mac] = strikes
        if len(self.strikes) > STRIKES_KEPT:
            del self.strikes[next(iter(self.strikes))]
        secs = min(BLOCK_SECONDS * 2 ** (strikes - 1), BLOCK_MAX_SECONDS)
        self.blocked[mac] = now + secs
        self.blocks += 1
        return secs, strikes

    def due(self, now: float) -> bool:
        """Whether some block has run out (the list must be applied again)."""
        return any(until <= now for until in self.blocked.values())

    def release(self, now: float) -> list[bytes]:
        """Forget the blocks that ran out by ``now``; returns their MACs."""
        done = [m for m, until in self.blocked.items() if until <= now]
        for mac in done:
            del self.blocked[mac]
        return done

    def filter_list(self) -> list[bytes]:
        """The MACs for the kernel's filter: the most recent offenders if
        there are more than it holds (the rest are still policed in C)."""
        return sorted(self.blocked, key=self.blocked.__getitem__)[-MAX_BLOCKED:]
