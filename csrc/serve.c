/*
 * The boot server's receive loop (recvmmsg, policed per source) and the
 * table of established sessions whose READs it answers in C, sending
 * their DATA through AF_XDP, a PACKET_TX_RING or sendmmsg. Linux network
 * core.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>

struct serve_entry {
    ox_mac_key key; /* first: the sled (csrc/mactable.c) */
    uint8_t image_mac[6];
    const uint8_t *image;
    uint64_t image_size;
    ox_serve_info info;
};

struct ox_serve {
    ox_mactable sessions;
    size_t live;
    size_t cap;
    ox_serve_totals totals;
    ox_txring *ring; /* DATA through this ring instead of sendmmsg (NULL: none) */
    ox_xsk *xsk;     /* or through this AF_XDP socket (NULL: none) */
};

void ox_serve_use_ring(ox_serve *s, ox_txring *ring)
{
    if (s != NULL)
        s->ring = ring;
}

void ox_serve_use_xsk(ox_serve *s, ox_xsk *x)
{
    if (s != NULL)
        s->xsk = x;
}

ox_serve *ox_serve_new(unsigned sessions)
{
    ox_serve *s;
    if (sessions == 0 || sessions > (1u << 20))
        return NULL;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    /* At most half full, so that probes stay short. */
    if (ox_mactable_init(&s->sessions, 2 * (size_t)sessions, sizeof(struct serve_entry)) != 0) {
        free(s);
        return NULL;
    }
    s->cap = sessions;
    return s;
}

void ox_serve_free(ox_serve *s)
{
    if (s == NULL)
        return;
    ox_mactable_free(&s->sessions);
    free(s);
}

/* The entry of `sled`, or NULL; with `slot`, also where it would go. */
static struct serve_entry *serve_find(ox_serve *s, const uint8_t *sled,
                                      struct serve_entry **slot)
{
    ox_mac_key *free_slot = NULL;
    ox_mac_key *e = ox_mactable_find(&s->sessions, sled, SIZE_MAX, &free_slot);
    if (slot != NULL)
        *slot = (struct serve_entry *)(void *)free_slot;
    return (struct serve_entry *)(void *)e;
}

int ox_serve_set(ox_serve *s, const uint8_t *sled, const uint8_t *image_mac,
                 const uint8_t *image, uint64_t image_size, uint64_t high)
{
    struct serve_entry *slot = NULL, *e;
    if (s == NULL || sled == NULL || image_mac == NULL || (image == NULL && image_size != 0))
        return -1;
    e = serve_find(s, sled, &slot);
    if (e == NULL) {
        if (slot == NULL || s->live >= s->cap)
            return -1;
        e = slot;
        s->live++;
    }
    memset(e, 0, sizeof(*e));
    memcpy(e->key.mac, sled, 6);
    memcpy(e->image_mac, image_mac, 6);
    e->key.used = OX_MAC_LIVE;
    e->image = image;
    e->image_size = image_size;
    e->info.high = high;
    return 0;
}

int ox_serve_drop(ox_serve *s, const uint8_t *sled)
{
    struct serve_entry *e;
    if (s == NULL || sled == NULL)
        return -1;
    e = serve_find(s, sled, NULL);
    if (e == NULL)
        return 0;
    ox_mactable_remove(&s->sessions, &e->key);
    s->live--;
    return 1;
}

int ox_serve_get(ox_serve *s, const uint8_t *sled, ox_serve_info *info)
{
    struct serve_entry *e;
    if (s == NULL || sled == NULL || info == NULL)
        return -1;
    e = serve_find(s, sled, NULL);
    if (e == NULL)
        return 0;
    *info = e->info;
    return 1;
}

size_t ox_serve_probes(ox_serve *s, const uint8_t *sled)
{
    if (s == NULL || sled == NULL)
        return 0;
    return ox_mactable_probes(&s->sessions, sled);
}

void ox_serve_totals_get(ox_serve *s, ox_serve_totals *out)
{
    if (s != NULL && out != NULL)
        *out = s->totals;
}

/* Answer a READ from an established session; 1 if done, 0 if Python must. */
static int serve_read(ox_serve *s, int tx_fd, const uint8_t *f, size_t flen, uint64_t now_ns)
{
    uint64_t offsets[OX_SLOTS + 1];
    ox_tx_stats tx;
    struct serve_entry *e = serve_find(s, f + 6, NULL);
    if (e == NULL || memcmp(e->image_mac, f, 6) != 0)
        return 0;
    long n = ox_read_offsets(f, flen, offsets);
    if (n <= 0)
        return 0; /* malformed, or nothing due: the protocol layer's call */
    memset(&tx, 0, sizeof(tx));
    long sent = s->xsk != NULL
        ? ox_xsk_send_data(s->xsk, e->key.mac, e->image_mac, e->image, e->image_size, offsets,
                           (size_t)n, OX_CHUNK, &tx)
        : s->ring != NULL
        ? ox_txring_send_data(s->ring, e->key.mac, e->image_mac, e->image, e->image_size, offsets,
                              (size_t)n, OX_CHUNK, &tx)
        : ox_tx_data(tx_fd, OX_TX_SENDMMSG, e->key.mac, e->image_mac, e->image, e->image_size,
                     offsets, (size_t)n, OX_CHUNK, &tx);
    s->totals.frames += tx.frames;
    s->totals.bytes += tx.bytes;
    s->totals.syscalls += tx.syscalls;
    if (sent < 0) {
        s->totals.errors++;
        s->totals.last_errno = tx.last_errno;
        return 0; /* let the slow path try, and report */
    }
    ox_serve_info *in = &e->info;
    uint64_t again = 0, top = in->high;
    for (long i = 0; i < n; i++) {
        if (offsets[i] < in->high)
            again++;
        uint64_t end = offsets[i] > UINT64_MAX - OX_CHUNK ? UINT64_MAX : offsets[i] + OX_CHUNK;
        if (end > top)
            top = end;
    }
    in->high = top;
    in->reads++;
    in->offsets += (uint64_t)n;
    in->retransmits += again;
    in->repeats += again != 0;
    in->frames += tx.frames;
    in->bytes += tx.bytes;
    in->last_ns = now_ns;
    s->totals.reads++;
    s->totals.offsets += (uint64_t)n;
    s->totals.retransmits += again;
    s->totals.repeats += again != 0;
    return 1;
}

long ox_rx_serve(int fd, ox_police *p, ox_serve *s, int tx_fd, uint64_t now_ns, uint8_t *out,
                 size_t slot_size, uint32_t *lens, size_t out_n, size_t max_frames,
                 ox_police_stats *stats)
{
    static __thread uint8_t buf[OX_RX_BATCH][OX_RX_FRAME];
    struct iovec iov[OX_RX_BATCH];
    struct mmsghdr msg[OX_RX_BATCH];
    size_t kept = 0, served = 0, total = 0;
    uint64_t ours = 0;
    int backlog = 1; /* until the socket is found empty */

    if (p == NULL || out == NULL || lens == NULL || stats == NULL || slot_size == 0 ||
        (s != NULL && tx_fd < 0))
        return -1;
    ox_police_call_begin(p);
    /* A READ answered here counts against out_n like a frame kept: under a
     * stream of READs the caller still gets its turn (timers, other frames). */
    while (kept + served < out_n && total < max_frames) {
        /* Never read more than there is room to keep: nothing accepted is
         * ever dropped here for lack of space. */
        size_t want = out_n - kept - served;
        if (want > OX_RX_BATCH)
            want = OX_RX_BATCH;
        if (want > max_frames - total)
            want = max_frames - total;
        ox_rx_setup(msg, iov, buf, NULL, want);
        int r = recvmmsg(fd, msg, (unsigned int)want, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                backlog = 0;
                break;
            }
            return -1;
        }
        if (r == 0) {
            backlog = 0;
            break;
        }
        for (int i = 0; i < r; i++) {
            const uint8_t *f = buf[i];
            size_t flen = msg[i].msg_len;
            total++;
            stats->frames++;
            if ((msg[i].msg_hdr.msg_flags & MSG_TRUNC) || flen > OX_RX_FRAME ||
                flen < OX_ETH_HLEN + OX_HDR_LEN || flen > slot_size ||
                f[12] != (uint8_t)(OX_ETHERTYPE >> 8) || f[13] != (uint8_t)OX_ETHERTYPE ||
                ox_get_be32(f + 14) != OX_MAGIC) {
                stats->foreign++;
                continue;
            }
            ours++;
            if (!ox_police_take(p, f + 6, now_ns)) {
                stats->policed++;
                continue;
            }
            if (s != NULL && ox_get_be32(f + 18) == OX_T_READ && serve_read(s, tx_fd, f, flen, now_ns)) {
                stats->served++;
                served++;
                continue;
            }
            memcpy(out + kept * slot_size, f, flen);
            lens[kept] = (uint32_t)flen;
            kept++;
            stats->accepted++;
        }
        if ((size_t)r < want) {
            backlog = 0;
            break;
        }
    }
    ox_police_call_end(p, fd, backlog, ours, now_ns, stats);
    return (long)kept;
}

long ox_rx_serve_wait(int fd, ox_police *p, ox_serve *s, int tx_fd, uint8_t *out,
                      size_t slot_size, uint32_t *lens, size_t out_n, size_t max_frames,
                      ox_police_stats *stats, uint64_t spin_ns, int timeout_ms, int wake_fd)
{
    uint64_t start, busy_since, flagged0, served;
    int contended = 0;

    if (stats == NULL || timeout_ms < 0)
        return -1;
    start = busy_since = ox_mono_ns();
    flagged0 = stats->flagged;
    served = stats->served;
    for (;;) {
        /* now_ns in time.monotonic_ns()'s clock, like Python's calls. */
        uint64_t now = ox_mono_ns();
        long n = ox_rx_serve(fd, p, s, tx_fd, now, out, slot_size, lens, out_n, max_frames,
                             stats);
        if (n != 0 || stats->flagged != flagged0)
            return n;
        now = ox_mono_ns();
        if (stats->served != served) {
            served = stats->served;
            busy_since = now;
        }
        uint64_t limit = (uint64_t)timeout_ms * 1000000u;
        if (now - start >= limit)
            return 0;
        struct pollfd pfd[2] = {{.fd = fd, .events = POLLIN}, {.fd = wake_fd, .events = POLLIN}};
        nfds_t nfds = wake_fd >= 0 ? 2 : 1;
        int r;
        if (now - busy_since < spin_ns && !contended) {
            /* Busy-poll: the next READ of a lone sled comes right after its
             * DATA, and a sleeping (virtual) CPU takes tens of microseconds
             * to wake. Never at the expense of anything else runnable: once
             * something else wants this CPU, sleep instead (until Python's
             * next call). */
            r = poll(pfd, nfds, 0);
            if (r == 0) {
                contended = ox_yield_contended();
                continue;
            }
        } else {
            uint64_t left = limit - (now - start);
            r = poll(pfd, nfds, (int)((left + 999999u) / 1000000u));
        }
        if (r < 0)
            return errno == EINTR ? 0 : -1; /* a signal: Python's turn */
        if (r == 0 || (nfds == 2 && pfd[1].revents != 0))
            return 0;
    }
}

long ox_rx_police(int fd, ox_police *p, uint64_t now_ns, uint8_t *out, size_t slot_size,
                  uint32_t *lens, size_t out_n, size_t max_frames, ox_police_stats *stats)
{
    return ox_rx_serve(fd, p, NULL, -1, now_ns, out, slot_size, lens, out_n, max_frames, stats);
}
