/*
 * DATA transmit with sendmmsg(2) (or sendmsg, for diagnosis) on a raw
 * socket, payloads gathered straight from the image through iovecs; and
 * the back-off every transmit path (this one, csrc/txring.c, csrc/xsk.c)
 * takes while the kernel's queues are full. Linux network core.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* The zeros a short final chunk is padded with (docs/protocol.md, section 5). */
static const uint8_t zero_pad[OX_MIN_DATA_PAYLOAD];

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
            ox_data_extent(image_size, off, chunk, &take, &pad);
            ox_data_header(hdr[i], dst, src, off, take + pad);
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
