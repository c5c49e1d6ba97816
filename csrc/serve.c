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
#include <time.h>
#include <sys/socket.h>
#include <sys/uio.h>

struct serve_entry {
    ox_mac_key key; /* first: the sled (csrc/mactable.c) */
    uint8_t image_mac[6];
    const uint8_t *image;
    uint64_t image_size;
    ox_serve_info info;
    /* Batch repair timing (ox_serve_repair): the last READ answered, as
     * rep_base + OX_CHUNK * i for each bit i of rep_mask (an OS client's
     * slot i always holds its batch's base + 1024 i), when it came, and
     * when the next READ is overdue (0: not armed). */
    uint64_t rep_base;
    uint64_t rep_mask[2];
    uint64_t rep_at;
    uint64_t rep_due;
    uint64_t rep_wait;
    uint64_t srtt, rttvar; /* the round trip, smoothed (0: no sample yet) */
    uint8_t rep_reported;  /* REP_TIMED, REP_REPORTED or REP_RESENT */
};

/* A READ answered and timed here; reported overdue (no round trip sample
 * after it); resent by the caller (a sample from rep_at, its last round). */
#define REP_TIMED 0
#define REP_REPORTED 1
#define REP_RESENT 2

/* A round trip sample at most this long (about 18 minutes): keeps the
 * estimator's arithmetic far from overflow (mirrored in repair.py). */
#define REPAIR_MAX_SAMPLE_NS (1ull << 40)

struct ox_serve {
    ox_mactable sessions;
    size_t live;
    size_t cap;
    ox_serve_totals totals;
    ox_txring *ring; /* DATA through this ring instead of sendmmsg (NULL: none) */
    ox_xsk *xsk;     /* or through this AF_XDP socket (NULL: none) */
    ox_repair_params repair; /* first_ns == 0: no repair timing */
    uint64_t wake_ns; /* no armed entry is due before this (0: none armed) */
    size_t armed;     /* entries with rep_due != 0 */
};

/* Entries are armed and disarmed only here, so that `armed` stays true and
 * wake_ns exact while one sled is timed (the usual case: a lower bound
 * otherwise, made exact again by serve_rewake). */
static void repair_arm(ox_serve *s, struct serve_entry *e, uint64_t due)
{
    if (e->rep_due == 0)
        s->armed++;
    else if (s->armed == 1)
        s->wake_ns = 0; /* it held the wake-up alone */
    e->rep_due = due;
    if (s->wake_ns == 0 || due < s->wake_ns)
        s->wake_ns = due;
}

static void repair_disarm(ox_serve *s, struct serve_entry *e)
{
    if (e->rep_due == 0)
        return;
    e->rep_due = 0;
    if (--s->armed == 0)
        s->wake_ns = 0;
}

/* Make wake_ns the earliest due time again; 1 if that is <= now. */
static int serve_rewake(ox_serve *s, uint64_t now)
{
    uint64_t next = 0;
    for (size_t i = 0; i <= s->sessions.mask && s->armed != 0; i++) {
        const struct serve_entry *e =
            (const struct serve_entry *)(const void *)ox_mactable_at(&s->sessions, i);
        if (e->key.used == OX_MAC_LIVE && e->rep_due != 0 && (next == 0 || e->rep_due < next))
            next = e->rep_due;
    }
    s->wake_ns = next;
    return next != 0 && next <= now;
}

int ox_serve_repair(ox_serve *s, const ox_repair_params *p)
{
    if (s == NULL || p == NULL || p->min_ns > p->max_ns || p->first_ns > p->max_ns)
        return -1;
    s->repair = *p;
    if (p->first_ns == 0) {
        /* Off: disarm everything. */
        for (size_t i = 0; i <= s->sessions.mask; i++) {
            struct serve_entry *e = (struct serve_entry *)(void *)ox_mactable_at(&s->sessions, i);
            if (e->key.used == OX_MAC_LIVE)
                repair_disarm(s, e);
        }
    }
    return 0;
}

/* RFC 6298's estimator in integer ns: protocol/repair.py's RoundTrip. */
static void repair_sample(struct serve_entry *e, uint64_t ns)
{
    if (ns < 1)
        ns = 1;
    if (ns > REPAIR_MAX_SAMPLE_NS)
        ns = REPAIR_MAX_SAMPLE_NS;
    if (e->srtt == 0) {
        e->srtt = ns;
        e->rttvar = ns / 2;
    } else {
        uint64_t diff = e->srtt > ns ? e->srtt - ns : ns - e->srtt;
        e->rttvar = (3 * e->rttvar + diff) / 4;
        e->srtt = (7 * e->srtt + ns) / 8;
    }
}

static uint64_t repair_wait(const ox_repair_params *p, const struct serve_entry *e)
{
    if (e->srtt == 0)
        return p->first_ns;
    uint64_t margin = 4 * e->rttvar > p->margin_ns ? 4 * e->rttvar : p->margin_ns;
    uint64_t wait = e->srtt + margin;
    if (wait < p->min_ns)
        wait = p->min_ns;
    if (wait > p->max_ns)
        wait = p->max_ns;
    return wait;
}

/* A READ of `e` was answered at `now`: a round trip sample if it is a fresh
 * batch right after a READ nobody repaired, and the timer armed for it. */
static void repair_note(ox_serve *s, struct serve_entry *e, const uint64_t *off, long n,
                        int fresh, uint64_t now)
{
    const uint64_t span = (uint64_t)OX_SLOTS * OX_CHUNK;
    uint64_t base, mask[2] = {0, 0};

    if (s->repair.first_ns == 0)
        return;
    if (e->rep_at != 0 && e->rep_reported != REP_REPORTED && fresh && now > e->rep_at)
        repair_sample(e, now - e->rep_at);
    e->rep_at = now;
    e->rep_reported = REP_TIMED;
    repair_disarm(s, e);
    if (n <= 0)
        return;
    base = off[0] - off[0] % span;
    for (long i = 0; i < n; i++) {
        /* Not an OS client's slot layout: not ours to time. */
        if (off[i] % OX_CHUNK != 0 || off[i] - off[i] % span != base)
            return;
        uint64_t slot = (off[i] - base) / OX_CHUNK; /* < OX_SLOTS */
        mask[slot >> 6] |= 1ull << (slot & 63);
    }
    e->rep_base = base;
    e->rep_mask[0] = mask[0];
    e->rep_mask[1] = mask[1];
    e->rep_wait = repair_wait(&s->repair, e);
    repair_arm(s, e, now + e->rep_wait);
}

long ox_serve_overdue(ox_serve *s, uint64_t now_ns, ox_serve_overdue_rec *out, size_t cap)
{
    long n = 0;

    if (s == NULL || (out == NULL && cap != 0))
        return -1;
    if (s->wake_ns == 0 || now_ns < s->wake_ns)
        return 0;
    for (size_t i = 0; i <= s->sessions.mask && (size_t)n < cap; i++) {
        struct serve_entry *e = (struct serve_entry *)(void *)ox_mactable_at(&s->sessions, i);
        if (e->key.used != OX_MAC_LIVE || e->rep_due == 0)
            continue;
        if (e->rep_due <= now_ns) {
            ox_serve_overdue_rec *r = &out[n++];
            memcpy(r->sled, e->key.mac, 6);
            r->base = e->rep_base;
            r->mask[0] = e->rep_mask[0];
            r->mask[1] = e->rep_mask[1];
            r->read_ns = e->rep_at;
            r->wait_ns = e->rep_wait;
            repair_disarm(s, e);
            e->rep_reported = REP_REPORTED;
        }
    }
    serve_rewake(s, now_ns); /* what is left, or had no room: the next call */
    return n;
}

uint64_t ox_serve_wake(ox_serve *s)
{
    return s == NULL ? 0 : s->wake_ns;
}

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

int ox_serve_resent(ox_serve *s, const uint8_t *sled, uint64_t now_ns)
{
    struct serve_entry *e;
    if (s == NULL || sled == NULL)
        return -1;
    e = serve_find(s, sled, NULL);
    if (e == NULL || e->rep_reported == REP_TIMED)
        return 0;
    /* The next READ most likely answers this round: its gap from here is
     * a round trip (from the first round, it would hold the back-off). */
    e->rep_at = now_ns;
    e->rep_reported = REP_RESENT;
    return 1;
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
    } else {
        repair_disarm(s, e);
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
    repair_disarm(s, e);
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
    repair_note(s, e, offsets, n, again == 0, now_ns);
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
        /* A READ overdue (batch repair): the caller's turn. */
        uint64_t wake = s != NULL ? s->wake_ns : 0;
        if (wake != 0 && now >= wake) {
            if (serve_rewake(s, now))
                return 0;
            wake = s->wake_ns; /* it was a stale lower bound */
        }
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
            if (wake != 0 && wake - now < left)
                left = wake - now; /* to the nanosecond: repair waits are a few ms */
            struct timespec ts = {.tv_sec = (time_t)(left / 1000000000u),
                                  .tv_nsec = (long)(left % 1000000000u)};
            r = ppoll(pfd, nfds, &ts, NULL);
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
