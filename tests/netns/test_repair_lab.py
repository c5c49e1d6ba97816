"""Batch repair over real kernel networking: a boot that loses DATA at the
sled's ingress (nftables, random) completes without waiting for the
client's 1 s timer when the server repairs, the server counts its repairs
and the emulator the duplicates it dropped (a console line each on the OS);
with --repair off, lost frames wait for the client's timer as before."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from support.lab import boot_once, drop_data, dropped_frames, events

from oxboot.link import af_xdp_unavailable
from oxboot.netlab import Lab

pytestmark = [pytest.mark.net, pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true",
    reason="network namespaces need root (CI runs as root)",
)]


def _final_stats(log: Path) -> dict:
    return [e for e in events(log) if e["event"] == "stats"][-1]


@pytest.mark.parametrize("extra", [[], ["--workers", "2"], ["--tx", "send"], ["--tx", "xdp"]],
                         ids=" ".join)
def test_repaired_boot_under_data_loss(lab: Lab, images: dict, tmp_path: Path, extra: list[str],
                                       boot_times: Callable[[str], None]) -> None:
    """5% of the DATA lost: repaired (in C's timing on the fast path, in the
    protocol layer's with --tx send), verified, counted on both sides."""
    if "xdp" in extra and (why := af_xdp_unavailable()):
        pytest.skip(why)
    srv, sled = lab.pair()
    drop_data(sled, 5)  # 24 MiB: 192 batches, nearly all lose a frame
    _, result = boot_once(lab, srv, sled, images["big"], tmp_path, timeout=150,
                          server_args=extra)
    lost = dropped_frames(sled)
    stats = _final_stats(tmp_path / "server.log")
    assert lost > 0 and stats["repairs"] > 0 and stats["repair_frames"] > 0, stats
    # Every frame of a round is one the READ asked for, and the client
    # only ever drops what it already had: duplicates come from repairs
    # (or from answers to its own re-asks that a repair beat).
    assert 0 < result["duplicates"] <= stats["repair_frames"] + result["retransmits"]
    # Far fewer slots waited for the client's timer than frames were lost.
    assert result["retransmits"] < lost / 4, (result, lost)
    boot_times(f"5% DATA loss, repair on {' '.join(extra)}: 24 MiB in {result['seconds']:.2f} s, "
               f"{lost} DATA lost, {stats['repairs']} repairs ({stats['repair_frames']} frames), "
               f"{result['duplicates']} duplicates, {result['retransmits']} retransmissions")


def test_repair_off_leaves_losses_to_the_client_timer(lab: Lab, images: dict, tmp_path: Path,
                                                       boot_times: Callable[[str], None]) -> None:
    srv, sled = lab.pair()
    drop_data(sled, 5)  # 1 MiB: each lost DATA stalls its batch for ~1 s
    _, result = boot_once(lab, srv, sled, images["small"], tmp_path, timeout=150,
                          server_args=("--repair", "off"))
    stats = _final_stats(tmp_path / "server.log")
    assert stats.get("repairs", 0) == 0 and stats.get("repair_frames", 0) == 0, stats
    assert result["duplicates"] == 0
    assert result["retransmits"] == dropped_frames(sled) > 0
    boot_times(f"5% DATA loss, repair off: 1 MiB in {result['seconds']:.1f} s, "
               f"{result['retransmits']} retransmissions")


def test_lost_reads_are_left_to_the_client_and_bounded(lab: Lab, images: dict,
                                                        tmp_path: Path) -> None:
    """READs lost on the way to the server: a repair of the batch before
    brings nothing but duplicates, the boot completes on the client's timer."""
    srv, sled = lab.pair()
    drop_data(srv, 5, msg_type=0x9003)  # at the SERVER's ingress
    _, result = boot_once(lab, srv, sled, images["big"], tmp_path, timeout=150)
    lost_reads = dropped_frames(srv)
    stats = _final_stats(tmp_path / "server.log")
    assert lost_reads > 0 and result["retransmits"] > 0
    # Every round resends at most what one READ asked for (128 offsets), and
    # the client drops no more than the repairs and its re-asks brought.
    assert stats["repair_frames"] <= 128 * stats["repairs"], stats
    assert result["duplicates"] <= stats["repair_frames"] + result["retransmits"]
