/*
 * The few operating-system services the portable core uses: the monotonic
 * clock, yielding the CPU, and an early start of writeback for large
 * outputs. POSIX, with the Linux-only sync_file_range(2) behind its own
 * feature macro (a no-op elsewhere).
 */
#define _GNU_SOURCE /* glibc: sync_file_range; ignored by other C libraries */
#include "internal.h"

#include <fcntl.h>
#include <sched.h>
#include <time.h>

/* ---- Files ------------------------------------------------------------ */

int ox_writeback(int fd, uint64_t offset, uint64_t len)
{
#ifdef SYNC_FILE_RANGE_WRITE
    if (offset > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - offset)
        return -1;
    return sync_file_range(fd, (off64_t)offset, (off64_t)len, SYNC_FILE_RANGE_WRITE);
#else
    (void)fd;
    (void)offset;
    (void)len;
    return 0;
#endif
}

/* ---- Time ------------------------------------------------------------- */

uint64_t ox_mono_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * OX_NS_PER_S + (uint64_t)t.tv_nsec;
}

/* Give the CPU to anything else runnable; 1 if something was (the yield
 * took more than OX_YIELD_BUSY_NS), so that a spinning loop stops and
 * sleeps instead: a task that yields to a busy neighbour waits out that
 * neighbour's time slice, one that sleeps is woken at once. */
#define OX_YIELD_BUSY_NS 20000u

int ox_yield_contended(void)
{
    uint64_t t0 = ox_mono_ns();
    sched_yield();
    return ox_mono_ns() - t0 > OX_YIELD_BUSY_NS;
}
