// SPDX-License-Identifier: GPL-2.0
/* The sockmap data path of the relay-modes benchmark (bench/relay_modes_bench.cc): a stream verdict
 * on a sockhash keyed by socket cookie. Every skb received on a relayed socket is redirected to
 * its peer's egress (bench_peer: cookie -> peer cookie, both filled by the relay before it puts
 * the two sockets in the sockhash). Counted per receiving socket. A socket without a peer, or a
 * redirect that fails, keeps its bytes (SK_PASS: queued for the relay to read), never drops them.
 * Attached to the sockhash only; no pins.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u64);
} bench_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u64);
} bench_peer SEC(".maps");

struct bench_counters {
	__u64 redirected_bytes;
	__u64 redirected_skbs;
	__u64 passed_bytes; /* no peer or a failed redirect: left to the relay */
	__u64 passed_skbs;
	__u64 empty_skbs; /* no data (a bare FIN): dropped */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct bench_counters);
} bench_stats SEC(".maps");

SEC("sk_skb/stream_verdict")
int bench_verdict(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct bench_counters *c = bpf_map_lookup_elem(&bench_stats, &cookie);
	__u64 *peer = bpf_map_lookup_elem(&bench_peer, &cookie);

	/* A skb without data (a bare FIN) is dropped: TCP already took its FIN (the socket reads EOF),
	 * and queued to a psock (redirected, or passed while the psock has egress bytes waiting) the
	 * backlog worker takes the 0 its send returns for a hard error, sets EPIPE and stops that
	 * socket's transmit (measured on 6.18). */
	if (skb->len == 0) {
		if (c)
			__sync_fetch_and_add(&c->empty_skbs, 1);
		return SK_DROP;
	}
	if (peer && bpf_sk_redirect_hash(skb, &bench_socks, peer, 0) == SK_PASS) {
		if (c) {
			__sync_fetch_and_add(&c->redirected_bytes, skb->len);
			__sync_fetch_and_add(&c->redirected_skbs, 1);
		}
		return SK_PASS;
	}
	if (c) {
		__sync_fetch_and_add(&c->passed_bytes, skb->len);
		__sync_fetch_and_add(&c->passed_skbs, 1);
	}
	return SK_PASS;
}
