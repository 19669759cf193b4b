// SPDX-License-Identifier: GPL-2.0
/* A stand-in for another party's sock_ops program (a CNI's, say): it counts established sockets.
 * Used to prove that shunt attaches beside it and never replaces or removes it. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} foreign_count SEC(".maps");

SEC("sockops")
int foreign_sockops(struct bpf_sock_ops *skops)
{
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB ||
	    skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		__u32 k = 0;
		__u64 *v = bpf_map_lookup_elem(&foreign_count, &k);
		if (v)
			__sync_fetch_and_add(v, 1);
	}
	return 1;
}
