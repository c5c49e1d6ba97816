"""cffi build script for the oxboot C core (API mode, compiled at install).

The cdef below mirrors ``oxboot.h``; ``oxboot._core`` is the compiled module
and ``oxboot._native`` the typed layer above it. The portable part (the
image tools' core) is built everywhere, the network core only on Linux;
``lib.OX_HAS_NET`` says which build this is.
"""

from __future__ import annotations

import os
import sys

from cffi import FFI

# Constants are taken from oxboot.h when the module is compiled (API mode:
# "..." stands for the header's value), so that they are written once.
CONSTANTS = """
#define OX_HAS_NET ...
#define OX_INFLATE_MAX_DICT ...
#define OX_INFLATE_ERROR ...
#define OX_INFLATE_NO_ROOM ...
#define OX_READ_FRAME ...
#define OX_MAX_BLOCKED ...
#define OX_TX_SENDMMSG ...
#define OX_TX_SEND ...
#define OX_ETHERTYPE ...
#define OX_MAGIC ...
#define OX_T_HELLO ...
#define OX_T_OFFER ...
#define OX_T_READ ...
#define OX_T_DATA ...
#define OX_T_FINISHED ...
#define OX_T_RESET ...
#define OX_ETH_HLEN ...
#define OX_HDR_LEN ...
#define OX_DATA_HLEN ...
#define OX_CHUNK ...
#define OX_MAX_DATA ...
#define OX_MIN_DATA_PAYLOAD ...
#define OX_SLOTS ...
#define OX_READ_LEN ...
"""

# The image tools' core: SHA-256, deflate pieces, Adler-32, frames built
# and parsed in memory. POSIX, libcrypto, zlib and libdeflate only: it
# compiles on every system Helios images are built on (illumos, macOS,
# FreeBSD, Linux).
PORTABLE_CDEF = """
typedef struct ox_sha256_ctx ox_sha256_ctx;
ox_sha256_ctx *ox_sha256_new(void);
int ox_sha256_update(ox_sha256_ctx *ctx, const uint8_t *buf, size_t len);
int ox_sha256_final(ox_sha256_ctx *ctx, uint8_t *out);
void ox_sha256_free(ox_sha256_ctx *ctx);
int ox_sha256(const uint8_t *buf, size_t len, uint8_t *out);

int ox_writeback(int fd, uint64_t offset, uint64_t len);

size_t ox_deflate_bound(size_t len);
long ox_deflate_chunk(int level, const uint8_t *in, size_t len, uint8_t *out, size_t cap);
uint32_t ox_adler32(uint32_t adler, const uint8_t *buf, size_t len);
uint32_t ox_adler32_combine(uint32_t first, uint32_t second, uint64_t second_len);
size_t ox_inflate_work_size(size_t dict_len, size_t in_len);
long ox_find_sync(const uint8_t *buf, size_t len, size_t from);
long ox_inflate_piece(const uint8_t *dict, size_t dict_len, const uint8_t *in, size_t in_len,
                      int final, uint8_t *work, size_t work_cap, uint8_t *out, size_t out_cap,
                      size_t *used);

long ox_build_data(uint8_t *out, size_t cap, const uint8_t *dst,
                   const uint8_t *src, const uint8_t *image,
                   uint64_t image_size, uint64_t offset, uint32_t chunk);
long ox_build_read(uint8_t *out, size_t cap, const uint8_t *dst, const uint8_t *src,
                   const uint64_t *offsets, unsigned n);

long ox_parse_data(const uint8_t *frame, size_t len, uint64_t *offset,
                   int *exact);
long ox_read_offsets(const uint8_t *frame, size_t len, uint64_t *out);
"""
PORTABLE_SOURCES = ["sha256", "sys", "frame", "mactable", "deflate"]

# The network core: raw sockets (AF_PACKET, AF_XDP), packet rings, socket
# filters and the server's and the sled's receive loops. Linux only.
NET_CDEF = """
typedef struct {
    uint64_t frames;
    uint64_t bytes;
    uint64_t syscalls;
    int32_t last_errno;
} ox_tx_stats;

long ox_tx_data(int fd, int method, const uint8_t *dst, const uint8_t *src,
                const uint8_t *image, uint64_t image_size,
                const uint64_t *offsets, size_t n, uint32_t chunk,
                ox_tx_stats *stats);

typedef struct {
    uint64_t frames;
    uint64_t data_ok;
    uint64_t data_stray;
    uint64_t bad;
    uint64_t bytes;
    uint64_t eof;
    uint64_t padded;
    uint64_t extent;
} ox_rx_stats;

typedef struct {
    const uint8_t *self_mac;
    const uint8_t *server;
    uint8_t *ram;
    uint64_t ram_len;
    uint64_t *slot_offsets;
    uint8_t *slot_busy;
    uint32_t *busy_count;
    uint8_t *other;
    size_t other_cap;
    size_t *other_len;
    ox_rx_stats *stats;
} ox_rx_args;
long ox_rx_data(int fd, const ox_rx_args *a, size_t max_frames);
long ox_rx_data_wait(int fd, const ox_rx_args *a, size_t max_frames, int timeout_ms);

typedef struct ox_rxring ox_rxring;
ox_rxring *ox_rxring_open(int fd, unsigned frames);
void ox_rxring_close(ox_rxring *r);
typedef struct {
    uint64_t next_offset;
    uint64_t data_size;
    double *slot_sent;
    uint64_t reads;
    uint64_t send_errors;
} ox_rx_next;
long ox_rxring_data_wait(ox_rxring *r, const ox_rx_args *a, size_t max_frames,
                         int timeout_ms, ox_rx_next *next);


typedef struct ox_police ox_police;
typedef struct {
    uint64_t frames;
    uint64_t accepted;
    uint64_t foreign;
    uint64_t policed;
    uint64_t flagged;
    uint64_t served;
    uint64_t sock_packets;
    uint64_t sock_drops;
} ox_police_stats;
ox_police *ox_police_new(double rate, double burst, unsigned sources);
void ox_police_free(ox_police *p);
size_t ox_police_flagged(ox_police *p, uint8_t *macs, size_t max);
void ox_police_flagging(ox_police *p, int on);
int ox_set_blocklist(int fd, const uint8_t *macs, size_t n);
int ox_receive_nothing(int fd);
int ox_fanout_by_source(int fd, int group);
unsigned ox_fanout_index(const uint8_t *mac, unsigned members);
typedef struct ox_serve ox_serve;
typedef struct {
    uint64_t reads;
    uint64_t offsets;
    uint64_t retransmits;
    uint64_t frames;
    uint64_t bytes;
    uint64_t high;
    uint64_t last_ns;
} ox_serve_info;
typedef struct {
    uint64_t reads, offsets, retransmits, frames, bytes, syscalls, errors;
    int32_t last_errno;
} ox_serve_totals;
ox_serve *ox_serve_new(unsigned sessions);
typedef struct ox_txring ox_txring;
void ox_serve_use_ring(ox_serve *s, ox_txring *ring);
typedef struct ox_xsk ox_xsk;
void ox_serve_use_xsk(ox_serve *s, ox_xsk *x);
void ox_serve_free(ox_serve *s);
int ox_serve_set(ox_serve *s, const uint8_t *sled, const uint8_t *image_mac,
                 const uint8_t *image, uint64_t image_size, uint64_t high);
int ox_serve_drop(ox_serve *s, const uint8_t *sled);
int ox_serve_get(ox_serve *s, const uint8_t *sled, ox_serve_info *info);
size_t ox_serve_probes(ox_serve *s, const uint8_t *sled);
void ox_serve_totals_get(ox_serve *s, ox_serve_totals *out);
typedef struct {
    uint64_t first_ns, min_ns, max_ns, margin_ns;
} ox_repair_params;
int ox_serve_repair(ox_serve *s, const ox_repair_params *p);
typedef struct {
    uint8_t sled[6];
    uint64_t base;
    uint64_t mask[2];
    uint64_t read_ns;
    uint64_t wait_ns;
} ox_serve_overdue_rec;
long ox_serve_overdue(ox_serve *s, uint64_t now_ns, ox_serve_overdue_rec *out, size_t cap);
int ox_serve_resent(ox_serve *s, const uint8_t *sled, uint64_t now_ns);
uint64_t ox_serve_wake(ox_serve *s);
long ox_rx_serve(int fd, ox_police *p, ox_serve *s, int tx_fd, uint64_t now_ns, uint8_t *out,
                 size_t slot_size, uint32_t *lens, size_t out_n, size_t max_frames,
                 ox_police_stats *stats);
long ox_rx_serve_wait(int fd, ox_police *p, ox_serve *s, int tx_fd, uint8_t *out,
                      size_t slot_size, uint32_t *lens, size_t out_n, size_t max_frames,
                      ox_police_stats *stats, uint64_t spin_ns, int timeout_ms, int wake_fd);
long ox_rx_police(int fd, ox_police *p, uint64_t now_ns, uint8_t *out, size_t slot_size,
                  uint32_t *lens, size_t out_n, size_t max_frames, ox_police_stats *stats);

ox_txring *ox_txring_open(int fd, unsigned frames);
void ox_txring_close(ox_txring *r);
long ox_txring_send_data(ox_txring *r, const uint8_t *dst, const uint8_t *src,
                         const uint8_t *image, uint64_t image_size,
                         const uint64_t *offsets, size_t n, uint32_t chunk,
                         ox_tx_stats *stats);

ox_xsk *ox_xsk_open(int ifindex, unsigned queue, unsigned frames);
void ox_xsk_close(ox_xsk *x);
long ox_xsk_send_data(ox_xsk *x, const uint8_t *dst, const uint8_t *src,
                      const uint8_t *image, uint64_t image_size,
                      const uint64_t *offsets, size_t n, uint32_t chunk,
                      ox_tx_stats *stats);
"""
NET_SOURCES = ["tx_sendmmsg", "rx_sled", "police", "sockfilter", "serve", "txring", "rxring",
               "xsk"]

# OXBOOT_SANITIZE=1 builds the core with AddressSanitizer and UBSan, for CI.
_sanitize = os.environ.get("OXBOOT_SANITIZE") == "1"
_cflags = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
_lflags: list[str] = []
if _sanitize:
    _cflags += ["-O1", "-g", "-fno-omit-frame-pointer",
                "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    _lflags += ["-fsanitize=address,undefined"]

# The network core is built on Linux unless OXBOOT_PORTABLE=1 asks for the
# portable build there too (to test it: scripts/portable-check.sh).
_net = sys.platform.startswith("linux") and os.environ.get("OXBOOT_PORTABLE") != "1"

ffibuilder = FFI()
ffibuilder.cdef(CONSTANTS + PORTABLE_CDEF + (NET_CDEF if _net else ""))
ffibuilder.set_source(
    "oxboot._core",
    f'#include "oxboot.h"\n#define OX_HAS_NET {int(_net)}\n',
    # Paths are relative to the project root, where setuptools runs this.
    sources=[f"csrc/{name}.c" for name in PORTABLE_SOURCES + (NET_SOURCES if _net else [])],
    include_dirs=["csrc"],
    libraries=["crypto", "deflate", "z"],
    extra_compile_args=_cflags,
    extra_link_args=_lflags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
