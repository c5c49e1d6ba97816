"""Batch repair: the rules by which a server resends a batch's DATA early.

The OS client re-asks for a lost DATA only after its 1 s timer, and starts
no new batch until every slot of the current one is filled: one lost frame
costs its batch a second. The server sees each sled's round trip (a READ,
then the next one), so when the next READ is overdue by a margin over that
round trip, a frame (or that READ) was lost, and resending the last READ's
DATA lets the client complete the batch and move on at once.

The cost lands on the client's console: every DATA for a slot already
filled makes the OS print ``dropped data packet for offset N``. The server
cannot know which frames were lost, so a repair resends what the READ
asked for (BENCHMARKS.md has the measured boot times and duplicates per
lost frame). Bounds, so that a host cannot use repair to
amplify: only established sessions are repaired, at most
:data:`REPAIR_ROUNDS` rounds per READ, each at most what that READ asked
for, and in all at most :data:`REPAIR_SHARE` times the image's chunks per
session.

Times are integer nanoseconds here, so that the C core's mirror of
:class:`RoundTrip` (``csrc/serve.c``, for the READs it answers itself)
computes exactly the same waits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: --repair choices. "on" resends the READ's offsets whole in every round.
#: Measured against resending its last quarter first, then the rest (16 MiB,
#: nftables random loss at the sled, BENCHMARKS.md): at 1% loss 40-42 against
#: 36-39 duplicates per lost frame, but 0.15 s against 0.47-0.72 s per boot;
#: at 5% no fewer duplicates and 3-10x slower. Random loss spares no part of a
#: batch, so any round that leaves part of it out only adds a round.
REPAIR_MODES = ("on", "off")
DEFAULT_REPAIR = "on"
#: Rounds per READ at most: a sled whose next READ does not come after them
#: has lost that READ, stopped or died; its own 1 s timer takes over. At 5%
#: DATA loss a batch still misses a frame after 3 rounds about once per
#: 64 MiB boot (6.4 lost x 0.05**3 per batch, 512 batches), costing that
#: boot a second (measured: 1.2 or 2.2 s); after 4, once in 50 boots.
REPAIR_ROUNDS = 4
#: Each round waits this many times longer than the one before.
REPAIR_BACKOFF = 2
#: The wait after a READ before it counts as overdue: its round trip plus
#: the larger of this margin and four times the round trip's deviation
#: (TCP's retransmission timer, RFC 6298), within the bounds below.
#: Measured (quick and full benchmarks, three runs each way): with a 1 ms
#: minimum a 1% loss boot took 4.6-4.9x its clean time (16 MiB) and 6.2x
#: (64 MiB); with 0.5 ms, 3.2-3.9x and 4.5-4.8x, duplicates per lost frame
#: unchanged (40-43, 10.1-10.3), at most 256 needless duplicates per three
#: clean boots, 8 sleds at 5% 2.7-4.4x instead of 2.3-2.5x (their round
#: trips on 2 busy cores are noisier). The minimum equals the margin, so it
#: binds only if the margin is set lower.
REPAIR_MARGIN_NS = 500_000
REPAIR_MIN_WAIT_NS = 500_000
#: Far below the client's own 1 s timer, or repair would come after it.
REPAIR_MAX_WAIT_NS = 200_000_000
#: Before a sled's first round trip is measured.
REPAIR_FIRST_WAIT_NS = 5_000_000
#: Round trip samples are clipped to this (18 minutes): far from overflow
#: in the C core's 64-bit arithmetic.
REPAIR_MAX_SAMPLE_NS = 1 << 40
#: Repair frames per session at most, in image chunks: an honest sled at 5%
#: DATA loss measured ~1.3 (BENCHMARKS.md); past it, the client's timer.
REPAIR_SHARE = 2


@dataclass(slots=True)
class RoundTrip:
    """A sled's round trip, smoothed (RFC 6298's estimator, integer ns)."""

    srtt: int = 0  # 0: no sample yet
    rttvar: int = 0

    def sample(self, ns: int) -> None:
        ns = min(max(ns, 1), REPAIR_MAX_SAMPLE_NS)
        if self.srtt == 0:
            self.srtt, self.rttvar = ns, ns // 2
        else:
            self.rttvar = (3 * self.rttvar + abs(self.srtt - ns)) // 4
            self.srtt = (7 * self.srtt + ns) // 8

    def wait(self) -> int:
        """Nanoseconds after a READ at which the next one is overdue."""
        if self.srtt == 0:
            return REPAIR_FIRST_WAIT_NS
        wait = self.srtt + max(REPAIR_MARGIN_NS, 4 * self.rttvar)
        return min(max(wait, REPAIR_MIN_WAIT_NS), REPAIR_MAX_WAIT_NS)


@dataclass(slots=True)
class RepairState:
    """One session's repair bookkeeping: its last READ and the rounds sent."""

    rtt: RoundTrip = field(default_factory=RoundTrip)
    offsets: tuple[int, ...] = ()  # the last READ's due offsets (): none pending
    read_at: float = float("-inf")  # when it came
    wait: float = 0.0  # seconds: how long after it the next READ was overdue
    sent_at: float = float("-inf")  # when it, or its last repair round, went
    due: float | None = None  # when the next round goes (None: no more)
    rounds: int = 0  # rounds sent for it
    resent: int = 0  # repair DATA sent to this session, every READ
