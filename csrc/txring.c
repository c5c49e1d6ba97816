/*
 * DATA transmit through a PACKET_TX_RING (TPACKET_V2): frames are built in
 * a ring shared with the kernel and handed over with one send() per batch,
 * which saves the per-message work of sendmmsg (socket lookup, iovec
 * import, skb setup from user memory) that dominates at a million frames
 * per second. See oxboot.h for the contract.
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
#include <linux/if_packet.h>

struct ox_txring {
    int fd;
    uint8_t *map;
    size_t map_len;
    unsigned frame_size;
    unsigned frame_nr;
    unsigned head;
};

#define RING_FRAME 2048u /* room for the largest DATA frame and its header */

ox_txring *ox_txring_open(int fd, unsigned frames)
{
    int version = TPACKET_V2;
    struct tpacket_req req;
    ox_txring *r;
    long page = 4096;

    if (fd < 0 || frames < 8 || frames > 65536)
        return NULL;
    /* Two frames per 4 KiB block: blocks must be a page multiple. */
    frames &= ~1u;
    memset(&req, 0, sizeof(req));
    req.tp_block_size = (unsigned)page;
    req.tp_frame_size = RING_FRAME;
    req.tp_block_nr = frames / 2;
    req.tp_frame_nr = frames;
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) != 0)
        return NULL;
    if (setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof(req)) != 0)
        return NULL;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->map_len = (size_t)req.tp_block_size * req.tp_block_nr;
    r->map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (r->map == MAP_FAILED) {
        free(r);
        return NULL;
    }
    r->fd = fd;
    r->frame_size = RING_FRAME;
    r->frame_nr = frames;
    r->head = 0;
    return r;
}

void ox_txring_close(ox_txring *r)
{
    if (r == NULL)
        return;
    munmap(r->map, r->map_len);
    free(r);
}

static struct tpacket2_hdr *slot(ox_txring *r, unsigned i)
{
    return (struct tpacket2_hdr *)(r->map + (size_t)i * r->frame_size);
}

/* Kick the kernel to transmit everything marked SEND_REQUEST. */
static int flush(ox_txring *r, ox_tx_stats *stats)
{
    for (;;) {
        stats->syscalls++;
        /* MSG_DONTWAIT: queue the frames and return; the slots come back
         * to us (TP_STATUS_AVAILABLE) as the kernel sends them. */
        if (send(r->fd, NULL, 0, MSG_DONTWAIT) >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == ENOBUFS || errno == EAGAIN) {
            struct pollfd p = {.fd = r->fd, .events = POLLOUT};
            (void)poll(&p, 1, 5);
            continue;
        }
        stats->last_errno = errno;
        return -1;
    }
}

long ox_txring_send_data(ox_txring *r, const uint8_t *dst, const uint8_t *src,
                         const uint8_t *image, uint64_t image_size,
                         const uint64_t *offsets, size_t n, uint32_t chunk,
                         ox_tx_stats *stats)
{
    /* The frame data starts TPACKET2_HDRLEN - sizeof(sockaddr_ll) into the
     * slot, aligned: the layout the kernel expects without PACKET_TX_HAS_OFF. */
    const size_t data_off = TPACKET_ALIGN(sizeof(struct tpacket2_hdr));
    size_t pending = 0;

    if (r == NULL || stats == NULL || dst == NULL || src == NULL ||
        (offsets == NULL && n != 0) || chunk == 0 || chunk > OX_MAX_DATA ||
        (image == NULL && image_size != 0))
        return -1;
    if (data_off + OX_DATA_HLEN + OX_MAX_DATA > r->frame_size)
        return -1;
    stats->last_errno = 0;

    for (size_t i = 0; i < n; i++) {
        struct tpacket2_hdr *h = slot(r, r->head);
        unsigned waited = 0;
        /* The slot is ours when the kernel has sent what it held; it frees
         * sent frames moments later (on veth, once the peer has taken
         * them): yield, then sleep. */
        while (__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) != TP_STATUS_AVAILABLE) {
            if (pending) {
                if (flush(r, stats) != 0)
                    return -1;
                pending = 0;
            } else if (ox_tx_backoff(r->fd, ++waited, stats) != 0) {
                return -1;
            }
        }
        uint8_t *frame = (uint8_t *)h + data_off;
        long len = ox_build_data(frame, r->frame_size - data_off, dst, src, image,
                                 image_size, offsets[i], chunk);
        if (len < 0) {
            stats->last_errno = EINVAL;
            return -1;
        }
        h->tp_len = (uint32_t)len;
        __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
        r->head = (r->head + 1) % r->frame_nr;
        stats->frames++;
        stats->bytes += (uint64_t)len;
        pending++;
        if (pending >= r->frame_nr / 2) {
            if (flush(r, stats) != 0)
                return -1;
            pending = 0;
        }
    }
    if (pending && flush(r, stats) != 0)
        return -1;
    return (long)n;
}
