// SPDX-License-Identifier: GPL-2.0
/* The in-node fast path: sock_ops puts established TCP sockets of meshed local pods whose peer is a
 * meshed local pod (or loopback in the same pod) into a sockhash; sk_msg redirects each send
 * straight into the peer socket's receive queue, skipping the TCP/IP stack.
 *
 * Identity comes from the socket's cgroup (the pod cgroup is found by walking up from the
 * container cgroup), never from a probe or the first packet. Anything unknown or full takes the
 * normal path, counted.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "shunt/fastpath_abi.h"
#include "shunt/sock_key.h"

char LICENSE[] SEC("license") = "GPL";

#define TCP_CLOSE_STATE 7 /* TCP_CLOSE */
#define E2BIG 7
#define EEXIST 17
#define ENOMEM 12

/* Sizes are set by the agent before load (--sockhash-size etc.); these are defaults. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct shunt_sock_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_sk_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct shunt_sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_skst_v1 SEC(".maps");

#include "shunt/pods_map.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct shunt_ip_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_ep_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct shunt_msg_stats_key);
	__type(value, struct shunt_msg_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_msg_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct shunt_sock_stats_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_sock_v1 SEC(".maps");

static __always_inline void count_sock_event(__u32 workload_id, __u32 event)
{
	struct shunt_sock_stats_key k = { .workload_id = workload_id, .event = event };
	__u64 *v = bpf_map_lookup_elem(&shunt_sock_v1, &k);
	if (v) {
		/* Atomic even on a per-CPU slot: a program running in process context (close(),
		 * sendmsg()) can be preempted or interrupted by a softirq running this program on the
		 * same CPU, and a plain += would lose that update. */
		__sync_fetch_and_add(v, 1);
		return;
	}
	__u64 one = 1;
	if (bpf_map_update_elem(&shunt_sock_v1, &k, &one, BPF_NOEXIST) == -EEXIST) {
		v = bpf_map_lookup_elem(&shunt_sock_v1, &k); /* created meanwhile by another CPU */
		if (v)
			__sync_fetch_and_add(v, 1);
	}
}

static __always_inline void count_msg(const struct shunt_sock_state *st, __u32 verdict, __u32 bytes)
{
	struct shunt_msg_stats_key k = {
		.src_workload = st->src_workload,
		.dst_workload = st->dst_workload,
		.verdict = verdict,
	};
	struct shunt_msg_stats *v = bpf_map_lookup_elem(&shunt_msg_v1, &k);
	if (v) {
		__sync_fetch_and_add(&v->msgs, 1);
		__sync_fetch_and_add(&v->bytes, bytes);
		return;
	}
	struct shunt_msg_stats init = { .msgs = 1, .bytes = bytes };
	long err = bpf_map_update_elem(&shunt_msg_v1, &k, &init, BPF_NOEXIST);
	if (err == -EEXIST) {
		v = bpf_map_lookup_elem(&shunt_msg_v1, &k); /* created meanwhile by another CPU */
		if (v) {
			__sync_fetch_and_add(&v->msgs, 1);
			__sync_fetch_and_add(&v->bytes, bytes);
		}
	} else if (err == -E2BIG) {
		count_sock_event(st->src_workload, SHUNT_SOCK_STATS_FULL);
	}
}

/* The pod that owns the socket: its own cgroup or the nearest ancestor in the pods map. */
static __always_inline const struct shunt_pod *pod_of_sock(struct bpf_sock *bsk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return NULL;
	struct cgroup *cg = tp->inet_conn.icsk_inet.sk.sk_cgrp_data.cgroup;
	for (int i = 0; i < SHUNT_MAX_CGROUP_WALK; i++) {
		if (!cg)
			return NULL;
		__u64 id = BPF_CORE_READ(cg, kn, id);
		const struct shunt_pod *pod = bpf_map_lookup_elem(&shunt_pods_v1, &id);
		if (pod)
			return pod;
		struct cgroup_subsys_state *parent = BPF_CORE_READ(cg, self.parent);
		if (!parent)
			return NULL;
		cg = BPF_CORE_READ(parent, cgroup);
	}
	return NULL;
}

/* bpf_sock_ops and sk_msg_md name their address fields alike; each field must be read from the
 * context directly (the verifier rewrites those loads), hence a macro rather than a function. */
#define SHUNT_TUPLE_FROM_CTX(ctx, t)                      \
	do {                                              \
		(t)->family = (ctx)->family;              \
		(t)->local_ip4 = (ctx)->local_ip4;        \
		(t)->remote_ip4 = (ctx)->remote_ip4;      \
		(t)->local_ip6[0] = (ctx)->local_ip6[0];  \
		(t)->local_ip6[1] = (ctx)->local_ip6[1];  \
		(t)->local_ip6[2] = (ctx)->local_ip6[2];  \
		(t)->local_ip6[3] = (ctx)->local_ip6[3];  \
		(t)->remote_ip6[0] = (ctx)->remote_ip6[0]; \
		(t)->remote_ip6[1] = (ctx)->remote_ip6[1]; \
		(t)->remote_ip6[2] = (ctx)->remote_ip6[2]; \
		(t)->remote_ip6[3] = (ctx)->remote_ip6[3]; \
		(t)->local_port = (ctx)->local_port;      \
		(t)->remote_port = (ctx)->remote_port;    \
	} while (0)

static __always_inline void on_established(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return;
	const struct shunt_pod *pod = pod_of_sock(sk);
	if (!pod || !(pod->flags & SHUNT_POD_MESHED))
		return; /* not a meshed local pod: untouched */
	__u32 self = pod->workload_id;

	struct shunt_sock_tuple t = {};
	SHUNT_TUPLE_FROM_CTX(skops, &t);
	struct shunt_sock_key key = {};
	if (shunt_sock_key_build(&t, bpf_get_netns_cookie(skops), &key))
		return;

	__u32 peer;
	if (key.netns) {
		peer = self; /* loopback: the peer is in this pod */
	} else {
		struct shunt_ip_key ip = {};
		for (int i = 0; i < 4; i++)
			ip.addr[i] = key.remote_ip[i];
		__u32 *wl = bpf_map_lookup_elem(&shunt_ep_v1, &ip);
		if (!wl) {
			count_sock_event(self, SHUNT_SOCK_PEER_NOT_LOCAL);
			return; /* the peer is remote or unmeshed: normal path, no per-send cost */
		}
		peer = *wl;
	}

	struct shunt_sock_state *st =
		bpf_sk_storage_get(&shunt_skst_v1, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count_sock_event(self, SHUNT_SOCK_INSERT_ERROR);
		return;
	}
	st->src_workload = self;
	st->dst_workload = peer;
	st->mode = SHUNT_SOCK_UNDECIDED;
	st->in_map = 0;

	long err = bpf_sock_hash_update(skops, &shunt_sk_v1, &key, BPF_ANY);
	if (err) {
		count_sock_event(self, err == -E2BIG || err == -ENOMEM ? SHUNT_SOCK_INSERT_FULL
								      : SHUNT_SOCK_INSERT_ERROR);
		st->mode = SHUNT_SOCK_PLAIN;
		return;
	}
	st->in_map = 1;
	count_sock_event(self, SHUNT_SOCK_INSERTED);
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void on_state_change(struct bpf_sock_ops *skops)
{
	if (skops->args[1] != TCP_CLOSE_STATE)
		return;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return;
	struct shunt_sock_state *st = bpf_sk_storage_get(&shunt_skst_v1, sk, 0, 0);
	if (!st || !st->in_map)
		return;
	st->in_map = 0; /* the kernel unlinks a closed socket from the sockhash itself */
	count_sock_event(st->src_workload, SHUNT_SOCK_REMOVED);
}

SEC("sockops")
int shunt_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_established(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		on_state_change(skops);
		break;
	}
	return 1;
}

/* Ordering: a socket whose first send found no peer in the sockhash has put bytes into the TCP
 * stream; redirecting a later send could overtake them. Such a socket stays on the normal path. */
SEC("sk_msg")
int shunt_sk_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	if (!sk)
		return SK_PASS;
	struct shunt_sock_state *st = bpf_sk_storage_get(&shunt_skst_v1, sk, 0, 0);
	if (!st)
		return SK_PASS; /* not ours: never touched */
	__u32 size = msg->size;
	if (st->mode == SHUNT_SOCK_PLAIN) {
		count_msg(st, SHUNT_MSG_FALLBACK_PLAIN_SOCKET, size);
		return SK_PASS;
	}

	struct shunt_sock_tuple t = {};
	SHUNT_TUPLE_FROM_CTX(msg, &t);
	struct shunt_sock_key key = {}, peer = {};
	if (shunt_sock_key_build(&t, bpf_get_netns_cookie(msg), &key)) {
		st->mode = SHUNT_SOCK_PLAIN;
		count_msg(st, SHUNT_MSG_FALLBACK_NO_STATE, size);
		return SK_PASS;
	}
	shunt_sock_key_peer(&key, &peer);

	/* On a failed lookup the helper leaves no redirect target; returning SK_PASS then sends the
	 * message the normal way. */
	if (bpf_msg_redirect_hash(msg, &shunt_sk_v1, &peer, BPF_F_INGRESS) == SK_PASS) {
		st->mode = SHUNT_SOCK_REDIRECT;
		count_msg(st, SHUNT_MSG_REDIRECTED, size);
		return SK_PASS;
	}
	if (st->mode == SHUNT_SOCK_UNDECIDED) {
		st->mode = SHUNT_SOCK_PLAIN;
		count_msg(st, SHUNT_MSG_FALLBACK_PEER_NOT_READY, size);
	} else {
		count_msg(st, SHUNT_MSG_FALLBACK_PEER_GONE, size);
	}
	return SK_PASS;
}
