/*
 * The server's per-source policer: a token bucket per source MAC, the
 * flagging of sources that flood (over their rate, or filling the socket
 * while the server cannot keep up, read from PACKET_STATISTICS). The
 * receive loop that applies it is csrc/serve.c. Linux network core.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <linux/if_packet.h>

struct police_entry {
    ox_mac_key key; /* first: the table's entries (csrc/mactable.c) */
    double tokens;
    uint64_t stamp;    /* ns of the last refill */
    uint64_t window;   /* ns when the current one-second count of denials began */
    uint64_t denied;   /* frames denied in that window */
    uint64_t flagged;  /* ns when last flagged (0: never) */
    uint64_t call;     /* the ox_rx_serve call `in_call` counts for */
    uint64_t in_call;  /* frames of ours from this source in that call */
};

struct ox_police {
    double rate;  /* tokens per ns */
    double burst;
    uint64_t strike; /* denials within a second that flag a source */
    ox_mactable sources;
    uint8_t flagged[OX_MAX_BLOCKED][6];
    size_t nflagged;
    uint64_t flagged_total;
    uint64_t calls;
    struct police_entry *top; /* the source with the most frames in this call */
    int flagging; /* 0: no source is ever flagged, by either rule */
};

/* Buckets looked at for a source: when all are taken, the stalest goes. */
#define POLICE_PROBE 8

ox_police *ox_police_new(double rate, double burst, unsigned sources)
{
    ox_police *p;
    if (!(rate > 0) || !(burst >= 1) || sources == 0 || sources > (1u << 20))
        return NULL;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    if (ox_mactable_init(&p->sources, sources, sizeof(struct police_entry)) != 0) {
        free(p);
        return NULL;
    }
    p->rate = rate / 1e9;
    p->burst = burst;
    p->strike = (uint64_t)(2.0 * burst);
    p->flagging = 1;
    return p;
}

void ox_police_free(ox_police *p)
{
    if (p == NULL)
        return;
    ox_mactable_free(&p->sources);
    free(p);
}

static void police_flag(ox_police *p, struct police_entry *e, uint64_t now)
{
    if (!p->flagging)
        return;
    if (e->flagged != 0 && now - e->flagged < OX_NS_PER_S)
        return; /* once a second at most */
    e->flagged = now ? now : 1;
    p->flagged_total++;
    if (p->nflagged < OX_MAX_BLOCKED)
        memcpy(p->flagged[p->nflagged++], e->key.mac, 6);
}

/* Count a denied frame; flag the source once it keeps sending regardless. */
static void police_deny(ox_police *p, struct police_entry *e, uint64_t now)
{
    if (now - e->window >= OX_NS_PER_S || now < e->window) {
        e->window = now;
        e->denied = 0;
    }
    e->denied++;
    if (e->denied >= p->strike)
        police_flag(p, e, now);
}

void ox_police_flagging(ox_police *p, int on)
{
    if (p != NULL)
        p->flagging = on != 0;
}

size_t ox_police_flagged(ox_police *p, uint8_t *macs, size_t max)
{
    size_t n;
    if (p == NULL || (macs == NULL && max != 0))
        return 0;
    n = p->nflagged < max ? p->nflagged : max;
    if (n)
        memcpy(macs, p->flagged, n * 6);
    /* Whatever did not fit stays for the next call. */
    memmove(p->flagged, p->flagged[n], (p->nflagged - n) * 6);
    p->nflagged -= n;
    return n;
}

void ox_police_call_begin(ox_police *p)
{
    p->calls++;
    p->top = NULL;
}

/* Note that e sent a frame in this call; the call's top sender is kept. */
static void police_seen(ox_police *p, struct police_entry *e)
{
    if (p->top == NULL || e->in_call > p->top->in_call)
        p->top = e;
}

/* Take a token from mac's bucket (1) or count a denial (0), with the
 * source's frames in the current ox_rx_serve call counted. */
int ox_police_take(ox_police *p, const uint8_t *mac, uint64_t now)
{
    ox_mac_key *free_slot = NULL;
    struct police_entry *e, *victim;
    e = (struct police_entry *)(void *)ox_mactable_find(&p->sources, mac, POLICE_PROBE,
                                                         &free_slot);
    if (e != NULL) {
        if (e->call != p->calls) {
            e->call = p->calls;
            e->in_call = 0;
        }
        e->in_call++;
        police_seen(p, e);
        if (now > e->stamp) {
            e->tokens += (double)(now - e->stamp) * p->rate;
            if (e->tokens > p->burst)
                e->tokens = p->burst;
            e->stamp = now;
        }
        if (e->tokens < 1.0) {
            police_deny(p, e, now);
            return 0;
        }
        e->tokens -= 1.0;
        return 1;
    }
    /* A new source: a fresh bucket, in a free slot or the stalest one (the
     * table never frees a bucket, so a source is never found past a free
     * slot of its probe). */
    victim = (struct police_entry *)(void *)free_slot;
    if (victim == NULL) {
        size_t home = ox_mac_home(&p->sources, mac);
        for (size_t k = 0; k < POLICE_PROBE; k++) {
            e = (struct police_entry *)(void *)ox_mactable_at(&p->sources, home + k);
            if (victim == NULL || e->stamp < victim->stamp)
                victim = e;
        }
    }
    memset(victim, 0, sizeof(*victim));
    memcpy(victim->key.mac, mac, 6);
    victim->key.used = OX_MAC_LIVE;
    victim->tokens = p->burst - 1.0;
    victim->stamp = now;
    victim->window = now;
    victim->call = p->calls;
    victim->in_call = 1;
    police_seen(p, victim);
    return 1;
}

/*
 * The socket overflowed (the kernel dropped frames) while this call still
 * left frames queued: the server is not keeping up. If one source sent
 * most of what this call read, it is the cause: a flood this server cannot
 * even drain fast enough to see its rate exceeded (each READ it admits
 * costs 128 DATA frames). No OS client can do that: it sends one READ and
 * waits for its DATA.
 */
#define BACKLOG_MIN_FRAMES 32

static void police_backlog(int fd, ox_police *p, uint64_t ours, uint64_t now,
                           ox_police_stats *stats)
{
    struct police_entry *top = p->top;
    struct tpacket_stats st;
    socklen_t len = sizeof(st);
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) != 0)
        return;
    stats->sock_packets += st.tp_packets;
    stats->sock_drops += st.tp_drops;
    if (st.tp_drops == 0 || top == NULL || ours < BACKLOG_MIN_FRAMES ||
        top->call != p->calls || top->in_call * 2 <= ours)
        return;
    police_flag(p, top, now);
}

void ox_police_call_end(ox_police *p, int fd, int backlog, uint64_t ours, uint64_t now,
                        ox_police_stats *stats)
{
    if (backlog)
        police_backlog(fd, p, ours, now, stats);
    stats->flagged = p->flagged_total;
}
