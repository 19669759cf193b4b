/* The Service address each rewritten connect() named (per socket, sk_storage): written by socklb's
 * connect4/6, read by its getpeername4/6 and by the fast path's L4 metrics (the destination
 * Service of a connection). One definition, so that both objects' copies are identical and libbpf
 * reuses the one pinned map (LIBBPF_PIN_BY_NAME). BPF side only. */
#ifndef SHUNT_LBSK_MAP_BPF_H
#define SHUNT_LBSK_MAP_BPF_H

#include "shunt/socklb_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct shunt_lb_sock);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_lbsk_v1 SEC(".maps");

#endif /* SHUNT_LBSK_MAP_BPF_H */
