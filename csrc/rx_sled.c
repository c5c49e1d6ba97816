/*
 * The emulated sled's receive path through recvmmsg(2): drain the raw
 * socket, validate each frame against hostile input and land DATA
 * payloads in the ramdisk; the per-frame handling is shared with the ring
 * path (csrc/rxring.c). Linux network core.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <linux/if_packet.h>

/* One recvmmsg batch: each message lands in its own OX_RX_FRAME buffer, with
 * the sender's address in from[i] when the caller wants it. */
void ox_rx_setup(struct mmsghdr *msg, struct iovec *iov, uint8_t (*buf)[OX_RX_FRAME],
                 struct sockaddr_ll *from, size_t want)
{
    for (size_t i = 0; i < want; i++) {
        iov[i].iov_base = buf[i];
        iov[i].iov_len = OX_RX_FRAME;
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
    if (truncated || flen > OX_RX_FRAME || flen < OX_ETH_HLEN + OX_HDR_LEN) {
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

long ox_rx_data(int fd, const ox_rx_args *a, size_t max_frames)
{
    static __thread uint8_t buf[OX_RX_BATCH][OX_RX_FRAME];
    struct iovec iov[OX_RX_BATCH];
    struct mmsghdr msg[OX_RX_BATCH];
    struct sockaddr_ll from[OX_RX_BATCH];
    if (a == NULL) {
        errno = EINVAL;
        return -1;
    }
    ox_rx_target t = ox_rx_target_of(a);
    size_t total = 0;

    if (!ox_rx_target_ok(&t))
        return -1;
    *t.other_len = 0;

    while (total < max_frames) {
        size_t want = max_frames - total < OX_RX_BATCH ? max_frames - total : OX_RX_BATCH;
        ox_rx_setup(msg, iov, buf, from, want);
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
            t.stats->frames++;
            if (from[i].sll_pkttype == PACKET_OUTGOING)
                continue;
            ox_rx_data_frame(&t, buf[i], msg[i].msg_len,
                          (msg[i].msg_hdr.msg_flags & MSG_TRUNC) != 0);
        }
        /* Hand a non-DATA frame to Python before reading further. */
        if ((size_t)r < want || *t.other_len != 0)
            break;
    }
    return (long)total;
}

long ox_rx_data_wait(int fd, const ox_rx_args *a, size_t max_frames, int timeout_ms)
{
    uint64_t start = ox_mono_ns();
    long total = 0;

    if (timeout_ms < 0)
        return -1;
    for (;;) {
        /* It checks the arguments: past it, the pointers are good. */
        long n = ox_rx_data(fd, a, max_frames - (size_t)total);
        if (n < 0)
            return -1;
        total += n;
        if (*a->busy_count == 0 || *a->other_len != 0 || (size_t)total >= max_frames)
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
