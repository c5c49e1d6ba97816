/*
 * DATA transmit through an AF_XDP socket (transmit only, no XDP program):
 * frames are built in a UMEM shared with the kernel and handed over by
 * descriptors in a TX ring, with one sendto() per batch to kick the kernel;
 * the kernel returns each frame's UMEM address on the completion ring once
 * it is done with it. On a driver without zero-copy AF_XDP (veth, and any
 * driver in XDP_COPY mode) the kernel copies each frame into an skb and
 * hands it straight to the driver (no qdisc). See oxboot.h for the
 * contract: the frames are the bytes ox_tx_data sends.
 *
 * Ring protocol (the kernel's Documentation/networking/af_xdp.rst): we are
 * the producer of the TX ring and the consumer of the completion ring. A
 * producer publishes entries with a store-release of its index after
 * writing them; a consumer reads the other side's index with a
 * load-acquire before reading the entries it covers, and gives them back
 * with a store-release of its own index.
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
#include <linux/if_xdp.h>

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

#define XSK_FRAME 2048u /* UMEM chunk: room for the largest DATA frame */
#define XSK_FILL 8u     /* the kernel wants a fill ring; we never receive */
#define XSK_SNDBUF (8 << 20)

struct ox_xsk {
    int fd;
    unsigned frames; /* UMEM chunks == TX ring == completion ring entries */
    uint32_t mask;
    uint8_t *umem;
    size_t umem_len;
    /* TX ring (we produce) */
    uint8_t *tx_map;
    size_t tx_map_len;
    uint32_t *tx_prod, *tx_cons;
    struct xdp_desc *tx_desc;
    uint32_t tx_head; /* our producer index, published or not */
    /* completion ring (we consume) */
    uint8_t *cq_map;
    size_t cq_map_len;
    uint32_t *cq_prod, *cq_cons;
    uint64_t *cq_addr;
    uint32_t cq_tail; /* our consumer index */
    /* UMEM chunks that are ours to fill: a stack of chunk indices */
    uint32_t *free_idx;
    uint32_t free_n;
};

static void xsk_release(ox_xsk *x)
{
    int saved = errno;
    if (x->tx_map != NULL && x->tx_map != MAP_FAILED)
        munmap(x->tx_map, x->tx_map_len);
    if (x->cq_map != NULL && x->cq_map != MAP_FAILED)
        munmap(x->cq_map, x->cq_map_len);
    if (x->fd >= 0)
        close(x->fd); /* the kernel unpins the UMEM once the socket is gone */
    if (x->umem != NULL && x->umem != MAP_FAILED)
        munmap(x->umem, x->umem_len);
    free(x->free_idx);
    free(x);
    errno = saved;
}

ox_xsk *ox_xsk_open(int ifindex, unsigned queue, unsigned frames)
{
    struct xdp_umem_reg reg;
    struct xdp_mmap_offsets off;
    struct sockaddr_xdp sxdp;
    socklen_t optlen = sizeof(off);
    unsigned fill = XSK_FILL;
    int sndbuf = XSK_SNDBUF;
    ox_xsk *x;

    /* Ring sizes must be powers of two. */
    if (ifindex <= 0 || frames < 8 || frames > 65536 || (frames & (frames - 1)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    x = calloc(1, sizeof(*x));
    if (x == NULL)
        return NULL;
    x->fd = -1;
    x->frames = frames;
    x->mask = frames - 1;
    x->free_idx = calloc(frames, sizeof(*x->free_idx));
    if (x->free_idx == NULL)
        goto fail;
    x->umem_len = (size_t)frames * XSK_FRAME;
    x->umem = mmap(NULL, x->umem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (x->umem == MAP_FAILED) {
        x->umem = NULL;
        goto fail;
    }
    x->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (x->fd < 0)
        goto fail;

    memset(&reg, 0, sizeof(reg));
    reg.addr = (uint64_t)(uintptr_t)x->umem;
    reg.len = x->umem_len;
    reg.chunk_size = XSK_FRAME;
    reg.headroom = 0;
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)) != 0)
        goto fail;
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_FILL_RING, &fill, sizeof(fill)) != 0 ||
        setsockopt(x->fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &frames, sizeof(frames)) != 0 ||
        setsockopt(x->fd, SOL_XDP, XDP_TX_RING, &frames, sizeof(frames)) != 0)
        goto fail;
    /* Frames in flight are charged to the send buffer: room for the ring. */
    if (setsockopt(x->fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) != 0)
        (void)setsockopt(x->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));

    memset(&off, 0, sizeof(off));
    if (getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &optlen) != 0)
        goto fail;
    if (optlen != sizeof(off)) { /* a kernel older than the ring flags (4.x) */
        errno = EOPNOTSUPP;
        goto fail;
    }
    x->tx_map_len = off.tx.desc + (size_t)frames * sizeof(struct xdp_desc);
    x->tx_map = mmap(NULL, x->tx_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                     x->fd, XDP_PGOFF_TX_RING);
    if (x->tx_map == MAP_FAILED) {
        x->tx_map = NULL;
        goto fail;
    }
    x->cq_map_len = off.cr.desc + (size_t)frames * sizeof(uint64_t);
    x->cq_map = mmap(NULL, x->cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                     x->fd, XDP_UMEM_PGOFF_COMPLETION_RING);
    if (x->cq_map == MAP_FAILED) {
        x->cq_map = NULL;
        goto fail;
    }
    /* The offsets come from the kernel; still, nothing outside the maps. */
    if (off.tx.producer + sizeof(uint32_t) > off.tx.desc ||
        off.tx.consumer + sizeof(uint32_t) > off.tx.desc ||
        off.cr.producer + sizeof(uint32_t) > off.cr.desc ||
        off.cr.consumer + sizeof(uint32_t) > off.cr.desc ||
        off.tx.producer % 4 || off.tx.consumer % 4 || off.tx.desc % 8 ||
        off.cr.producer % 4 || off.cr.consumer % 4 || off.cr.desc % 8) {
        errno = EPROTO;
        goto fail;
    }
    x->tx_prod = (uint32_t *)(x->tx_map + off.tx.producer);
    x->tx_cons = (uint32_t *)(x->tx_map + off.tx.consumer);
    x->tx_desc = (struct xdp_desc *)(x->tx_map + off.tx.desc);
    x->cq_prod = (uint32_t *)(x->cq_map + off.cr.producer);
    x->cq_cons = (uint32_t *)(x->cq_map + off.cr.consumer);
    x->cq_addr = (uint64_t *)(x->cq_map + off.cr.desc);

    memset(&sxdp, 0, sizeof(sxdp));
    sxdp.sxdp_family = AF_XDP;
    sxdp.sxdp_ifindex = (uint32_t)ifindex;
    sxdp.sxdp_queue_id = queue;
    sxdp.sxdp_flags = XDP_COPY;
    /* Not XDP_USE_NEED_WAKEUP: in copy mode the kernel keeps asking for
     * the wake-up anyway (measured: no difference, bench/notes.md). */
    if (bind(x->fd, (struct sockaddr *)&sxdp, sizeof(sxdp)) != 0)
        goto fail;

    x->tx_head = __atomic_load_n(x->tx_prod, __ATOMIC_RELAXED);
    x->cq_tail = __atomic_load_n(x->cq_cons, __ATOMIC_RELAXED);
    for (uint32_t i = 0; i < frames; i++)
        x->free_idx[i] = frames - 1 - i;
    x->free_n = frames;
    return x;

fail:
    xsk_release(x);
    return NULL;
}

void ox_xsk_close(ox_xsk *x)
{
    if (x == NULL)
        return;
    xsk_release(x);
}

/* Take back the chunks the kernel has finished with; how many. */
static uint32_t reap(ox_xsk *x)
{
    uint32_t prod = __atomic_load_n(x->cq_prod, __ATOMIC_ACQUIRE);
    uint32_t start = x->cq_tail, got = 0;
    while (x->cq_tail != prod) {
        uint64_t addr = x->cq_addr[x->cq_tail & x->mask];
        x->cq_tail++;
        /* Only addresses we handed out come back; check all the same, so
         * that a bad one can never index outside free_idx. */
        if (addr % XSK_FRAME == 0 && addr < x->umem_len && x->free_n < x->frames) {
            x->free_idx[x->free_n++] = (uint32_t)(addr / XSK_FRAME);
            got++;
        }
    }
    if (x->cq_tail != start)
        __atomic_store_n(x->cq_cons, x->cq_tail, __ATOMIC_RELEASE);
    return got;
}

/*
 * Publish what is in the TX ring and have the kernel send it: in copy mode
 * a sendto() sends a bounded batch (32 frames by default) and says EAGAIN
 * while more is left or it cannot allocate; EBUSY when the driver dropped
 * a frame (that frame is done, as a lost one). Returns when the kernel has
 * taken every descriptor, or -1 with stats->last_errno.
 */
static int kick(ox_xsk *x, ox_tx_stats *stats)
{
    unsigned stalls = 0;
    __atomic_store_n(x->tx_prod, x->tx_head, __ATOMIC_RELEASE);
    for (;;) {
        uint32_t before = __atomic_load_n(x->tx_cons, __ATOMIC_ACQUIRE);
        if (before == x->tx_head)
            return 0;
        stats->syscalls++;
        if (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno != EAGAIN &&
            errno != EBUSY && errno != ENOBUFS && errno != EINTR) {
            stats->last_errno = errno;
            return -1;
        }
        uint32_t got = reap(x);
        if (got || __atomic_load_n(x->tx_cons, __ATOMIC_ACQUIRE) != before)
            stalls = 0;
        else if (ox_tx_backoff(x->fd, ++stalls, stats) != 0)
            return -1;
    }
}

/* Kick after this many new descriptors at most: the kernel sends a few
 * dozen per sendto() in copy mode, and chunks must come back before the
 * UMEM runs dry. The first kick of a call comes sooner, so that a sled
 * waiting for its batch gets the first frames while the rest are built
 * (one READ is one call: a faithful sled's boot 0.63-0.71 -> see
 * bench/notes.md). */
#define OX_XSK_KICK 32u
#define OX_XSK_FIRST_KICK 16u

static long send_frames(ox_xsk *x, const uint8_t *dst, const uint8_t *src,
                        const uint8_t *image, uint64_t image_size, const uint64_t *offsets,
                        size_t n, uint32_t chunk, ox_tx_stats *stats)
{
    uint32_t pending = 0;
    unsigned most = x->frames / 2 < OX_XSK_KICK ? x->frames / 2 : OX_XSK_KICK;
    unsigned kick_at = most < OX_XSK_FIRST_KICK ? most : OX_XSK_FIRST_KICK;

    for (size_t i = 0; i < n; i++) {
        if (x->free_n == 0)
            (void)reap(x);
        if (x->free_n == 0) {
            /* Everything is in flight: hand over what is queued and wait
             * for the kernel to return chunks (kick reaps as it goes). */
            if (kick(x, stats) != 0)
                return -1;
            pending = 0;
            for (unsigned waited = 0; x->free_n == 0 && !reap(x);)
                if (ox_tx_backoff(x->fd, ++waited, stats) != 0)
                    return -1;
        }
        uint32_t idx = x->free_idx[x->free_n - 1];
        uint64_t addr = (uint64_t)idx * XSK_FRAME;
        long len = ox_build_data(x->umem + addr, XSK_FRAME, dst, src, image, image_size,
                                 offsets[i], chunk);
        if (len < 0) {
            stats->last_errno = EINVAL;
            break; /* publish what is built; nothing is lost */
        }
        x->free_n--;
        struct xdp_desc *d = &x->tx_desc[x->tx_head & x->mask];
        d->addr = addr;
        d->len = (uint32_t)len;
        d->options = 0;
        x->tx_head++;
        stats->frames++;
        stats->bytes += (uint64_t)len;
        if (++pending >= kick_at) {
            if (kick(x, stats) != 0)
                return -1;
            pending = 0;
            kick_at = most;
        }
    }
    if (pending && kick(x, stats) != 0)
        return -1;
    return stats->last_errno ? -1 : (long)n;
}

long ox_xsk_send_data(ox_xsk *x, const uint8_t *dst, const uint8_t *src,
                      const uint8_t *image, uint64_t image_size,
                      const uint64_t *offsets, size_t n, uint32_t chunk,
                      ox_tx_stats *stats)
{
    if (x == NULL || stats == NULL || dst == NULL || src == NULL ||
        (offsets == NULL && n != 0) || chunk == 0 || chunk > OX_MAX_DATA ||
        (image == NULL && image_size != 0))
        return -1;
    if (OX_DATA_HLEN + OX_MAX_DATA > XSK_FRAME)
        return -1;
    stats->last_errno = 0;
    if (n == 0)
        return 0;
    return send_frames(x, dst, src, image, image_size, offsets, n, chunk, stats);
}
