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
 *
 * Two parts. The portable one (POSIX, libcrypto, zlib, libdeflate; built
 * everywhere): sha256.c, sys.c (clock, writeback), deflate.c, frame.c
 * (frames built and parsed in memory), mactable.c. The network core
 * (Linux only; left out of builds elsewhere and with OXBOOT_PORTABLE=1, see
 * _ffi_build.py): tx_sendmmsg.c, rx_sled.c, police.c, sockfilter.c,
 * serve.c, txring.c, rxring.c, xsk.c. Sections below say which is which;
 * this header itself compiles everywhere. internal.h has what the files
 * share with each other only.
 */
#ifndef OXBOOT_H
#define OXBOOT_H

#include <stddef.h>
#include <stdint.h>

/* ---- SHA-256 (csrc/sha256.c; portable) -------------------------------- */

typedef struct ox_sha256_ctx ox_sha256_ctx;

ox_sha256_ctx *ox_sha256_new(void);
int ox_sha256_update(ox_sha256_ctx *ctx, const uint8_t *buf, size_t len);
/* Writes the 32-byte digest of everything so far to out; the context
 * stays usable (more updates, another final). */
int ox_sha256_final(ox_sha256_ctx *ctx, uint8_t *out);
void ox_sha256_free(ox_sha256_ctx *ctx);
/* One-shot digest of a buffer. Returns 0 on success, -1 on failure. */
int ox_sha256(const uint8_t *buf, size_t len, uint8_t *out);

/* ---- Files (csrc/sys.c; portable) ------------------------------------ */

/*
 * Start writing [offset, offset+len) of fd back to disk without waiting
 * (sync_file_range SYNC_FILE_RANGE_WRITE on Linux; a no-op elsewhere), so
 * that the final fsync of a large output finds little left to do.
 */
int ox_writeback(int fd, uint64_t offset, uint64_t len);

/* ---- Deflate (csrc/deflate.c; portable) ------------------------------ */

/*
 * Most bytes ox_deflate_chunk may write for `len` input bytes (SIZE_MAX if
 * that does not fit in a size_t). A cap of this size never fails for room.
 */
size_t ox_deflate_bound(size_t len);
/*
 * Compress in[0, len) with libdeflate at `level` (1..12) into a RAW deflate
 * piece that is not final and ends byte-aligned with an empty stored block
 * (... 00 00 ff ff), like zlib's Z_SYNC_FLUSH: such pieces concatenate into
 * one deflate stream. Returns the length written, or -1 if the level or a
 * pointer is bad, out of memory, or cap is too small (which libdeflate may
 * report a few bytes early: pass ox_deflate_bound(len)). Never writes past
 * out[cap - 1]. Thread-safe; each thread keeps its own compressor.
 */
long ox_deflate_chunk(int level, const uint8_t *in, size_t len, uint8_t *out, size_t cap);
/* Adler-32 of buf[0, len) continuing from `adler` (1 to start). */
uint32_t ox_adler32(uint32_t adler, const uint8_t *buf, size_t len);
/* The Adler-32 of A then B from those of A and B (B second_len bytes long). */
uint32_t ox_adler32_combine(uint32_t first, uint32_t second, uint64_t second_len);
/*
 * Inflate in[0, in_len), a piece of a raw deflate stream that starts at a
 * block boundary on a byte boundary (the stream's start, or just after a
 * sync flush's 00 00 ff ff), with dict[0, dict_len) (at most 32 KiB) the
 * output that preceded it. Not final: the piece must end exactly at a
 * block boundary and hold no final block. Final: it must hold the final
 * block; *used tells how many bytes of in it took (what follows is the
 * zlib trailer). work needs ox_inflate_work_size(dict_len, in_len) bytes.
 * The output goes to out as dict followed by the piece's bytes. Returns
 * the piece's output length, OX_INFLATE_NO_ROOM if out_cap is too small,
 * or OX_INFLATE_ERROR (bad data or arguments). Thread-safe.
 */
#define OX_INFLATE_MAX_DICT 32768
#define OX_INFLATE_ERROR -1
#define OX_INFLATE_NO_ROOM -2
size_t ox_inflate_work_size(size_t dict_len, size_t in_len);
/* Where the first 00 00 ff ff at or after buf[from] starts, or -1. */
long ox_find_sync(const uint8_t *buf, size_t len, size_t from);
long ox_inflate_piece(const uint8_t *dict, size_t dict_len, const uint8_t *in, size_t in_len,
                      int final, uint8_t *work, size_t work_cap, uint8_t *out, size_t out_cap,
                      size_t *used);

/* ---- Frames (csrc/frame.c; portable) --------------------------------- */

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
#define OX_READ_LEN (8 + 8 * OX_SLOTS) /* u64 noffsets, 128 u64 slots */
#define OX_READ_FRAME (OX_ETH_HLEN + OX_HDR_LEN + OX_READ_LEN)
#define OX_MAX_BATCH 256

/*
 * Build the DATA frame for image offset `offset` into `out` (capacity
 * `cap`). `chunk` is the most payload bytes to take (<= OX_MAX_DATA).
 * Returns the frame length, or -1 if `cap` is too small or chunk is bad.
 */
long ox_build_data(uint8_t *out, size_t cap, const uint8_t *dst,
                   const uint8_t *src, const uint8_t *image,
                   uint64_t image_size, uint64_t offset, uint32_t chunk);

/*
 * Build a READ frame naming offsets[0..n) in slots 0..n-1 (n <= OX_SLOTS;
 * the other slots 0, noffsets = n) into `out`. Returns OX_READ_FRAME, or -1
 * if `cap` is smaller or an argument is bad.
 */
long ox_build_read(uint8_t *out, size_t cap, const uint8_t *dst, const uint8_t *src,
                   const uint64_t *offsets, unsigned n);

/* Pure validation of a received DATA frame, shared by ox_rx_data and the
 * tests: returns payload length n (>= 0) and the offset, or -1. */
long ox_parse_data(const uint8_t *frame, size_t len, uint64_t *offset,
                   int *exact);

/*
 * The offsets a server must serve for one received READ frame (Ethernet
 * header included), written to out[0..n): every non-zero slot of all 128,
 * duplicates once, in slot order, plus offset 0 first when fewer slots are
 * non-zero than noffsets says (offset 0 can only sit in slot 0). Returns n,
 * or -1 if the frame is not a well-formed READ (len 1032, noffsets <= 128,
 * len within the frame). `out` must hold OX_SLOTS + 1 entries.
 */
long ox_read_offsets(const uint8_t *frame, size_t len, uint64_t *out);

/* ---- DATA transmit with sendmmsg (csrc/tx_sendmmsg.c; Linux) ---------- */

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

/* ---- Client receive (csrc/rx_sled.c, csrc/rxring.c; Linux) ------------ */

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
 * What a sled's receive call works on: its ramdisk, the session's slot
 * buffers (shared with ClientSession) and a place for the first frame that
 * is Python's. `busy_count` and `other_len` are in/out through pointers so
 * that the caller reads them between calls without copying the struct.
 */
typedef struct {
    const uint8_t *self_mac; /* frames to other addresses are skipped, as a NIC would */
    const uint8_t *server;   /* DATA counts only from the accepted offer's source */
    uint8_t *ram;            /* the ramdisk */
    uint64_t ram_len;
    uint64_t *slot_offsets;  /* OX_SLOTS offsets of the current batch */
    uint8_t *slot_busy;      /* OX_SLOTS flags: still waiting for that DATA */
    uint32_t *busy_count;    /* busy slots; decremented per DATA landed */
    uint8_t *other;          /* the first frame for Python ... */
    size_t other_cap;        /* ... its capacity ... */
    size_t *other_len;       /* ... and its length (0: none) */
    ox_rx_stats *stats;
} ox_rx_args;

/*
 * Drain up to `max_frames` frames from the non-blocking raw socket fd.
 * Frames not addressed to `self_mac` (or broadcast) are skipped. DATA
 * frames from `server` whose offset sits in a busy slot are copied into
 * ram[offset, offset+n) (clipped to ram_len), the slot is freed and
 * *busy_count decremented. The first frame that is not DATA from the server
 * (OFFER, RESET, ...) is copied to `other` and the call returns after that
 * batch so that Python can handle it (further such frames in the same
 * batch are counted as bad); *other_len gets its length (0 if none).
 * Returns frames read, or -1 on a socket error other than EAGAIN or bad
 * arguments (errno set).
 */
long ox_rx_data(int fd, const ox_rx_args *a, size_t max_frames);

/*
 * ox_rx_data until the batch is complete (*busy_count reaches 0), a frame
 * for Python arrives (*other_len), max_frames are read or timeout_ms pass,
 * sleeping in poll() in between: a batch of 128 DATA frames is received in
 * one call, without a trip through Python for every wake-up. Returns
 * frames read, or -1 (errno set).
 */
long ox_rx_data_wait(int fd, const ox_rx_args *a, size_t max_frames, int timeout_ms);

/*
 * The same through a PACKET_RX_RING (TPACKET_V2) set up on fd, the sled's
 * socket (no frames may be read from it with recv() while the ring is up).
 * ox_rxring_open: NULL with errno set on failure. ox_rxring_data_wait works
 * as ox_rx_data_wait, except that when no slot is busy on entry it returns
 * as soon as it has read anything, and that with `next` (not NULL) a
 * complete batch is followed by the next one in C (see ox_rx_next). ox_rxring_close unmaps the ring (the
 * socket keeps it until closed), before or after the socket is closed.
 */
typedef struct ox_rxring ox_rxring;
ox_rxring *ox_rxring_open(int fd, unsigned frames);
void ox_rxring_close(ox_rxring *r);

/*
 * The OS client's next step when a batch is complete, for the sled's
 * receive loop to take without going back to Python (mirrors
 * ClientSession.poll): if no EOF was seen (stats->eof == 0) and
 * next_offset + 128 KiB stays below 2^64 and next_offset < data_size,
 * every slot gets the next offset (next_offset, +1024, ...), is marked
 * busy and sent now (slot_sent, CLOCK_MONOTONIC seconds, the clock of
 * Python's time.monotonic()), next_offset advances by 128 KiB and one READ
 * naming all 128 slots goes to the server. Anything else (the end, a
 * retransmission, a tick) is Python's.
 */
typedef struct {
    uint64_t next_offset; /* in/out: the session's next offset */
    uint64_t data_size;   /* the offer's data size */
    double *slot_sent;    /* the session's OX_SLOTS send times */
    uint64_t reads;       /* out: READs sent */
    uint64_t send_errors; /* out: READs the kernel refused (lost, as on a wire) */
} ox_rx_next;

long ox_rxring_data_wait(ox_rxring *r, const ox_rx_args *a, size_t max_frames,
                         int timeout_ms, ox_rx_next *next);

/* ---- Server receive: per-source policing (police.c, sockfilter.c; Linux) */

typedef struct ox_police ox_police;

typedef struct {
    uint64_t frames;     /* frames read from the socket */
    uint64_t accepted;   /* handed to the caller */
    uint64_t foreign;    /* runts, other ethertypes, other magic */
    uint64_t policed;    /* dropped: their source was over its rate */
    uint64_t flagged;    /* sources found flooding (see ox_police_flagged) */
    uint64_t served;     /* READs answered in C (ox_rx_serve) */
    uint64_t sock_packets; /* PACKET_STATISTICS read here (it resets on read): */
    uint64_t sock_drops;   /* add these to the caller's own readings */
} ox_police_stats;

/*
 * Token buckets per source MAC: `rate` frames per second, bursts of
 * `burst`, for up to `sources` hosts at once (rounded up to a power of
 * two); when the table is full the least recently refilled entry is reused.
 */
ox_police *ox_police_new(double rate, double burst, unsigned sources);
void ox_police_free(ox_police *p);

/*
 * A source that goes on sending after its bucket is empty (more than
 * 2 * burst frames over its rate within one second: no OS client does that,
 * it sends one READ per 128 KiB batch) is flagged, once per second at
 * most. So is a source that sent most of what ox_rx_serve read while the
 * socket overflowed and the call left frames queued: a flood the server
 * cannot drain fast enough to see it exceed its rate (the PACKET_STATISTICS
 * read then is added to the stats' sock_* counters).
 * ox_police_flagged moves up to `max` flagged MACs (6 bytes each)
 * into macs and returns how many; the caller decides what to do (the
 * server has the kernel drop their frames, ox_set_blocklist).
 */
size_t ox_police_flagged(ox_police *p, uint8_t *macs, size_t max);
/* Flagging (by either rule above) is on by default. Off, frames over the
 * rate are still denied one by one, but no source is ever flagged. */
void ox_police_flagging(ox_police *p, int on);

/*
 * Attach a classic BPF filter to the packet socket fd that drops every
 * frame whose source MAC is one of the n (at most OX_MAX_BLOCKED) in macs,
 * in the kernel, before it is queued: a flooding host then costs the
 * server nothing. n == 0 removes the filter. Returns 0, or -1 (errno set).
 */
#define OX_MAX_BLOCKED 32
int ox_set_blocklist(int fd, const uint8_t *macs, size_t n);

/*
 * Attach a filter that accepts no frame at all: for a transmit socket bound
 * to our ethertype (so that the kernel need not parse each frame it sends
 * to learn its protocol) that must never queue a received one.
 */
int ox_receive_nothing(int fd);

/*
 * Spread received frames over the sockets of a PACKET_FANOUT group by
 * source MAC, so that a sled's frames always reach the same socket (and so
 * the same worker, its session table and its policer). group < 0 creates a
 * group with a kernel-chosen id and this socket as its first member;
 * otherwise the socket joins group `group`. Returns the group's id, or -1
 * (errno set). ox_fanout_index is the member a MAC's frames go to.
 */
int ox_fanout_by_source(int fd, int group);
unsigned ox_fanout_index(const uint8_t *mac, unsigned members);

/*
 * Drain the non-blocking raw socket fd (at most max_frames frames), in C,
 * so that a flood never fills the socket queue and costs other hosts their
 * frames. Frames of our protocol whose source has a token are copied into
 * out, one per slot of slot_size bytes (lens[i] = length); the call returns
 * when out_n frames are kept or the socket is empty. Returns the number
 * kept, or -1 on a socket error (errno set).
 */
long ox_rx_police(int fd, ox_police *p, uint64_t now_ns, uint8_t *out, size_t slot_size,
                  uint32_t *lens, size_t out_n, size_t max_frames, ox_police_stats *stats);

/* ---- Server: READs answered in C (csrc/serve.c; Linux) ----------------- */

/*
 * The sessions whose READs the receive loop answers itself: a READ that
 * passed the policer, comes from a sled in this table and is addressed to
 * the image MAC its session boots from is reduced to its due offsets
 * (ox_read_offsets) and answered with DATA from that session's image
 * (ox_tx_data, sendmmsg on tx_fd) without going back to Python. Anything
 * else (other frames, READs of unknown sleds or for another image, READs
 * with nothing due, a failed send) is handed to the caller as before.
 * The caller owns the protocol: it adds a session once the protocol layer
 * has established it and drops it when the session ends, before the image
 * memory it points to goes away.
 */
typedef struct ox_serve ox_serve;

typedef struct {
    uint64_t reads;       /* READs answered */
    uint64_t offsets;     /* due offsets served */
    uint64_t retransmits; /* of them, below the high-water mark */
    uint64_t frames;      /* DATA frames sent */
    uint64_t bytes;
    uint64_t high;        /* high-water mark: end of the furthest chunk served */
    uint64_t last_ns;     /* now_ns of the last READ answered (0: none) */
    uint64_t repeats;     /* READs that asked again for an offset (retransmits > 0) */
} ox_serve_info;

typedef struct {
    uint64_t reads, offsets, retransmits, frames, bytes, syscalls, errors;
    int32_t last_errno;
    uint64_t repeats;
} ox_serve_totals;

ox_serve *ox_serve_new(unsigned sessions);
/* Send the DATA through a PACKET_TX_RING (ox_txring_open) rather than with
 * sendmmsg on tx_fd; NULL goes back to sendmmsg. The ring must outlive s. */
typedef struct ox_txring ox_txring;
void ox_serve_use_ring(ox_serve *s, ox_txring *ring);
/* Likewise through an AF_XDP socket (ox_xsk_open); it takes precedence
 * over a ring. NULL goes back to the ring or sendmmsg. */
typedef struct ox_xsk ox_xsk;
void ox_serve_use_xsk(ox_serve *s, ox_xsk *x);
void ox_serve_free(ox_serve *s);
/* Add or replace a session (its counters start again from `high`): 0, or
 * -1 if the table holds `sessions` already or an argument is bad. */
int ox_serve_set(ox_serve *s, const uint8_t *sled, const uint8_t *image_mac,
                 const uint8_t *image, uint64_t image_size, uint64_t high);
/* 1 if it was there, 0 if not, -1 on a bad argument. */
int ox_serve_drop(ox_serve *s, const uint8_t *sled);
int ox_serve_get(ox_serve *s, const uint8_t *sled, ox_serve_info *info);
/* Entries a lookup of `sled` looks at, found or not (1 when its home entry
 * settles it): what every READ costs the receive loop, for tests and
 * diagnosis. 0 on a bad argument. */
size_t ox_serve_probes(ox_serve *s, const uint8_t *sled);
void ox_serve_totals_get(ox_serve *s, ox_serve_totals *out);
/*
 * Batch repair timing for the READs answered here (the decisions are the
 * caller's: oxboot/protocol/repair.py). After each READ answered, its
 * offsets and time are kept and, if they have an OS client's slot layout
 * (every offset a multiple of 1024 within one 128 KiB batch), the READ is
 * overdue once the sled's round trip (RFC 6298's estimator over the gaps
 * between a READ and the next fresh batch, as repair.py's RoundTrip) plus
 * the larger of margin_ns and 4 deviations has passed, within
 * [min_ns, max_ns] (first_ns before any sample). ox_rx_serve_wait then
 * returns to the caller, which takes the overdue READs with
 * ox_serve_overdue: each is reported once (disarmed), and the gap after it
 * is no round trip sample. first_ns == 0 turns the timing off (the
 * default). ox_serve_repair: 0, or -1 on bad arguments.
 */
typedef struct {
    uint64_t first_ns, min_ns, max_ns, margin_ns;
} ox_repair_params;
int ox_serve_repair(ox_serve *s, const ox_repair_params *p);
typedef struct {
    uint8_t sled[6];
    uint64_t base;     /* the READ's offsets: base + 1024 i for each bit i of mask */
    uint64_t mask[2];  /* bits 0..63, 64..127 */
    uint64_t read_ns;  /* when it was answered (now_ns of ox_rx_serve) */
    uint64_t wait_ns;  /* how long after it the next READ was overdue */
} ox_serve_overdue_rec;
/* The READs overdue at now_ns, at most cap of them into out (the others
 * stay for the next call): how many, or -1 on bad arguments. Cheap when
 * none is due. */
long ox_serve_overdue(ox_serve *s, uint64_t now_ns, ox_serve_overdue_rec *out, size_t cap);
/* The caller resent the DATA of `sled`'s overdue READ at now_ns: a fresh
 * batch READ after it gives a round trip sample from then (the READ most
 * likely answers the last round; without samples from repaired batches, a
 * link that loses a frame of every batch would never have any). Call it
 * for every round. 1 if `sled`'s last READ was reported, 0 if not, -1 on
 * bad arguments. */
int ox_serve_resent(ox_serve *s, const uint8_t *sled, uint64_t now_ns);
/* No READ is overdue before this (0: none is armed). */
uint64_t ox_serve_wake(ox_serve *s);
/* ox_rx_police that also answers READs of the sessions in s (NULL: none);
 * a READ answered counts against out_n like a frame kept, so that a stream
 * of READs cannot keep the call from returning. */
long ox_rx_serve(int fd, ox_police *p, ox_serve *s, int tx_fd, uint64_t now_ns, uint8_t *out,
                 size_t slot_size, uint32_t *lens, size_t out_n, size_t max_frames,
                 ox_police_stats *stats);
/*
 * ox_rx_serve in a loop, sleeping in poll() in between, until there are
 * frames for Python (returns how many), the policer flags a source, or
 * timeout_ms pass, a signal comes, wake_fd (-1: none) is readable or a
 * READ is overdue (ox_serve_repair) (returns 0): READs of the sessions in s are answered without a trip
 * through Python. For spin_ns after each READ answered it polls without
 * sleeping (0: never). -1 with errno on a socket error.
 */
long ox_rx_serve_wait(int fd, ox_police *p, ox_serve *s, int tx_fd, uint8_t *out,
                      size_t slot_size, uint32_t *lens, size_t out_n, size_t max_frames,
                      ox_police_stats *stats, uint64_t spin_ns, int timeout_ms, int wake_fd);

/* ---- DATA transmit through a PACKET_TX_RING (csrc/txring.c; Linux) ----- */

/*
 * Set up a TPACKET_V2 transmit ring of `frames` slots on fd (a raw socket
 * used for nothing else: with a TX ring, send() only flushes the ring).
 * Returns NULL with errno set on failure.
 */
ox_txring *ox_txring_open(int fd, unsigned frames);
void ox_txring_close(ox_txring *r);
/* As ox_tx_data, through the ring: one user-space copy into the ring, one
 * send() per batch, and the kernel takes the ring pages without copying. */
long ox_txring_send_data(ox_txring *r, const uint8_t *dst, const uint8_t *src,
                         const uint8_t *image, uint64_t image_size,
                         const uint64_t *offsets, size_t n, uint32_t chunk,
                         ox_tx_stats *stats);

/* ---- DATA transmit through an AF_XDP socket (csrc/xsk.c; Linux) -------- */

/*
 * Open an AF_XDP socket for transmit only on queue `queue` of interface
 * `ifindex`, in copy mode (XDP_COPY: any driver; no XDP program, nothing
 * is received), with a UMEM of `frames` 2 KiB chunks and TX and completion
 * rings of as many entries (a power of two, 8..65536). Returns NULL with
 * errno set on failure (EINVAL for a bad size or queue, EBUSY if another
 * AF_XDP socket holds the queue, EAFNOSUPPORT without AF_XDP), having
 * released everything it set up.
 */
ox_xsk *ox_xsk_open(int ifindex, unsigned queue, unsigned frames);
void ox_xsk_close(ox_xsk *x);
/* As ox_tx_data, through the socket: the frames are built in the UMEM
 * (ox_build_data) and handed over by descriptor, one sendto() per batch;
 * it returns once the kernel has taken every frame. One thread at a time. */
long ox_xsk_send_data(ox_xsk *x, const uint8_t *dst, const uint8_t *src,
                      const uint8_t *image, uint64_t image_size,
                      const uint64_t *offsets, size_t n, uint32_t chunk,
                      ox_tx_stats *stats);

#endif
