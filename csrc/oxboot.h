/*
 * oxboot C core: the few things that are hot enough to leave Python.
 *
 *  - SHA-256 over large buffers, through OpenSSL's libcrypto (which uses the
 *    CPU's SHA extensions); callers hold no GIL while it runs (cffi releases
 *    it around every call), so hashing overlaps compression and I/O.
 *  - The DATA transmit path of the boot server: one call builds every DATA
 *    frame of a READ straight from a read-only mapping of the image and
 *    hands the batch to the kernel with sendmmsg(2).
 *  - The receive path of the sled emulator: drain a raw socket, validate
 *    each frame against hostile input, and land DATA payloads in the
 *    ramdisk buffer.
 *
 * Every length that comes from the wire or from a caller is checked before
 * it is used; no function reads or writes outside the buffers it is given.
 */
#ifndef OXBOOT_H
#define OXBOOT_H

#include <stddef.h>
#include <stdint.h>

/* ---- SHA-256 ---------------------------------------------------------- */

typedef struct ox_sha256_ctx ox_sha256_ctx;

ox_sha256_ctx *ox_sha256_new(void);
int ox_sha256_update(ox_sha256_ctx *ctx, const uint8_t *buf, size_t len);
/* Writes 32 bytes to out; the context may then only be freed. */
int ox_sha256_final(ox_sha256_ctx *ctx, uint8_t *out);
void ox_sha256_free(ox_sha256_ctx *ctx);
/* One-shot digest of a buffer. Returns 0 on success, -1 on failure. */
int ox_sha256(const uint8_t *buf, size_t len, uint8_t *out);

/* ---- Frames ----------------------------------------------------------- */

#define OX_ETHERTYPE 0x1DE0u
#define OX_MAGIC 0x1DE12345u
#define OX_T_HELLO 0x9001u
#define OX_T_OFFER 0x9102u
#define OX_T_READ 0x9003u
#define OX_T_DATA 0x9104u
#define OX_T_FINISHED 0x9005u
#define OX_T_RESET 0x9106u
#define OX_ETH_HLEN 14
#define OX_HDR_LEN 12
#define OX_DATA_HLEN (OX_ETH_HLEN + OX_HDR_LEN + 8)
#define OX_CHUNK 1024
#define OX_MAX_DATA 1468
#define OX_MIN_DATA_PAYLOAD 26
#define OX_SLOTS 128
#define OX_MAX_BATCH 256

/*
 * Build the DATA frame for image offset `offset` into `out` (capacity
 * `cap`). `chunk` is the most payload bytes to take (<= OX_MAX_DATA).
 * Returns the frame length, or -1 if `cap` is too small or chunk is bad.
 */
long ox_build_data(uint8_t *out, size_t cap, const uint8_t *dst,
                   const uint8_t *src, const uint8_t *image,
                   uint64_t image_size, uint64_t offset, uint32_t chunk);

typedef struct {
    uint64_t frames;     /* DATA frames handed to the kernel */
    uint64_t bytes;      /* bytes of those frames */
    uint64_t syscalls;   /* sendmmsg/send calls made */
    int32_t last_errno;  /* errno of the last failed call, or 0 */
} ox_tx_stats;

#define OX_TX_SENDMMSG 0
#define OX_TX_SEND 1

/*
 * Transmit one DATA frame per offset on the raw socket fd (bound to the
 * link and ethertype). Payload bytes are gathered straight from `image`
 * through iovecs, never copied in user space. Returns the number of frames
 * sent (== n on success) or -1 with stats->last_errno set. Blocks while the
 * socket buffer is full, so a burst never drops frames in user space.
 */
long ox_tx_data(int fd, int method, const uint8_t *dst, const uint8_t *src,
                const uint8_t *image, uint64_t image_size,
                const uint64_t *offsets, size_t n, uint32_t chunk,
                ox_tx_stats *stats);

/* ---- Client receive --------------------------------------------------- */

typedef struct {
    uint64_t frames;       /* frames read from the socket */
    uint64_t data_ok;      /* DATA frames that emptied a slot */
    uint64_t data_stray;   /* DATA for an offset no slot waits for */
    uint64_t bad;          /* malformed, foreign or hostile frames */
    uint64_t bytes;        /* payload bytes written into the ramdisk */
    uint64_t eof;          /* zero-length DATA seen for a waiting slot */
    uint64_t padded;       /* DATA frames longer than their len (OS panics) */
    uint64_t extent;       /* furthest ramdisk byte written (offset + n) */
} ox_rx_stats;

/*
 * Drain up to `max_frames` frames from the non-blocking raw socket fd.
 * Frames not addressed to `self_mac` (or broadcast) are skipped, as a NIC
 * would. DATA frames from `server` whose offset sits in a busy slot are copied
 * into ram[offset, offset+n) (clipped to ram_len), the slot is freed and
 * *busy_count decremented. The first frame that is not DATA from the server
 * (OFFER, RESET, ...) is copied to `other` (capacity other_cap) and the
 * call returns after that batch so that Python can handle it (further such
 * frames in the same batch are counted as bad); *other_len gets its
 * length (0 if none). Returns frames read, or -1 on a socket error other
 * than EAGAIN (errno in stats is not kept; check errno).
 */
long ox_rx_data(int fd, const uint8_t *self_mac, const uint8_t *server, uint8_t *ram,
                uint64_t ram_len, uint64_t *slot_offsets, uint8_t *slot_busy,
                uint32_t *busy_count, uint8_t *other, size_t other_cap,
                size_t *other_len, size_t max_frames, ox_rx_stats *stats);

/* Pure validation of a received DATA frame, shared by ox_rx_data and the
 * tests: returns payload length n (>= 0) and the offset, or -1. */
long ox_parse_data(const uint8_t *frame, size_t len, uint64_t *offset,
                   int *exact);

#endif
