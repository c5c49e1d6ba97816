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
lost frame of each plan). Bounds, so that a host cannot use repair to
amplify: only established sessions are repaired, at most
:data:`REPAIR_ROUNDS` rounds per READ, each at most what that READ asked
for, and in all at most :data:`REPAIR_SHARE` times the image's chunks per
session.

Times are integer nanoseconds here, so that the C core's mirror of
:class:`RoundTrip` (``csrc/serve.c``, for the READs it answers itself)
computes exactly the same waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: --repair choices: "on" resends the READ's offsets whole in every round;
#: "tail" resends its last quarter first, then the rest, then all of it
#: (fewer duplicates when the tail of a burst is what gets lost, one more
#: round when it is not); "off" leaves lost frames to the client's timer.
REPAIR_MODES = ("on", "tail", "off")
DEFAULT_REPAIR = "on"
#: Rounds per READ at most: a sled whose next READ does not come after them
#: has lost that READ, stopped or died; its own 1 s timer takes over.
REPAIR_ROUNDS = 3
#: Each round waits this many times longer than the one before.
REPAIR_BACKOFF = 2
#: The wait after a READ before it counts as overdue: its round trip plus
#: the larger of this margin and four times the round trip's deviation
#: (TCP's retransmission timer, RFC 6298), within the bounds below.
REPAIR_MARGIN_NS = 500_000
REPAIR_MIN_WAIT_NS = 1_000_000
#: Far below the client's own 1 s timer, or repair would come after it.
REPAIR_MAX_WAIT_NS = 200_000_000
#: Before a sled's first round trip is measured.
REPAIR_FIRST_WAIT_NS = 5_000_000
#: Repair frames per session at most, in image chunks: an honest sled at 5%
#: DATA loss measured ~1.3 (BENCHMARKS.md); past it, the client's timer.
REPAIR_SHARE = 2


@dataclass(slots=True)
class RoundTrip:
    """A sled's round trip, smoothed (RFC 6298's estimator, integer ns)."""

    srtt: int = 0  # 0: no sample yet
    rttvar: int = 0

    def sample(self, ns: int) -> None:
        ns = max(ns, 1)
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


def plan(offsets: Sequence[int], round_: int, mode: str) -> tuple[int, ...]:
    """What round `round_` (0 = the first) of a READ's repair resends."""
    if mode == "tail" and len(offsets) >= 4 and round_ < 2:
        split = len(offsets) - (len(offsets) + 3) // 4
        return tuple(offsets[split:] if round_ == 0 else offsets[:split])
    return tuple(offsets)


@dataclass(slots=True)
class RepairState:
    """One session's repair bookkeeping: its last READ and the rounds sent."""

    rtt: RoundTrip = field(default_factory=RoundTrip)
    offsets: tuple[int, ...] = ()  # the last READ's due offsets (): none pending
    read_at: float = float("-inf")  # when it came
    wait: float = 0.0  # seconds: how long after it the next READ was overdue
    due: float | None = None  # when the next round goes (None: no more)
    rounds: int = 0  # rounds sent for it
    resent: int = 0  # repair DATA sent to this session, every READ
