/*
 * Raw deflate pieces that concatenate into one deflate stream (see oxboot.h).
 *
 * libdeflate compresses a whole buffer at once, much faster than zlib and a
 * little tighter, but it always ends with a final block (BFINAL=1) that
 * stops mid-byte. To let such pieces follow each other the way pigz's
 * sync-flushed pieces do, the last block is made non-final and an empty
 * stored block (3 header bits, padding to a byte, 00 00 ff ff) is appended,
 * exactly like zlib's Z_SYNC_FLUSH.
 *
 * Where the last block begins is found the way zlib's examples/gzjoin.c
 * does it: raw inflate with Z_BLOCK stops at every block boundary, and
 * strm->data_type then tells how many bits of the last byte read are still
 * unused (bit 7: at a boundary, bit 6: the block just ended was the final
 * one). That inflate also checks libdeflate's output: it must decode to
 * exactly `len` bytes and end exactly at its last byte.
 */
#include "oxboot.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <libdeflate.h>
#include <zlib.h>

#define OX_DEFLATE_MIN_LEVEL 1
#define OX_DEFLATE_MAX_LEVEL 12
/* Bytes a chunk may get on top of libdeflate's own output: at most one
 * byte for the stored block header bits, then 00 00 ff ff. */
#define OX_SYNC_MAX 5
/* Adler-32 sums modulo this prime (RFC 1950). */
#define OX_ADLER_BASE 65521u
/* Output buffer for the checking inflate, whose output is discarded. */
#ifndef OX_JUNK
#define OX_JUNK (64 * 1024)
#endif

/*
 * Per-thread state: the compressor of the level last used (allocating one
 * costs more than compressing a small chunk, see bench/codec_survey.md)
 * and a raw inflate stream. Freed when the thread exits. Build with
 * -DOX_DEFLATE_NO_CACHE to allocate everything per call instead.
 */
struct ox_deflate_state {
    struct libdeflate_compressor *comp;
    struct libdeflate_decompressor *dec;
    int comp_level;
    int zs_ready;
    z_stream zs;
    uint8_t junk[OX_JUNK];
};

static void state_free(void *p)
{
    struct ox_deflate_state *st = p;
    if (st == NULL)
        return;
    libdeflate_free_compressor(st->comp);
    libdeflate_free_decompressor(st->dec);
    if (st->zs_ready)
        inflateEnd(&st->zs);
    free(st);
}

#ifndef OX_DEFLATE_NO_CACHE
static pthread_key_t state_key;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;
static int state_key_ok;

static void state_key_init(void)
{
    state_key_ok = pthread_key_create(&state_key, state_free) == 0;
}
#endif

/* The calling thread's state; *owned is set when the caller must free it
 * (no thread-specific storage available, or caching is compiled out). */
static struct ox_deflate_state *state_get(int *owned)
{
    struct ox_deflate_state *st;

    *owned = 0;
#ifndef OX_DEFLATE_NO_CACHE
    if (pthread_once(&state_once, state_key_init) == 0 && state_key_ok) {
        st = pthread_getspecific(state_key);
        if (st != NULL)
            return st;
    }
#endif
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
#ifndef OX_DEFLATE_NO_CACHE
    if (state_key_ok && pthread_setspecific(state_key, st) == 0)
        return st;
#endif
    *owned = 1;
    return st;
}

static struct libdeflate_compressor *state_compressor(struct ox_deflate_state *st, int level)
{
    if (st->comp != NULL && st->comp_level == level)
        return st->comp;
    libdeflate_free_compressor(st->comp);
    st->comp = libdeflate_alloc_compressor(level);
    st->comp_level = st->comp != NULL ? level : 0;
    return st->comp;
}

static z_stream *state_inflater(struct ox_deflate_state *st)
{
    if (st->zs_ready)
        return inflateReset(&st->zs) == Z_OK ? &st->zs : NULL;
    memset(&st->zs, 0, sizeof(st->zs));
    if (inflateInit2(&st->zs, -15) != Z_OK)
        return NULL;
    st->zs_ready = 1;
    return &st->zs;
}

size_t ox_deflate_bound(size_t len)
{
    /* libdeflate's bound grows by about 1 + 5/10000 per input byte; keep
     * far away from where its arithmetic could wrap. */
    if (len > SIZE_MAX / 4)
        return SIZE_MAX;
    return libdeflate_deflate_compress_bound(NULL, len) + OX_SYNC_MAX;
}

/*
 * Inflate the raw deflate data buf[0, n) (output discarded) and find the
 * bit offset of its last block's header. Returns 0 and sets *last_hdr and
 * *unused (bits left over in buf[n-1]) if the data is one complete deflate
 * stream of exactly `expect` bytes that ends at buf[n-1]; -1 otherwise.
 */
static int find_last_block(z_stream *zs, uint8_t *junk, const uint8_t *buf, size_t n,
                           size_t expect, uint64_t *last_hdr, unsigned *unused)
{
    size_t fed = 0, produced = 0;
    uint64_t hdr = 0; /* the first block starts at bit 0 */

    zs->next_in = (Bytef *)buf; /* zlib reads through a non-const pointer */
    zs->avail_in = 0;
    for (;;) {
        if (zs->avail_in == 0 && fed < n) {
            size_t piece = n - fed < UINT_MAX ? n - fed : UINT_MAX;
            zs->avail_in = (uInt)piece;
            fed += piece;
        }
        zs->next_out = junk;
        zs->avail_out = OX_JUNK;
        int ret = inflate(zs, Z_BLOCK);
        if (ret != Z_OK) /* Z_STREAM_END cannot come first with Z_BLOCK */
            return -1;
        produced += OX_JUNK - zs->avail_out;
        if (produced > expect)
            return -1;
        int dt = zs->data_type;
        if (!(dt & 128))
            continue;
        size_t used = (size_t)(zs->next_in - buf);
        unsigned bits = (unsigned)dt & 7;
        if (used == 0 || used > n)
            return -1;
        if (dt & 64) {
            /* The final block has ended: it must end the data. */
            if (zs->avail_in != 0 || fed != n || used != n || produced != expect)
                return -1;
            *last_hdr = hdr;
            *unused = bits;
            return 0;
        }
        hdr = (uint64_t)used * 8 - bits;
    }
}

long ox_deflate_chunk(int level, const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
    if (level < OX_DEFLATE_MIN_LEVEL || level > OX_DEFLATE_MAX_LEVEL || out == NULL
        || (in == NULL && len != 0) || cap < OX_SYNC_MAX - 1)
        return -1;
    if (cap > (size_t)LONG_MAX) /* so that the length fits the result */
        cap = (size_t)LONG_MAX;

    int owned;
    struct ox_deflate_state *st = state_get(&owned);
    if (st == NULL)
        return -1;
    long result = -1;
    struct libdeflate_compressor *comp = state_compressor(st, level);
    z_stream *zs = comp != NULL ? state_inflater(st) : NULL;
    if (zs == NULL)
        goto done;

    /* Leave room for the shortest sync marker (00 00 ff ff). libdeflate
     * never writes past the room it is given, and returns 0 when its
     * output does not fit (or comes within a few bytes of not fitting). */
    static const uint8_t empty = 0;
    size_t n = libdeflate_deflate_compress(comp, len ? in : &empty, len, out,
                                           cap - (OX_SYNC_MAX - 1));
    if (n == 0 || n > cap - (OX_SYNC_MAX - 1))
        goto done;

    uint64_t hdr;
    unsigned unused;
    if (find_last_block(zs, st->junk, out, n, len, &hdr, &unused) != 0)
        goto done;
    uint8_t bfinal = (uint8_t)(1u << (hdr & 7));
    if (hdr / 8 >= n || !(out[hdr / 8] & bfinal))
        goto done;
    out[hdr / 8] &= (uint8_t)~bfinal;
    /* The unused high bits of the last byte become the stored block's
     * header (BFINAL=0, BTYPE=00) and padding: make sure they are zero. */
    out[n - 1] &= (uint8_t)(0xffu >> unused);
    if (unused < 3) {
        /* The 3 header bits spill into one more byte. */
        if (cap - n < OX_SYNC_MAX)
            goto done;
        out[n++] = 0;
    }
    if (cap - n < 4)
        goto done;
    memcpy(out + n, "\x00\x00\xff\xff", 4);
    n += 4;
    result = (long)n;
done:
    if (owned)
        state_free(st);
    return result;
}

uint32_t ox_adler32(uint32_t adler, const uint8_t *buf, size_t len)
{
    /* libdeflate_adler32(x, NULL, 0) returns the initial value 1, not x. */
    if (buf == NULL || len == 0)
        return adler;
    return libdeflate_adler32(adler, buf, len);
}

uint32_t ox_adler32_combine(uint32_t first, uint32_t second, uint64_t second_len)
{
    /* zlib's: pieces inflated in parallel each sum their own bytes. It
     * only uses second_len modulo Adler-32's base (and answers 0xffffffff
     * to a negative one), so reducing it first gives the same result
     * through adler32_combine, which every zlib declares (the 64-bit
     * entry point needs _LARGEFILE64_SOURCE, not on every system). */
    if (second_len > (uint64_t)INT64_MAX)
        return 0xffffffffu;
    return (uint32_t)adler32_combine(first, second, (z_off_t)(second_len % OX_ADLER_BASE));
}

/*
 * Inflating a piece of a deflate stream with libdeflate, which only takes
 * whole streams and has no preset dictionary: the piece is put behind a
 * stored block holding the 32 KiB that preceded it (so back-references
 * into it resolve) and, unless it holds the stream's end, in front of an
 * empty final block (03 00). libdeflate then decodes it in one call, about
 * 1.5x as fast as zlib-ng's streaming inflate.
 */
#define OX_STORED_HDR 5 /* BFINAL=0 BTYPE=00 + padding, LEN, NLEN */
#define OX_EMPTY_FINAL 2

size_t ox_inflate_work_size(size_t dict_len, size_t in_len)
{
    if (dict_len > OX_INFLATE_MAX_DICT || in_len > SIZE_MAX / 2)
        return SIZE_MAX;
    return OX_STORED_HDR + dict_len + in_len + OX_EMPTY_FINAL;
}

long ox_inflate_piece(const uint8_t *dict, size_t dict_len, const uint8_t *in, size_t in_len,
                      int final, uint8_t *work, size_t work_cap, uint8_t *out, size_t out_cap,
                      size_t *used)
{
    size_t need = ox_inflate_work_size(dict_len, in_len);
    size_t k = 0, in_used = 0, out_len = 0;

    if ((dict == NULL && dict_len != 0) || (in == NULL && in_len != 0) || work == NULL ||
        out == NULL || used == NULL || need == SIZE_MAX || work_cap < need ||
        out_cap < dict_len || out_cap > (size_t)LONG_MAX)
        return OX_INFLATE_ERROR;
    if (dict_len) {
        work[k++] = 0;
        work[k++] = (uint8_t)dict_len;
        work[k++] = (uint8_t)(dict_len >> 8);
        work[k++] = (uint8_t)~dict_len;
        work[k++] = (uint8_t)(~dict_len >> 8);
        memcpy(work + k, dict, dict_len);
        k += dict_len;
    }
    size_t head = k;
    if (in_len)
        memcpy(work + k, in, in_len);
    k += in_len;
    if (!final) {
        work[k++] = 0x03;
        work[k++] = 0x00;
    }

    int owned;
    struct ox_deflate_state *st = state_get(&owned);
    if (st == NULL)
        return OX_INFLATE_ERROR;
    long result = OX_INFLATE_ERROR;
    if (st->dec == NULL)
        st->dec = libdeflate_alloc_decompressor();
    if (st->dec == NULL)
        goto done;
    enum libdeflate_result r = libdeflate_deflate_decompress_ex(st->dec, work, k, out, out_cap,
                                                                &in_used, &out_len);
    if (r == LIBDEFLATE_INSUFFICIENT_SPACE) {
        result = OX_INFLATE_NO_ROOM;
        goto done;
    }
    if (r != LIBDEFLATE_SUCCESS || out_len < dict_len || in_used < head || in_used > k)
        goto done;
    /* Not final: the piece must end exactly where our final block begins
     * (had it held a final block of its own, decoding stopped early). */
    if (!final && in_used != k)
        goto done;
    *used = final ? in_used - head : in_len; /* not our final block */
    result = (long)(out_len - dict_len);
done:
    if (owned)
        state_free(st);
    return result;
}

long ox_find_sync(const uint8_t *buf, size_t len, size_t from)
{
    if (buf == NULL || len < 4 || from > len - 4 || len > (size_t)LONG_MAX)
        return -1;
    /* memchr for the ff ff half: 0xff is rare in most compressed data. */
    const uint8_t *p = buf + from + 2, *last = buf + len - 1;
    while (p < last) {
        p = memchr(p, 0xff, (size_t)(last - p));
        if (p == NULL)
            return -1;
        if (p[1] == 0xff && p[-1] == 0 && p[-2] == 0)
            return (long)(p - 2 - buf);
        p++;
    }
    return -1;
}
