/* oxboot C core; see oxboot.h for the contract of each function. */
#define _GNU_SOURCE
#include "oxboot.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <openssl/evp.h>

/* ---- SHA-256 ---------------------------------------------------------- */

struct ox_sha256_ctx {
    EVP_MD_CTX *md;
};

/*
 * Hash through a small buffer that stays in the L1/L2 cache. On this
 * machine SHA-256 straight from a large buffer in RAM takes 0.97-1.04 s per
 * GiB, whatever the update size; copied 16 KiB at a time into a cached
 * buffer first, 0.70-0.74 s (the copy's streaming loads keep the memory
 * busy; the hash's own loads stall on it: bench/notes.md). Short inputs
 * (headers) are hashed in place.
 */
#define OX_SHA_STEP (16 * 1024)

static int digest_update(EVP_MD_CTX *md, const uint8_t *buf, size_t len)
{
    uint8_t tmp[OX_SHA_STEP];
    if (len <= OX_SHA_STEP)
        return EVP_DigestUpdate(md, buf, len) == 1 ? 0 : -1;
    while (len > 0) {
        size_t n = len < OX_SHA_STEP ? len : OX_SHA_STEP;
        memcpy(tmp, buf, n);
        if (EVP_DigestUpdate(md, tmp, n) != 1)
            return -1;
        buf += n;
        len -= n;
    }
    return 0;
}

ox_sha256_ctx *ox_sha256_new(void)
{
    ox_sha256_ctx *ctx = OPENSSL_zalloc(sizeof(*ctx));
    if (ctx == NULL)
        return NULL;
    ctx->md = EVP_MD_CTX_new();
    if (ctx->md == NULL || EVP_DigestInit_ex(ctx->md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx->md);
        OPENSSL_free(ctx);
        return NULL;
    }
    return ctx;
}

int ox_sha256_update(ox_sha256_ctx *ctx, const uint8_t *buf, size_t len)
{
    if (ctx == NULL || (buf == NULL && len != 0))
        return -1;
    return digest_update(ctx->md, buf, len);
}

int ox_sha256_final(ox_sha256_ctx *ctx, uint8_t *out)
{
    unsigned int outlen = 0;
    int ok;
    EVP_MD_CTX *tmp;
    if (ctx == NULL || out == NULL)
        return -1;
    /* Finish a copy, so the context can still be updated and read again. */
    tmp = EVP_MD_CTX_new();
    if (tmp == NULL)
        return -1;
    ok = EVP_MD_CTX_copy_ex(tmp, ctx->md) == 1 &&
         EVP_DigestFinal_ex(tmp, out, &outlen) == 1 && outlen == 32;
    EVP_MD_CTX_free(tmp);
    return ok ? 0 : -1;
}

void ox_sha256_free(ox_sha256_ctx *ctx)
{
    if (ctx == NULL)
        return;
    EVP_MD_CTX_free(ctx->md);
    OPENSSL_free(ctx);
}

int ox_sha256(const uint8_t *buf, size_t len, uint8_t *out)
{
    unsigned int outlen = 0;
    EVP_MD_CTX *md;
    int ok;
    if ((buf == NULL && len != 0) || out == NULL)
        return -1;
    md = EVP_MD_CTX_new();
    if (md == NULL)
        return -1;
    ok = EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 && digest_update(md, buf, len) == 0 &&
         EVP_DigestFinal_ex(md, out, &outlen) == 1 && outlen == 32;
    EVP_MD_CTX_free(md);
    return ok ? 0 : -1;
}

/* ---- Files ----------------------------------------------------------- */

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
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
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

/* ---- Transmit back-off ------------------------------------------------ */

int ox_tx_backoff(int fd, unsigned waited, ox_tx_stats *stats)
{
    if (waited < 1000) {
        sched_yield();
        return 0;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    (void)poll(&p, 1, 1);
    if (waited > 6000) {
        stats->last_errno = ETIMEDOUT;
        return -1;
    }
    return 0;
}

/* ---- Frames ----------------------------------------------------------- */

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

static uint32_t get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static uint64_t get_be64(const uint8_t *p)
{
    return ((uint64_t)get_be32(p) << 32) | (uint64_t)get_be32(p + 4);
}

/* The zeros a short final chunk is padded with (docs/protocol.md, section 5). */
static const uint8_t zero_pad[OX_MIN_DATA_PAYLOAD];

/*
 * What to send for `offset`: `take` bytes of image, then `pad` zero bytes.
 * Offsets at or past the end get a zero-length DATA (end of image).
 */
static void data_extent(uint64_t image_size, uint64_t offset, uint32_t chunk,
                        uint32_t *take, uint32_t *pad)
{
    uint64_t left = offset < image_size ? image_size - offset : 0;
    *take = left < chunk ? (uint32_t)left : chunk;
    *pad = (*take > 0 && *take < OX_MIN_DATA_PAYLOAD) ? OX_MIN_DATA_PAYLOAD - *take : 0;
}

/* Ethernet and protocol headers: dst, src, ethertype, magic, type, len. */
static void frame_header(uint8_t *h, const uint8_t *dst, const uint8_t *src, uint32_t type,
                         uint32_t len)
{
    memcpy(h, dst, 6);
    memcpy(h + 6, src, 6);
    h[12] = (uint8_t)(OX_ETHERTYPE >> 8);
    h[13] = (uint8_t)OX_ETHERTYPE;
    put_be32(h + 14, OX_MAGIC);
    put_be32(h + 18, type);
    put_be32(h + 22, len);
}

static void data_header(uint8_t *h, const uint8_t *dst, const uint8_t *src,
                        uint64_t offset, uint32_t payload)
{
    frame_header(h, dst, src, OX_T_DATA, 8 + payload);
    put_be64(h + 26, offset);
}

long ox_build_read(uint8_t *out, size_t cap, const uint8_t *dst, const uint8_t *src,
                   const uint64_t *offsets, unsigned n)
{
    uint8_t *body;
    if (out == NULL || dst == NULL || src == NULL || n > OX_SLOTS ||
        (offsets == NULL && n != 0) || cap < OX_READ_FRAME)
        return -1;
    frame_header(out, dst, src, OX_T_READ, OX_READ_LEN);
    body = out + OX_ETH_HLEN + OX_HDR_LEN;
    put_be64(body, n);
    for (unsigned i = 0; i < OX_SLOTS; i++)
        put_be64(body + 8 + 8 * (size_t)i, i < n ? offsets[i] : 0);
    return OX_READ_FRAME;
}

long ox_build_data(uint8_t *out, size_t cap, const uint8_t *dst,
                   const uint8_t *src, const uint8_t *image,
                   uint64_t image_size, uint64_t offset, uint32_t chunk)
{
    uint32_t take, pad;
    if (out == NULL || dst == NULL || src == NULL || chunk == 0 ||
        chunk > OX_MAX_DATA || (image == NULL && image_size != 0))
        return -1;
    data_extent(image_size, offset, chunk, &take, &pad);
    if (cap < (size_t)OX_DATA_HLEN + take + pad)
        return -1;
    data_header(out, dst, src, offset, take + pad);
    if (take)
        memcpy(out + OX_DATA_HLEN, image + offset, take);
    if (pad)
        memset(out + OX_DATA_HLEN + take, 0, pad);
    return (long)(OX_DATA_HLEN + take + pad);
}

/* Wait until the socket can take more frames; the kernel said ENOBUFS or
 * EAGAIN because a queue was full, and the frames must not be dropped. */
static void wait_writable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    (void)poll(&p, 1, 5);
}

long ox_tx_data(int fd, int method, const uint8_t *dst, const uint8_t *src,
                const uint8_t *image, uint64_t image_size,
                const uint64_t *offsets, size_t n, uint32_t chunk,
                ox_tx_stats *stats)
{
    uint8_t hdr[OX_MAX_BATCH][OX_DATA_HLEN];
    struct iovec iov[OX_MAX_BATCH][3];
    struct mmsghdr msg[OX_MAX_BATCH];
    size_t done = 0;
    int stalls = 0;

    if (stats == NULL || dst == NULL || src == NULL ||
        (offsets == NULL && n != 0) || chunk == 0 || chunk > OX_MAX_DATA ||
        (image == NULL && image_size != 0))
        return -1;
    stats->last_errno = 0;

    while (done < n) {
        size_t batch = n - done < OX_MAX_BATCH ? n - done : OX_MAX_BATCH;
        size_t i;
        for (i = 0; i < batch; i++) {
            uint64_t off = offsets[done + i];
            uint32_t take, pad;
            int k = 0;
            data_extent(image_size, off, chunk, &take, &pad);
            data_header(hdr[i], dst, src, off, take + pad);
            iov[i][k].iov_base = hdr[i];
            iov[i][k++].iov_len = OX_DATA_HLEN;
            if (take) {
                /* image + off is in bounds: take > 0 implies off < image_size
                 * and off + take <= image_size. */
                iov[i][k].iov_base = (void *)(image + off);
                iov[i][k++].iov_len = take;
            }
            if (pad) {
                iov[i][k].iov_base = (void *)zero_pad;
                iov[i][k++].iov_len = pad;
            }
            memset(&msg[i], 0, sizeof(msg[i]));
            msg[i].msg_hdr.msg_iov = iov[i];
            msg[i].msg_hdr.msg_iovlen = (size_t)k;
        }

        size_t sent = 0;
        while (sent < batch) {
            int r;
            if (method == OX_TX_SEND) {
                r = (int)sendmsg(fd, &msg[sent].msg_hdr, 0);
                if (r >= 0) {
                    msg[sent].msg_len = (unsigned int)r;
                    r = 1;
                }
            } else {
                r = sendmmsg(fd, &msg[sent], (unsigned int)(batch - sent), 0);
            }
            stats->syscalls++;
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                if ((errno == ENOBUFS || errno == EAGAIN) && stalls < 100000) {
                    stalls++;
                    wait_writable(fd);
                    continue;
                }
                stats->last_errno = errno;
                return -1;
            }
            for (int j = 0; j < r; j++)
                stats->bytes += msg[sent + (size_t)j].msg_len;
            stats->frames += (uint64_t)r;
            sent += (size_t)r;
        }
        done += batch;
    }
    return (long)done;
}

/* ---- Client receive --------------------------------------------------- */

long ox_parse_data(const uint8_t *frame, size_t len, uint64_t *offset,
                   int *exact)
{
    uint32_t plen;
    if (frame == NULL || offset == NULL || exact == NULL || len < OX_DATA_HLEN)
        return -1;
    if (frame[12] != (uint8_t)(OX_ETHERTYPE >> 8) || frame[13] != (uint8_t)OX_ETHERTYPE)
        return -1;
    if (get_be32(frame + 14) != OX_MAGIC || get_be32(frame + 18) != OX_T_DATA)
        return -1;
    plen = get_be32(frame + 22);
    /* plen is attacker-controlled: compare without overflowing. */
    if (plen < 8 || plen > 8 + OX_MAX_DATA)
        return -1;
    if ((size_t)plen > len - (OX_ETH_HLEN + OX_HDR_LEN))
        return -1;
    *offset = get_be64(frame + 26);
    *exact = ((size_t)plen == len - (OX_ETH_HLEN + OX_HDR_LEN));
    return (long)(plen - 8);
}

/* Add a non-zero offset to an open-addressing set of 2 * OX_SLOTS entries
 * (0: empty); 1 if it was not there. At most OX_SLOTS are ever added, so a
 * free entry is always found. */
static int offset_set_add(uint64_t *set, uint64_t off)
{
    const size_t mask = 2 * OX_SLOTS - 1;
    size_t i = (size_t)(((off >> 10) ^ off) * 0x9E3779B97F4A7C15ull >> 56) & mask;
    while (set[i] != 0) {
        if (set[i] == off)
            return 0;
        i = (i + 1) & mask;
    }
    set[i] = off;
    return 1;
}

long ox_read_offsets(const uint8_t *frame, size_t len, uint64_t *out)
{
    const size_t body = OX_ETH_HLEN + OX_HDR_LEN;
    const uint32_t read_len = 8 + 8 * OX_SLOTS;
    uint64_t noffsets;
    size_t n = 0, nonzero = 0;

    if (frame == NULL || out == NULL || len < body + read_len)
        return -1;
    if (frame[12] != (uint8_t)(OX_ETHERTYPE >> 8) || frame[13] != (uint8_t)OX_ETHERTYPE ||
        get_be32(frame + 14) != OX_MAGIC || get_be32(frame + 18) != OX_T_READ ||
        get_be32(frame + 22) != read_len)
        return -1;
    noffsets = get_be64(frame + body);
    if (noffsets > OX_SLOTS)
        return -1;
    /* Offsets that keep increasing (a client filling its slots in order)
     * cannot repeat; from the first that does not, a small hash set of the
     * offsets kept so far finds duplicates (a linear scan cost 128 x 128
     * comparisons per READ: ~3% of the server's time at full speed). */
    uint64_t seen[2 * OX_SLOTS];
    int hashed = 0;
    for (size_t i = 0; i < OX_SLOTS; i++) {
        uint64_t off = get_be64(frame + body + 8 + 8 * i);
        if (off == 0)
            continue;
        nonzero++;
        if (!hashed) {
            if (n == 0 || off > out[n - 1]) {
                out[n++] = off;
                continue;
            }
            memset(seen, 0, sizeof(seen));
            for (size_t j = 0; j < n; j++)
                (void)offset_set_add(seen, out[j]);
            hashed = 1;
        }
        if (offset_set_add(seen, off))
            out[n++] = off;
    }
    if (nonzero < noffsets) {
        memmove(out + 1, out, n * sizeof(*out));
        out[0] = 0;
        n++;
    }
    return (long)n;
}

#define RX_BATCH 64
#define RX_FRAME 2048

/* One recvmmsg batch: each message lands in its own RX_FRAME buffer, with
 * the sender's address in from[i] when the caller wants it. */
static void rx_setup(struct mmsghdr *msg, struct iovec *iov, uint8_t (*buf)[RX_FRAME],
                     struct sockaddr_ll *from, size_t want)
{
    for (size_t i = 0; i < want; i++) {
        iov[i].iov_base = buf[i];
        iov[i].iov_len = RX_FRAME;
        memset(&msg[i], 0, sizeof(msg[i]));
        msg[i].msg_hdr.msg_iov = &iov[i];
        msg[i].msg_hdr.msg_iovlen = 1;
        if (from != NULL) {
            msg[i].msg_hdr.msg_name = &from[i];
            msg[i].msg_hdr.msg_namelen = sizeof(from[i]);
        }
    }
}

int ox_rx_target_ok(const ox_rx_target *t)
{
    return t->self_mac != NULL && t->server != NULL && (t->ram != NULL || t->ram_len == 0) &&
           t->slot_offsets != NULL && t->slot_busy != NULL && t->busy_count != NULL &&
           t->other_len != NULL && t->stats != NULL && (t->other != NULL || t->other_cap == 0);
}

void ox_rx_data_frame(ox_rx_target *t, const uint8_t *f, size_t flen, int truncated)
{
    static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    ox_rx_stats *stats = t->stats;
    uint64_t off = 0;
    int exact = 0;
    long n;

    if (flen >= 6 && memcmp(f, t->self_mac, 6) != 0 && memcmp(f, bcast, 6) != 0)
        return; /* another host's frame, flooded by a bridge */
    if (truncated || flen > RX_FRAME || flen < OX_ETH_HLEN + OX_HDR_LEN) {
        stats->bad++;
        return;
    }
    n = memcmp(f + 6, t->server, 6) == 0 ? ox_parse_data(f, flen, &off, &exact) : -1;
    if (n < 0 || !exact) {
        /* Not a well-formed DATA from our server: a padded DATA (the OS
         * panics on it), OFFER, RESET or a stranger's frame. Let Python
         * decide; the caller stops here so frames stay in order. */
        if (n >= 0)
            stats->padded++;
        if (t->other != NULL && *t->other_len == 0 && flen <= t->other_cap) {
            memcpy(t->other, f, flen);
            *t->other_len = flen;
        } else {
            stats->bad++;
        }
        return;
    }
    /* DATA mostly arrives in slot order: try the slot after the last one
     * filled before scanning all of them. */
    int slot = -1;
    if (t->slot_busy[t->hint] && t->slot_offsets[t->hint] == off) {
        slot = t->hint;
    } else {
        for (int s = 0; s < OX_SLOTS; s++) {
            if (t->slot_busy[s] && t->slot_offsets[s] == off) {
                slot = s;
                break;
            }
        }
    }
    if (slot < 0) {
        stats->data_stray++;
        return;
    }
    t->slot_busy[slot] = 0;
    t->hint = (slot + 1) % OX_SLOTS;
    if (*t->busy_count > 0)
        (*t->busy_count)--;
    stats->data_ok++;
    if (n == 0) {
        stats->eof++;
        return;
    }
    if (off < t->ram_len) {
        uint64_t room = t->ram_len - off;
        size_t m = (uint64_t)n < room ? (size_t)n : (size_t)room;
        memcpy(t->ram + off, f + OX_DATA_HLEN, m);
        stats->bytes += m;
        if (off + m > stats->extent)
            stats->extent = off + m;
    }
}

long ox_rx_data(int fd, const uint8_t *self_mac, const uint8_t *server, uint8_t *ram,
                uint64_t ram_len, uint64_t *slot_offsets, uint8_t *slot_busy,
                uint32_t *busy_count, uint8_t *other, size_t other_cap,
                size_t *other_len, size_t max_frames, ox_rx_stats *stats)
{
    static __thread uint8_t buf[RX_BATCH][RX_FRAME];
    struct iovec iov[RX_BATCH];
    struct mmsghdr msg[RX_BATCH];
    struct sockaddr_ll from[RX_BATCH];
    ox_rx_target t = {self_mac, server, ram, ram_len, slot_offsets, slot_busy, busy_count,
                          other, other_cap, other_len, stats, 0};
    size_t total = 0;

    if (!ox_rx_target_ok(&t))
        return -1;
    *other_len = 0;

    while (total < max_frames) {
        size_t want = max_frames - total < RX_BATCH ? max_frames - total : RX_BATCH;
        rx_setup(msg, iov, buf, from, want);
        int r = recvmmsg(fd, msg, (unsigned int)want, MSG_DONTWAIT, NULL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            return -1;
        }
        if (r == 0)
            break;
        for (int i = 0; i < r; i++) {
            total++;
            stats->frames++;
            if (from[i].sll_pkttype == PACKET_OUTGOING)
                continue;
            ox_rx_data_frame(&t, buf[i], msg[i].msg_len,
                          (msg[i].msg_hdr.msg_flags & MSG_TRUNC) != 0);
        }
        /* Hand a non-DATA frame to Python before reading further. */
        if ((size_t)r < want || *other_len != 0)
            break;
    }
    return (long)total;
}

long ox_rx_data_wait(int fd, const uint8_t *self_mac, const uint8_t *server, uint8_t *ram,
                     uint64_t ram_len, uint64_t *slot_offsets, uint8_t *slot_busy,
                     uint32_t *busy_count, uint8_t *other, size_t other_cap,
                     size_t *other_len, size_t max_frames, int timeout_ms,
                     ox_rx_stats *stats)
{
    uint64_t start = ox_mono_ns();
    long total = 0;

    if (timeout_ms < 0)
        return -1;
    for (;;) {
        /* It checks the arguments: past it, the pointers are good. */
        long n = ox_rx_data(fd, self_mac, server, ram, ram_len, slot_offsets, slot_busy,
                            busy_count, other, other_cap, other_len,
                            max_frames - (size_t)total, stats);
        if (n < 0)
            return -1;
        total += n;
        if (*busy_count == 0 || *other_len != 0 || (size_t)total >= max_frames)
            return total;
        long spent = (long)((ox_mono_ns() - start) / 1000000u);
        if (spent >= timeout_ms)
            return total;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)(timeout_ms - spent));
        if (r < 0 && errno != EINTR)
            return -1;
        if (r == 0)
            return total;
    }
}

/* ---- Server receive: per-source policing ------------------------------ */

struct police_entry {
    uint8_t mac[6];
    uint8_t used;
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
    size_t mask;
    struct police_entry *table;
    uint8_t flagged[OX_MAX_BLOCKED][6];
    size_t nflagged;
    uint64_t flagged_total;
    uint64_t calls;
    int backlog_rule;
};

#define NS_PER_S 1000000000ull

#define POLICE_PROBE 8

ox_police *ox_police_new(double rate, double burst, unsigned sources)
{
    size_t n = 16;
    ox_police *p;
    if (!(rate > 0) || !(burst >= 1) || sources == 0 || sources > (1u << 20))
        return NULL;
    while (n < sources)
        n <<= 1;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->table = calloc(n, sizeof(*p->table));
    if (p->table == NULL) {
        free(p);
        return NULL;
    }
    p->rate = rate / 1e9;
    p->burst = burst;
    p->strike = (uint64_t)(2.0 * burst);
    p->backlog_rule = 1;
    p->mask = n - 1;
    return p;
}

void ox_police_free(ox_police *p)
{
    if (p == NULL)
        return;
    free(p->table);
    free(p);
}

static size_t mac_hash(const uint8_t *mac)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (int i = 0; i < 6; i++)
        h = (h ^ mac[i]) * 1099511628211ull;
    return (size_t)(h ^ (h >> 29));
}

static void police_flag(ox_police *p, struct police_entry *e, uint64_t now)
{
    if (e->flagged != 0 && now - e->flagged < NS_PER_S)
        return; /* once a second at most */
    e->flagged = now ? now : 1;
    p->flagged_total++;
    if (p->nflagged < OX_MAX_BLOCKED)
        memcpy(p->flagged[p->nflagged++], e->mac, 6);
}

/* Count a denied frame; flag the source once it keeps sending regardless. */
static void police_deny(ox_police *p, struct police_entry *e, uint64_t now)
{
    if (now - e->window >= NS_PER_S || now < e->window) {
        e->window = now;
        e->denied = 0;
    }
    e->denied++;
    if (e->denied >= p->strike)
        police_flag(p, e, now);
}

void ox_police_backlog_rule(ox_police *p, int on)
{
    if (p != NULL)
        p->backlog_rule = on != 0;
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

int ox_receive_nothing(int fd)
{
    struct sock_filter prog[] = {BPF_STMT(BPF_RET | BPF_K, 0)};
    struct sock_fprog fprog = {.len = 1, .filter = prog};
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof(fprog));
}

int ox_set_blocklist(int fd, const uint8_t *macs, size_t n)
{
    /* Per MAC: A = source bytes 2..5 (scratch M[1]) equal? then bytes 0..1
     * (M[0]) equal? -> drop. The program ends in "accept" then "drop", so
     * every jump is forward and short: 4 * OX_MAX_BLOCKED + 1 < 256. */
    struct sock_filter prog[4 + 4 * OX_MAX_BLOCKED + 2];
    struct sock_fprog fprog;
    size_t k = 0;

    if (fd < 0 || n > OX_MAX_BLOCKED || (macs == NULL && n != 0)) {
        errno = EINVAL;
        return -1;
    }
    if (n == 0) {
        int unused = 0; /* the kernel wants an int's worth of optval */
        if (setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof(unused)) == 0 ||
            errno == ENOENT)
            return 0;
        return -1;
    }
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 6);
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_ST, 0);
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 8);
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_ST, 1);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *m = macs + 6 * i;
        uint32_t lo = get_be32(m + 2);
        uint32_t hi = ((uint32_t)m[0] << 8) | m[1];
        /* The second jeq's jt: past the later MACs' 4 and "accept". */
        uint8_t to_drop = (uint8_t)(4 * (n - 1 - i) + 1);
        prog[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_MEM, 1);
        prog[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, lo, 0, 2);
        prog[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_MEM, 0);
        prog[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, hi, to_drop, 0);
    }
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0x40000); /* accept */
    prog[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0);       /* drop */
    fprog.len = (unsigned short)k;
    fprog.filter = prog;
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof(fprog));
}

#ifndef PACKET_FANOUT_CBPF
#define PACKET_FANOUT_CBPF 6
#endif
#ifndef PACKET_FANOUT_DATA
#define PACKET_FANOUT_DATA 22
#endif
#ifndef PACKET_FANOUT_FLAG_UNIQUEID
#define PACKET_FANOUT_FLAG_UNIQUEID 0x2000
#endif

int ox_fanout_by_source(int fd, int group)
{
    /* The kernel takes the program's return value modulo the group's size:
     * return source MAC bytes 2..5 (ox_fanout_index computes the same). The
     * skb starts at the network header here, hence SKF_LL_OFF. */
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_LL_OFF + 8)),
        BPF_STMT(BPF_RET | BPF_A, 0),
    };
    struct sock_fprog fprog = {.len = 2, .filter = prog};
    uint32_t arg;
    int id;
    socklen_t len = sizeof(arg);

    if (fd < 0 || group > 0xffff) {
        errno = EINVAL;
        return -1;
    }
    if (group >= 0) {
        arg = (uint32_t)group | ((uint32_t)PACKET_FANOUT_CBPF << 16);
        return setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof(arg)) == 0 ? group : -1;
    }
    arg = ((uint32_t)(PACKET_FANOUT_CBPF | PACKET_FANOUT_FLAG_UNIQUEID)) << 16;
    if (setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof(arg)) != 0)
        return -1;
    if (getsockopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, &len) != 0)
        return -1;
    id = (int)(arg & 0xffff);
    if (setsockopt(fd, SOL_PACKET, PACKET_FANOUT_DATA, &fprog, sizeof(fprog)) != 0)
        return -1;
    return id;
}

unsigned ox_fanout_index(const uint8_t *mac, unsigned members)
{
    return members == 0 ? 0 : get_be32(mac + 2) % members;
}

/* Take a token from mac's bucket (1) or count a denial (0); *seen is the
 * source's entry, with its frames in the current ox_rx_serve call counted. */
static int police_take(ox_police *p, const uint8_t *mac, uint64_t now,
                       struct police_entry **seen)
{
    size_t i = mac_hash(mac) & p->mask;
    struct police_entry *victim = NULL;
    for (int k = 0; k < POLICE_PROBE; k++) {
        struct police_entry *e = &p->table[(i + (size_t)k) & p->mask];
        if (e->used && memcmp(e->mac, mac, 6) == 0) {
            if (e->call != p->calls) {
                e->call = p->calls;
                e->in_call = 0;
            }
            e->in_call++;
            *seen = e;
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
        if (!e->used) {
            if (victim == NULL || victim->used)
                victim = e;
        } else if (victim == NULL || (victim->used && e->stamp < victim->stamp)) {
            victim = e;
        }
    }
    /* A new source: a fresh bucket, in a free slot or the stalest one. */
    memset(victim, 0, sizeof(*victim));
    memcpy(victim->mac, mac, 6);
    victim->used = 1;
    victim->tokens = p->burst - 1.0;
    victim->stamp = now;
    victim->window = now;
    victim->call = p->calls;
    victim->in_call = 1;
    *seen = victim;
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

static void police_backlog(int fd, ox_police *p, struct police_entry *top, uint64_t ours,
                           uint64_t now, ox_police_stats *stats)
{
    struct tpacket_stats st;
    socklen_t len = sizeof(st);
    if (getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) != 0)
        return;
    stats->sock_packets += st.tp_packets;
    stats->sock_drops += st.tp_drops;
    if (!p->backlog_rule || st.tp_drops == 0 || top == NULL || ours < BACKLOG_MIN_FRAMES ||
        top->call != p->calls || top->in_call * 2 <= ours)
        return;
    police_flag(p, top, now);
}

/* ---- Server: READs of established sessions answered in C -------------- */

struct serve_entry {
    uint8_t sled[6];
    uint8_t image_mac[6];
    uint8_t used; /* 0 empty, 1 in use, 2 deleted (probing goes on) */
    const uint8_t *image;
    uint64_t image_size;
    ox_serve_info info;
};

struct ox_serve {
    size_t mask;
    size_t live;
    size_t cap;
    struct serve_entry *table;
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
    size_t n = 16;
    ox_serve *s;
    if (sessions == 0 || sessions > (1u << 20))
        return NULL;
    while (n < 2 * (size_t)sessions)
        n <<= 1;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->table = calloc(n, sizeof(*s->table));
    if (s->table == NULL) {
        free(s);
        return NULL;
    }
    s->mask = n - 1;
    s->cap = sessions;
    return s;
}

void ox_serve_free(ox_serve *s)
{
    if (s == NULL)
        return;
    free(s->table);
    free(s);
}

/* The entry of `sled`, or NULL; with `slot`, also where it would go. */
static struct serve_entry *serve_find(ox_serve *s, const uint8_t *sled,
                                      struct serve_entry **slot)
{
    size_t i = mac_hash(sled) & s->mask;
    struct serve_entry *free_slot = NULL;
    for (size_t k = 0; k <= s->mask; k++) {
        struct serve_entry *e = &s->table[(i + k) & s->mask];
        if (e->used == 0) {
            if (slot != NULL)
                *slot = free_slot != NULL ? free_slot : e;
            return NULL;
        }
        if (e->used == 2) {
            if (free_slot == NULL)
                free_slot = e;
        } else if (memcmp(e->sled, sled, 6) == 0) {
            return e;
        }
    }
    if (slot != NULL)
        *slot = free_slot;
    return NULL;
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
    memcpy(e->sled, sled, 6);
    memcpy(e->image_mac, image_mac, 6);
    e->used = 1;
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
    /* A tombstone keeps later entries of the same probe run reachable. */
    memset(e, 0, sizeof(*e));
    e->used = 2;
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
        ? ox_xsk_send_data(s->xsk, e->sled, e->image_mac, e->image, e->image_size, offsets,
                           (size_t)n, OX_CHUNK, &tx)
        : s->ring != NULL
        ? ox_txring_send_data(s->ring, e->sled, e->image_mac, e->image, e->image_size, offsets,
                              (size_t)n, OX_CHUNK, &tx)
        : ox_tx_data(tx_fd, OX_TX_SENDMMSG, e->sled, e->image_mac, e->image, e->image_size,
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
    in->frames += tx.frames;
    in->bytes += tx.bytes;
    in->last_ns = now_ns;
    s->totals.reads++;
    s->totals.offsets += (uint64_t)n;
    s->totals.retransmits += again;
    return 1;
}

long ox_rx_serve(int fd, ox_police *p, ox_serve *s, int tx_fd, uint64_t now_ns, uint8_t *out,
                 size_t slot_size, uint32_t *lens, size_t out_n, size_t max_frames,
                 ox_police_stats *stats)
{
    static __thread uint8_t buf[RX_BATCH][RX_FRAME];
    struct iovec iov[RX_BATCH];
    struct mmsghdr msg[RX_BATCH];
    size_t kept = 0, served = 0, total = 0;
    uint64_t ours = 0;
    struct police_entry *top = NULL, *e = NULL;
    int backlog = 1; /* until the socket is found empty */

    if (p == NULL || out == NULL || lens == NULL || stats == NULL || slot_size == 0 ||
        (s != NULL && tx_fd < 0))
        return -1;
    p->calls++;
    /* A READ answered here counts against out_n like a frame kept: under a
     * stream of READs the caller still gets its turn (timers, other frames). */
    while (kept + served < out_n && total < max_frames) {
        /* Never read more than there is room to keep: nothing accepted is
         * ever dropped here for lack of space. */
        size_t want = out_n - kept - served;
        if (want > RX_BATCH)
            want = RX_BATCH;
        if (want > max_frames - total)
            want = max_frames - total;
        rx_setup(msg, iov, buf, NULL, want);
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
            if ((msg[i].msg_hdr.msg_flags & MSG_TRUNC) || flen > RX_FRAME ||
                flen < OX_ETH_HLEN + OX_HDR_LEN || flen > slot_size ||
                f[12] != (uint8_t)(OX_ETHERTYPE >> 8) || f[13] != (uint8_t)OX_ETHERTYPE ||
                get_be32(f + 14) != OX_MAGIC) {
                stats->foreign++;
                continue;
            }
            ours++;
            int allowed = police_take(p, f + 6, now_ns, &e);
            if (top == NULL || e->in_call > top->in_call)
                top = e;
            if (!allowed) {
                stats->policed++;
                continue;
            }
            if (s != NULL && get_be32(f + 18) == OX_T_READ && serve_read(s, tx_fd, f, flen, now_ns)) {
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
    if (backlog)
        police_backlog(fd, p, top, ours, now_ns, stats);
    stats->flagged = p->flagged_total;
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
