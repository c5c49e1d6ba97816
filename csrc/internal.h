/*
 * What the C core's files share with each other and not with Python (none
 * of it is in the cdef of csrc/_ffi_build.py): byte order, the pieces of a
 * frame, the clock, and the sled's receive state.
 *
 * The first part is portable (POSIX C11, as oxboot.h); the part marked
 * "Linux network core" is used only by the files that are compiled on Linux
 * (see _ffi_build.py) and names Linux types only as incomplete structs, so
 * that this header compiles everywhere.
 */
#ifndef OXBOOT_INTERNAL_H
#define OXBOOT_INTERNAL_H

#include "oxboot.h"

#include <string.h>

/* ---- Byte order: the wire is big-endian ------------------------------- */

static inline void ox_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline void ox_put_be64(uint8_t *p, uint64_t v)
{
    ox_put_be32(p, (uint32_t)(v >> 32));
    ox_put_be32(p + 4, (uint32_t)v);
}

static inline uint32_t ox_get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline uint64_t ox_get_be64(const uint8_t *p)
{
    return ((uint64_t)ox_get_be32(p) << 32) | (uint64_t)ox_get_be32(p + 4);
}

/* ---- Frames (csrc/frame.c) ---------------------------------------------- */

/*
 * What to send for `offset`: `take` bytes of image, then `pad` zero bytes
 * (a short final chunk is padded, docs/protocol.md, section 5). Offsets at or past the
 * end get a zero-length DATA (end of image).
 */
static inline void ox_data_extent(uint64_t image_size, uint64_t offset, uint32_t chunk,
                                  uint32_t *take, uint32_t *pad)
{
    uint64_t left = offset < image_size ? image_size - offset : 0;
    *take = left < chunk ? (uint32_t)left : chunk;
    *pad = (*take > 0 && *take < OX_MIN_DATA_PAYLOAD) ? OX_MIN_DATA_PAYLOAD - *take : 0;
}

/* Ethernet and protocol headers: dst, src, ethertype, magic, type, len. */
static inline void ox_frame_header(uint8_t *h, const uint8_t *dst, const uint8_t *src,
                                   uint32_t type, uint32_t len)
{
    memcpy(h, dst, 6);
    memcpy(h + 6, src, 6);
    h[12] = (uint8_t)(OX_ETHERTYPE >> 8);
    h[13] = (uint8_t)OX_ETHERTYPE;
    ox_put_be32(h + 14, OX_MAGIC);
    ox_put_be32(h + 18, type);
    ox_put_be32(h + 22, len);
}

/* The OX_DATA_HLEN bytes that precede a DATA frame's payload. */
static inline void ox_data_header(uint8_t *h, const uint8_t *dst, const uint8_t *src,
                                  uint64_t offset, uint32_t payload)
{
    ox_frame_header(h, dst, src, OX_T_DATA, 8 + payload);
    ox_put_be64(h + 26, offset);
}

/* ---- Clock and CPU (csrc/sys.c) ----------------------------------------- */

/* CLOCK_MONOTONIC in nanoseconds: the clock of Python's time.monotonic(). */
uint64_t ox_mono_ns(void);
/* sched_yield(); 1 if another task had the CPU meanwhile (a spinning loop
 * then sleeps instead of yielding again). */
int ox_yield_contended(void);

#define OX_NS_PER_S 1000000000ull

/* ---- Tables keyed by MAC address (csrc/mactable.c) ---------------------- */

/*
 * Open addressing over a power-of-two number of fixed-size entries, each
 * beginning with an ox_mac_key, for the policer's buckets (a bounded probe
 * that evicts the stalest entry when full, csrc/police.c) and the served
 * sessions (a full probe, entries removed by backward shift, csrc/serve.c).
 */
#define OX_MAC_FREE 0
#define OX_MAC_LIVE 1

typedef struct {
    uint8_t mac[6];
    uint8_t used; /* OX_MAC_FREE or OX_MAC_LIVE */
} ox_mac_key;

typedef struct {
    uint8_t *slots; /* mask + 1 entries of `stride` bytes, zeroed (free) at first */
    size_t stride;
    size_t mask;
} ox_mactable;

/* At least max(16, min_slots) entries (a power of two) of `stride` bytes,
 * all free. 0, or -1 if out of memory. */
int ox_mactable_init(ox_mactable *t, size_t min_slots, size_t stride);
void ox_mactable_free(ox_mactable *t);

/* Entry i of the table (taken modulo its size). */
static inline ox_mac_key *ox_mactable_at(const ox_mactable *t, size_t i)
{
    return (ox_mac_key *)(void *)(t->slots + (i & t->mask) * t->stride);
}

/* Where probing for `mac` starts. */
size_t ox_mac_home(const ox_mactable *t, const uint8_t *mac);

/*
 * Look `mac` up, probing at most `limit` entries from its home and stopping
 * at a free one: its live entry, or NULL. On NULL, *slot (if not NULL) gets
 * where it would go: the free entry that ended the probe, else NULL (all
 * `limit` entries live).
 */
ox_mac_key *ox_mactable_find(const ox_mactable *t, const uint8_t *mac, size_t limit,
                             ox_mac_key **slot);

/* Free the live entry `e` (from ox_mactable_find), moving later entries of
 * its probe run back into the gap: pointers to entries are invalid after. */
void ox_mactable_remove(ox_mactable *t, ox_mac_key *e);

/* Entries an unbounded ox_mactable_find of `mac` looks at. */
size_t ox_mactable_probes(const ox_mactable *t, const uint8_t *mac);

/* ---- Linux network core ------------------------------------------------- */

struct iovec;
struct mmsghdr;
struct sockaddr_ll;

/* A transmit path waiting for the kernel to take or give back frames, for
 * the `waited`-th time in a row: yield the CPU for the first 1000, then
 * sleep in poll() 1 ms at a time; past 6000 (some 5 s) give up: -1 with
 * stats->last_errno = ETIMEDOUT (csrc/tx_sendmmsg.c). */
int ox_tx_backoff(int fd, unsigned waited, ox_tx_stats *stats);

/* What one recvmmsg call reads at most, and the room for each frame. */
#define OX_RX_BATCH 64
#define OX_RX_FRAME 2048

/* One recvmmsg batch: each message lands in its own OX_RX_FRAME buffer, with
 * the sender's address in from[i] when the caller wants it (csrc/rx_sled.c). */
void ox_rx_setup(struct mmsghdr *msg, struct iovec *iov, uint8_t (*buf)[OX_RX_FRAME],
                 struct sockaddr_ll *from, size_t want);

/* What one sled receive call works on, and the handling of one received
 * frame, shared by the recvmmsg (csrc/rx_sled.c) and the ring
 * (csrc/rxring.c) paths. ox_rx_data_frame: a DATA frame from the server
 * for a busy slot goes into the ramdisk; the first other frame is kept in
 * `other` for Python (the callers stop there, so frames stay in order). */
typedef struct {
    const uint8_t *self_mac, *server;
    uint8_t *ram;
    uint64_t ram_len;
    uint64_t *slot_offsets;
    uint8_t *slot_busy;
    uint32_t *busy_count;
    uint8_t *other;
    size_t other_cap;
    size_t *other_len;
    ox_rx_stats *stats;
    int hint; /* the slot after the last one filled */
} ox_rx_target;
/* The caller's arguments as a target (no slot filled yet). */
static inline ox_rx_target ox_rx_target_of(const ox_rx_args *a)
{
    ox_rx_target t = {a->self_mac, a->server, a->ram, a->ram_len, a->slot_offsets,
                      a->slot_busy, a->busy_count, a->other, a->other_cap, a->other_len,
                      a->stats, 0};
    return t;
}
int ox_rx_target_ok(const ox_rx_target *t);
void ox_rx_data_frame(ox_rx_target *t, const uint8_t *f, size_t flen, int truncated);

/* The policer's side of one ox_rx_serve call (csrc/police.c): begin it,
 * take a token for each frame of ours (1) or count a denial (0), and end
 * it, applying the overflow rule to the source that sent the most in it
 * when the call left frames queued (`backlog`): `ours` frames of our
 * protocol were read. */
void ox_police_call_begin(ox_police *p);
int ox_police_take(ox_police *p, const uint8_t *mac, uint64_t now);
void ox_police_call_end(ox_police *p, int fd, int backlog, uint64_t ours, uint64_t now,
                        ox_police_stats *stats);

#endif
