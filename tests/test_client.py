"""The sled emulator's own helpers (no network): its prepared RAM."""

from __future__ import annotations

import resource

import pytest

from oxboot.sled.ramdisk import prepared_ramdisk

pytestmark = pytest.mark.net  # the sled emulator is Linux-only

BATCH = 128 * 1024


def faults_touching(ram, start: int, end: int) -> int:  # an mmap
    """Minor page faults taken while writing one byte per page of [start, end)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for offset in range(start, end, 4096):
        ram[offset] = 1
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def testprepared_ramdisk_is_faulted_in_up_to_the_batch_past_the_data() -> None:
    ram = prepared_ramdisk(8 << 20, 3 * BATCH + 5)
    assert ram is not None and len(ram) == 8 << 20
    try:
        # DATA lands on the first four batches: no page of them faults now...
        assert faults_touching(ram, 0, 4 * BATCH) < 4
        # ...while the rest of the ramdisk is still only reserved.
        assert faults_touching(ram, 6 << 20, (6 << 20) + BATCH) >= 1
        assert not any(ram[4 * BATCH:6 << 20])  # and zero, like a fresh ramdisk
    finally:
        ram.close()


def testprepared_ramdisk_sizes() -> None:
    ram = prepared_ramdisk(5000, 4096)  # the OS rounds the ramdisk up to pages
    assert ram is not None and len(ram) == 8192
    ram.close()
    assert prepared_ramdisk(1 << 20, 0) is None  # no OS client accepts these
    assert prepared_ramdisk(1 << 20, (1 << 20) + 1) is None
