/*
 * Classic BPF on packet sockets: the kernel-side blocklist of flooding
 * sources, the filter that receives nothing, and the PACKET_FANOUT group
 * that splits received frames over the workers by source MAC. Linux
 * network core.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <sys/socket.h>
#include <linux/filter.h>
#include <linux/if_packet.h>

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
        uint32_t lo = ox_get_be32(m + 2);
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
    return members == 0 ? 0 : ox_get_be32(mac + 2) % members;
}
