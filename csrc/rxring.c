/*
 * DATA receive through a PACKET_RX_RING (TPACKET_V2), for the emulated sled.
 *
 * With recvmmsg the receiving process pays for every frame: its share of
 * the system call, dequeuing the skb under the socket lock, copying it out
 * and freeing it. With a ring the kernel copies each frame into memory
 * shared with us as it arrives (on a veth, in the sender's softirq) and
 * frees the skb there; the sled reads frames in place with no system call
 * while they keep coming, and sleeps in poll() only when the ring is empty.
 * V2 rather than V3: V3 hands over whole blocks, which a lock-step protocol
 * (128 frames, then the next READ) would leave waiting for the block
 * timeout. See oxboot.h for the contract.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/if_packet.h>

struct ox_rxring {
    int fd;
    uint8_t *map;
    size_t map_len;
    unsigned frame_nr;
    unsigned head; /* the next frame the kernel hands us */
    uint64_t first_wait_ns; /* how long the last batch's first frame took */
};

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels say EINVAL */
#endif

#define RXRING_FRAME 2048u        /* a whole DATA frame and the kernel's header */
#define RXRING_BLOCK (64u * 1024u) /* frames never straddle blocks: a multiple of the frame */
#define RXRING_MAX_FRAMES (1u << 20)
/* How long to look for the next frame of a burst before sleeping, and for
 * the first frame of a batch when the last one's came that soon: measured
 * in bench/notes.md (a 256 MiB boot). */
#define RXRING_SPIN_NS 20000u
#define RXRING_FIRST_SPIN_NS 50000u

/* Where the kernel puts the frame (tp_mac) is at least past its headers. */
#define RXRING_HDRLEN (TPACKET_ALIGN(sizeof(struct tpacket2_hdr)) + sizeof(struct sockaddr_ll))

ox_rxring *ox_rxring_open(int fd, unsigned frames)
{
    const unsigned per_block = RXRING_BLOCK / RXRING_FRAME;
    struct tpacket_req req;
    int version = TPACKET_V2, one = 1;
    ox_rxring *r;
    void *map;

    if (fd < 0 || frames == 0 || frames > RXRING_MAX_FRAMES) {
        errno = EINVAL;
        return NULL;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) != 0)
        goto fail;
    /* Our own READs would take ring slots and be skipped: not worth a copy. */
    (void)setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one));
    memset(&req, 0, sizeof(req));
    req.tp_block_size = RXRING_BLOCK;
    req.tp_block_nr = (frames + per_block - 1) / per_block;
    req.tp_frame_size = RXRING_FRAME;
    req.tp_frame_nr = req.tp_block_nr * per_block;
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) != 0)
        goto fail;
    r->map_len = (size_t)req.tp_block_size * req.tp_block_nr;
    map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        goto fail; /* the ring stays set up in the socket until it is closed */
    r->fd = fd;
    r->map = map;
    r->frame_nr = req.tp_frame_nr;
    return r;
fail:
    free(r);
    return NULL;
}

void ox_rxring_close(ox_rxring *r)
{
    if (r == NULL)
        return;
    /* Only the mapping: the socket keeps its ring until it is closed, and
     * by then it may be (the fd is not ours). */
    munmap(r->map, r->map_len);
    free(r);
}

/* Take the frames the kernel has handed over, up to `max_frames`; stop at
 * the end of the batch or at a frame for Python. */
static size_t ring_drain(ox_rxring *r, ox_rx_target *t, size_t max_frames, int idle)
{
    size_t total = 0;
    while (total < max_frames) {
        uint8_t *frame = r->map + (size_t)r->head * RXRING_FRAME;
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)(void *)frame;
        /* Acquire: the frame's bytes are the kernel's until it says so. */
        uint32_t status = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
        if (!(status & TP_STATUS_USER))
            break;
        uint32_t mac = h->tp_mac, snap = h->tp_snaplen;
        const struct sockaddr_ll *from =
            (const struct sockaddr_ll *)(const void *)(frame + TPACKET_ALIGN(sizeof(*h)));
        total++;
        t->stats->frames++;
        if (from->sll_pkttype != PACKET_OUTGOING) {
            /* The kernel's own offsets, checked all the same. */
            if (mac < RXRING_HDRLEN || mac > RXRING_FRAME || snap > RXRING_FRAME - mac)
                t->stats->bad++;
            else
                ox_rx_data_frame(t, frame + mac, snap, snap != h->tp_len);
        }
        /* Release: we are done reading before the kernel may write again. */
        __atomic_store_n(&h->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        r->head = r->head + 1 == r->frame_nr ? 0 : r->head + 1;
        if (*t->other_len != 0 || (!idle && *t->busy_count == 0))
            break;
    }
    return total;
}

/* 1 if a frame is waiting at the head within spin_ns, else 0. */
static int ring_spin(ox_rxring *r, uint64_t spin_ns)
{
    const struct tpacket2_hdr *h =
        (const struct tpacket2_hdr *)(const void *)(r->map + (size_t)r->head * RXRING_FRAME);
    uint64_t until;
    if (spin_ns == 0)
        return 0;
    until = ox_mono_ns() + spin_ns;
    do {
        for (int i = 0; i < 64; i++) {
            if (__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)
                return 1;
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
        /* Never at the expense of anything else runnable (the server, the
         * other sleds of a rack emulated on a few cores): when something
         * else wants the CPU, stop looking and sleep. */
        if (ox_yield_contended())
            return 0;
    } while (ox_mono_ns() < until);
    return 0;
}

/* Fault in the ramdisk pages [offset, offset+len) now, in one call, while
 * the server answers the READ just sent: the sled's first touch of each
 * page would otherwise take a fault (and the page's zeroing) per 4 KiB in
 * the middle of the burst, with frames waiting. A real sled's RAM is just
 * there; ours is a lazily zero-filled mapping. A 256 MiB boot, 5 boots
 * each, alternating: median 746 -> 795 MB/s (bench/notes.md); one call
 * for several batches ahead was slower (frames pile up in the ring
 * meanwhile). Best effort:
 * kernels before 5.14 lack MADV_POPULATE_WRITE and fault as before. */
static void populate(const ox_rx_target *t, uint64_t offset, uint64_t len)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uint64_t end;
    uintptr_t from, to;

    if (offset >= t->ram_len)
        return;
    end = len < t->ram_len - offset ? offset + len : t->ram_len;
    from = (uintptr_t)(t->ram + offset) & ~(page - 1);
    to = (uintptr_t)(t->ram + end);
    (void)madvise((void *)from, to - from, MADV_POPULATE_WRITE);
}

/* The batch is complete: start the next one as ClientSession.poll would,
 * if that is all it would do. 1 if a READ went out (or was lost). */
static int next_batch(ox_rxring *r, ox_rx_target *t, ox_rx_next *next)
{
    const uint64_t span = (uint64_t)OX_SLOTS * OX_CHUNK;
    uint8_t frame[OX_READ_FRAME];
    uint64_t base = next->next_offset;
    double now;

    if (t->stats->eof != 0 || base >= next->data_size || base > UINT64_MAX - span)
        return 0;
    now = (double)ox_mono_ns() / 1e9;
    for (unsigned i = 0; i < OX_SLOTS; i++) {
        t->slot_offsets[i] = base + (uint64_t)i * OX_CHUNK;
        t->slot_busy[i] = 1;
        next->slot_sent[i] = now;
    }
    *t->busy_count = OX_SLOTS;
    t->hint = 0;
    next->next_offset = base + span;
    if (ox_build_read(frame, sizeof(frame), t->server, t->self_mac, t->slot_offsets,
                      OX_SLOTS) != OX_READ_FRAME)
        return 0; /* cannot happen: the arguments were checked */
    next->reads++;
    if (send(r->fd, frame, sizeof(frame), MSG_DONTWAIT) != (ssize_t)sizeof(frame))
        next->send_errors++; /* the 1 s retransmission takes care of it */
    populate(t, base, span);
    return 1;
}

long ox_rxring_data_wait(ox_rxring *r, const ox_rx_args *a, size_t max_frames,
                         int timeout_ms, ox_rx_next *next)
{
    ox_rx_target t;
    size_t total = 0, batch_seen = 0;
    uint64_t start, batch_t0, spin;
    int idle;

    if (a == NULL) {
        errno = EINVAL;
        return -1;
    }
    t = ox_rx_target_of(a);
    if (r == NULL || timeout_ms < 0 || !ox_rx_target_ok(&t) ||
        (next != NULL && next->slot_sent == NULL)) {
        errno = EINVAL;
        return -1;
    }
    *t.other_len = 0;
    /* Nothing outstanding: return with whatever arrives first. */
    idle = *t.busy_count == 0;
    start = batch_t0 = ox_mono_ns();
    for (;;) {
        size_t got = ring_drain(r, &t, max_frames - total, idle);
        if (got > 0 && batch_seen == 0 && !idle)
            r->first_wait_ns = ox_mono_ns() - batch_t0;
        batch_seen += got;
        total += got;
        if (*t.other_len != 0 || total >= max_frames)
            return (long)total;
        if (idle ? total > 0 : *t.busy_count == 0) {
            if (idle || next == NULL || !next_batch(r, &t, next))
                return (long)total;
            batch_t0 = ox_mono_ns();
            batch_seen = 0;
        }
        long spent = (long)((ox_mono_ns() - start) / 1000000u);
        if (spent >= timeout_ms)
            return (long)total;
        /* Look again for a while before sleeping: within a burst the next
         * frame is a microsecond or two away, and a sleeping reader costs
         * the sender a wake-up (an inter-processor interrupt) per frame;
         * the first frame of a batch, if the last batch's came that soon
         * (one sled and an idle server). Otherwise sleep at once: spinning
         * sleds would take the CPU from the server and from each other. */
        if (batch_seen > 0)
            spin = RXRING_SPIN_NS;
        else
            spin = r->first_wait_ns < RXRING_FIRST_SPIN_NS ? RXRING_FIRST_SPIN_NS : 0;
        if (ring_spin(r, spin))
            continue;
        struct pollfd p = {.fd = r->fd, .events = POLLIN};
        int n = poll(&p, 1, (int)(timeout_ms - spent));
        if (n < 0 && errno != EINTR)
            return -1;
        if (n > 0 && (p.revents & (POLLERR | POLLNVAL)))
            return -1;
        if (n == 0)
            return (long)total;
    }
}
