/*
 * The one hash table keyed by MAC address, shared by the policer's buckets
 * (csrc/police.c) and the served sessions (csrc/serve.c): open addressing
 * with linear probing over a power-of-two array of fixed-size entries, each
 * starting with an ox_mac_key. Pure C, portable. See internal.h.
 */
#include "internal.h"

#include <stdlib.h>

int ox_mactable_init(ox_mactable *t, size_t min_slots, size_t stride)
{
    size_t n = 16;
    while (n < min_slots)
        n <<= 1;
    t->slots = calloc(n, stride);
    if (t->slots == NULL)
        return -1;
    t->stride = stride;
    t->mask = n - 1;
    return 0;
}

void ox_mactable_free(ox_mactable *t)
{
    free(t->slots);
    t->slots = NULL;
}

size_t ox_mac_home(const ox_mactable *t, const uint8_t *mac)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (int i = 0; i < 6; i++)
        h = (h ^ mac[i]) * 1099511628211ull;
    return (size_t)(h ^ (h >> 29)) & t->mask;
}

ox_mac_key *ox_mactable_find(const ox_mactable *t, const uint8_t *mac, size_t limit,
                             ox_mac_key **slot)
{
    size_t i = ox_mac_home(t, mac);
    if (limit > t->mask + 1)
        limit = t->mask + 1;
    for (size_t k = 0; k < limit; k++) {
        ox_mac_key *e = ox_mactable_at(t, i + k);
        if (e->used == OX_MAC_FREE) {
            if (slot != NULL)
                *slot = e;
            return NULL;
        }
        if (memcmp(e->mac, mac, 6) == 0)
            return e;
    }
    if (slot != NULL)
        *slot = NULL;
    return NULL;
}

/*
 * Backward-shift deletion: every entry after `e` in its run that may move
 * back (its home is not between the hole and itself) fills the hole, until
 * a free entry ends the run. No tombstones, so the table is left as if the
 * removed MAC had never been added: however many distinct MACs come and go
 * (spoofed sources churning sessions), a miss still stops at the first
 * free entry, a few entries from its home.
 */
void ox_mactable_remove(ox_mactable *t, ox_mac_key *e)
{
    size_t hole = (size_t)((uint8_t *)e - t->slots) / t->stride;
    size_t j = hole;
    for (size_t k = 0; k < t->mask; k++) {
        j = (j + 1) & t->mask;
        ox_mac_key *next = ox_mactable_at(t, j);
        if (next->used == OX_MAC_FREE)
            break;
        /* Distances (mod the table size) back from j to next's home and to
         * the hole: a home after the hole means next must stay put. */
        size_t from_home = (j - ox_mac_home(t, next->mac)) & t->mask;
        if (from_home < ((j - hole) & t->mask))
            continue;
        memcpy(ox_mactable_at(t, hole), next, t->stride);
        hole = j;
    }
    memset(ox_mactable_at(t, hole), 0, t->stride);
}

size_t ox_mactable_probes(const ox_mactable *t, const uint8_t *mac)
{
    size_t i = ox_mac_home(t, mac);
    for (size_t k = 0; k <= t->mask; k++) {
        const ox_mac_key *e = ox_mactable_at(t, i + k);
        if (e->used == OX_MAC_FREE || memcmp(e->mac, mac, 6) == 0)
            return k + 1;
    }
    return t->mask + 1;
}
