/*
 * Frames of the boot protocol, built and parsed in memory: DATA and READ
 * frames built, received DATA validated, a received READ reduced to the
 * offsets due. Pure C (no system calls), portable; the byte-order helpers
 * and header layout shared with the transmit paths are in internal.h.
 */
#include "internal.h"

long ox_build_read(uint8_t *out, size_t cap, const uint8_t *dst, const uint8_t *src,
                   const uint64_t *offsets, unsigned n)
{
    uint8_t *body;
    if (out == NULL || dst == NULL || src == NULL || n > OX_SLOTS ||
        (offsets == NULL && n != 0) || cap < OX_READ_FRAME)
        return -1;
    ox_frame_header(out, dst, src, OX_T_READ, OX_READ_LEN);
    body = out + OX_ETH_HLEN + OX_HDR_LEN;
    ox_put_be64(body, n);
    for (unsigned i = 0; i < OX_SLOTS; i++)
        ox_put_be64(body + 8 + 8 * (size_t)i, i < n ? offsets[i] : 0);
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
    ox_data_extent(image_size, offset, chunk, &take, &pad);
    if (cap < (size_t)OX_DATA_HLEN + take + pad)
        return -1;
    ox_data_header(out, dst, src, offset, take + pad);
    if (take)
        memcpy(out + OX_DATA_HLEN, image + offset, take);
    if (pad)
        memset(out + OX_DATA_HLEN + take, 0, pad);
    return (long)(OX_DATA_HLEN + take + pad);
}

long ox_parse_data(const uint8_t *frame, size_t len, uint64_t *offset,
                   int *exact)
{
    uint32_t plen;
    if (frame == NULL || offset == NULL || exact == NULL || len < OX_DATA_HLEN)
        return -1;
    if (frame[12] != (uint8_t)(OX_ETHERTYPE >> 8) || frame[13] != (uint8_t)OX_ETHERTYPE)
        return -1;
    if (ox_get_be32(frame + 14) != OX_MAGIC || ox_get_be32(frame + 18) != OX_T_DATA)
        return -1;
    plen = ox_get_be32(frame + 22);
    /* plen is attacker-controlled: compare without overflowing. */
    if (plen < 8 || plen > 8 + OX_MAX_DATA)
        return -1;
    if ((size_t)plen > len - (OX_ETH_HLEN + OX_HDR_LEN))
        return -1;
    *offset = ox_get_be64(frame + 26);
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
        ox_get_be32(frame + 14) != OX_MAGIC || ox_get_be32(frame + 18) != OX_T_READ ||
        ox_get_be32(frame + 22) != read_len)
        return -1;
    noffsets = ox_get_be64(frame + body);
    if (noffsets > OX_SLOTS)
        return -1;
    /* Offsets that keep increasing (a client filling its slots in order)
     * cannot repeat; from the first that does not, a small hash set of the
     * offsets kept so far finds duplicates (a linear scan cost 128 x 128
     * comparisons per READ: ~3% of the server's time at full speed). */
    uint64_t seen[2 * OX_SLOTS];
    int hashed = 0;
    for (size_t i = 0; i < OX_SLOTS; i++) {
        uint64_t off = ox_get_be64(frame + body + 8 + 8 * i);
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
