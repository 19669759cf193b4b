// SPDX-License-Identifier: GPL-2.0
/* The in-node fast path: sock_ops puts established TCP sockets of meshed local pods whose peer is a
 * meshed local pod (or loopback in the same pod) into a sockhash; sk_msg redirects each send
 * straight into the peer socket's receive queue, skipping the TCP/IP stack.
 *
 * Identity comes from the socket's cgroup (the pod cgroup is found by walking up from the
 * container cgroup), never from a probe or the first packet. Anything unknown or full takes the
 * normal path, counted.
 *
 * Transparency (docs/fastpath.md): bytes redirected into a socket are read through the kernel's
 * sockmap receive path (tcp_bpf_recvmsg), which serves non-blocking recvmsg exactly as TCP does but
 * not blocking reads (EAGAIN after a wake-up with nothing queued), splice(2) (never sees them),
 * SO_RCVLOWAT or MSG_WAITALL. So:
 *  - blocking sockets (connect() or listen() on a blocking socket, or a server that read unsafely
 *    before) never enter the sockhash;
 *  - a socket in the sockhash receives redirected bytes only once its reads were seen to be safe
 *    (fentry on tcp_bpf_recvmsg / tcp_splice_read) and only when that is order-safe: every byte
 *    its peer sent through the stack has been read (peer's write_seq == its copied_seq);
 *  - a socket read unsafely before any byte was redirected into it is taken out of the sockhash
 *    at its next state change (nothing is queued for it, so nothing is lost);
 *  - redirects stop while a receiver has too much unread (TCP then pushes back): what TCP would
 *    buffer once it has not read lately, more while it reads (a sender on its CPU runs a time
 *    slice ahead), nothing more under TCP memory pressure;
 *  - SO_ZEROCOPY senders send through the stack (their completions come from TCP).
 * Every fallback is counted by reason.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "shunt/fastpath_abi.h"
#include "shunt/sock_key.h"

char LICENSE[] SEC("license") = "GPL";

#define TCP_ESTABLISHED_STATE 1 /* TCP_ESTABLISHED */
#define TCP_CLOSE_STATE 7       /* TCP_CLOSE */
#define TCP_FIN_WAIT1_STATE 4   /* TCP_FIN_WAIT1 */
#define TCP_LAST_ACK_STATE 9    /* TCP_LAST_ACK */
#define SHUNT_O_NONBLOCK 00004000
#define SHUNT_MSG_DONTWAIT 0x40
#define SHUNT_MSG_PEEK 0x2
#define SHUNT_SK_USER_DATA_PTRMASK (~7UL) /* low bits of sk_user_data are flags */

/* 0: the fast path as it was before the protections (every meshed pair spliced, whatever its
 * programs do); for benchmarks only (--fastpath-protect=false). */
const volatile __u8 shunt_protect = 1;
/* 0: no L4 metrics (--connection-metrics=false): no per-connection state, no events. */
const volatile __u8 shunt_l4_metrics = 1;
/* Bytes that may wait unread in a receiver's sockmap queue before its senders take the stack (and
 * TCP's flow control). A receiver that has not read lately may hold what TCP would buffer at most
 * for a connection (shunt_max_queued_idle: the node's tcp_rmem + tcp_wmem maxima); one that is
 * reading may fall further behind (shunt_max_queued), unless TCP's memory is under pressure: a
 * sender on the reader's CPU outruns it by a whole time slice, and a sender that met the bound
 * stays on the stack for as long as it keeps the stream full (the agent sets both). */
const volatile __u32 shunt_max_queued_idle = 10 << 20;
const volatile __u32 shunt_max_queued = 160 << 20;
/* 1 where TCP drops in-window segments of a receiver whose receive memory is full, instead of
 * advertising a zero window (measured on Linux 6.1; 6.18 advertises the zero window). Bytes
 * redirected into a socket are charged to its receive memory (sk_rmem_alloc): a sender that
 * falls back to the stack while the receiver's sockmap queue fills its sk_rcvbuf has the
 * segments it sent within the advertised window dropped, retransmitted only after a timeout,
 * and its RST, whose sequence number then is past what the receiver got, may be ignored (a
 * server waiting for the client to go waits forever). There the queue is held under a quarter
 * of the receiver's sk_rcvbuf: room for the window TCP advertises (half of it) in segments up to
 * half again their size; a quarter is what the compatibility suite measured drop-free on 6.1,
 * not a bound derived for every traffic shape. */
const volatile __u8 shunt_rcvbuf_bound = 0;
/* The sk_rcvbuf taken for a reader view that has none (written by an older agent's programs,
 * which did not record it): tcp_rmem[1], a new socket's (set by the agent). */
const volatile __u32 shunt_rcvbuf_default = 131072;
/* 1 where FIONREAD users cannot be seen (no fentry on tcp_ioctl / tcp_bpf_ioctl) but reads of
 * every socket can (sock_recv_length): FIONREAD of a socket in the sockhash counts one of its two
 * queues only, so a socket enters it only if both its class and its peer's read safely before
 * (all its bytes are then redirected, and counted) or were senders that never read; the first
 * connection of a class stays plain TCP for life, its reads still teach the class. */
const volatile __u8 shunt_unlearned_plain = 0;
/* A receiver that read within this many jiffies is reading (25: 25 ms at HZ=1000, 100 ms at
 * HZ=250). */
#define SHUNT_READING_JIFFIES 25
/* Queued bytes below which TCP's memory pressure is not checked (request/response traffic). */
#define SHUNT_QUEUED_FREE (64 << 10)
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
} shunt_skst_v3 SEC(".maps");

#include "shunt/map_ops.bpf.h"
#include "shunt/pods_map.bpf.h"
#include "shunt/lbsk_map.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct shunt_l4_conn);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_l4_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, SHUNT_L4_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_l4ev_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* = sockhash size */
	__type(key, struct shunt_sock_key);
	__type(value, struct shunt_reader_ref);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_rdr_v2 SEC(".maps");

/* = shunt_reader_slots (the agent sets both: twice the sockhash size). Mmapable: its values then
 * start page-aligned, so that each 64-byte view is one cache line of its own. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct shunt_reader_view);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_rdv_v1 SEC(".maps");
const volatile __u32 shunt_reader_slots = 131072;

/* The reader view in `slot` if `owner` still owns it. */
static __always_inline struct shunt_reader_view *slot_view(__u32 slot, __u64 owner)
{
	struct shunt_reader_view *v = bpf_map_lookup_elem(&shunt_rdv_v1, &slot);
	return v && owner && v->owner == owner ? v : NULL;
}

/* A free reader slot for the socket of `cookie`, taken (SHUNT_NO_SLOT if none was free among the
 * few searched from its cookie's). */
static __always_inline __u32 slot_take(__u64 cookie)
{
	if (!cookie || !shunt_reader_slots)
		return SHUNT_NO_SLOT;
	/* Cookies come in per-CPU runs: spread them, so that long-lived sockets do not fill runs of
	 * neighbouring slots. */
	__u32 start = (__u32)((cookie * 0x9E3779B97F4A7C15ULL) >> 32);
	for (__u32 i = 0; i < SHUNT_SLOT_PROBES; i++) {
		__u32 slot = (start + i) % shunt_reader_slots;
		struct shunt_reader_view *v = bpf_map_lookup_elem(&shunt_rdv_v1, &slot);
		if (v && !v->owner && __sync_val_compare_and_swap(&v->owner, 0, cookie) == 0)
			return slot;
	}
	return SHUNT_NO_SLOT;
}

/* Gives `slot` back if `owner` still owns it. */
static __always_inline void slot_give_back(__u32 slot, __u64 owner)
{
	struct shunt_reader_view *v = slot_view(slot, owner);
	if (v)
		__sync_val_compare_and_swap(&v->owner, owner, 0);
}

/* The socket's own reader view (none once it left the sockhash). */
static __always_inline struct shunt_reader_view *own_view(const struct shunt_sock_state *st)
{
	return st->slot == SHUNT_NO_SLOT ? NULL : slot_view(st->slot, st->cookie);
}

/* Takes a socket's reader entry out (it leaves the sockhash): its slot is given back. `owner`: the
 * socket's cookie where the caller is that socket (0: the peer's, whoever owns it); an entry of
 * another socket under that key is left alone. */
static __always_inline int reader_remove(const struct shunt_sock_key *key, __u64 owner)
{
	struct shunt_reader_ref *r = bpf_map_lookup_elem(&shunt_rdr_v2, key);
	if (!r)
		return -1;
	__u32 slot = r->slot;
	__u64 cookie = r->cookie;
	if (owner && cookie != owner)
		return -1;
	/* Only the one that deleted the entry gives its slot back (a deleted entry may be reused at
	 * once: what was read above may then be another socket's). */
	int err = bpf_map_delete_elem(&shunt_rdr_v2, key);
	if (err == 0)
		slot_give_back(slot, cookie);
	return err;
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_ctl_v1 SEC(".maps");

static __always_inline __u32 ctl_flags(void)
{
	__u32 k = 0;
	__u32 *v = bpf_map_lookup_elem(&shunt_ctl_v1, &k);
	return v ? *v : 0;
}

/* Uninstall in progress: sockets leave the sockhash once nothing is queued for them. */
static __always_inline int draining(void)
{
	return ctl_flags() & SHUNT_CTL_DRAIN;
}

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct shunt_listener_key);
	__type(value, struct shunt_listener);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_lsn_v1 SEC(".maps");

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
	if (shunt_map_update(&shunt_sock_v1, &k, &one, BPF_NOEXIST) == -EEXIST) {
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
	int err = shunt_map_update(&shunt_msg_v1, &k, &init, BPF_NOEXIST);
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
		struct kernfs_node *kn = cg->kn;
		if (!kn)
			return NULL;
		__u64 id = kn->id;
		const struct shunt_pod *pod = bpf_map_lookup_elem(&shunt_pods_v1, &id);
		if (pod)
			return pod;
		struct cgroup_subsys_state *parent = cg->self.parent;
		if (!parent)
			return NULL;
		cg = parent->cgroup;
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

/* L4 metrics of every TCP connection of a meshed pod (docs/metrics.md): its state from connect()
 * (or establishment, accepted) on, an event when it is established and one when it ends, with
 * TCP's own counters (bytes acknowledged and received, retransmissions, smoothed RTT) and the
 * bytes the fast path moved around TCP. Loopback connections (inside one pod) are not mesh
 * traffic: not measured. */

/* The connection's addresses into an event, read from the socket itself (BTF: the context's
 * fields cannot be read through a computed offset); -1 for a loopback or non-IP one. */
static __always_inline int l4_addresses(struct tcp_sock *tp, struct shunt_l4_event *e)
{
	const struct sock_common *c = &tp->inet_conn.icsk_inet.sk.__sk_common;
	__u32 local[4];
	if (c->skc_family == SHUNT_AF_INET) {
		shunt_ip_from_v4(e->remote_ip, c->skc_daddr);
		shunt_ip_from_v4(local, c->skc_rcv_saddr);
	} else if (c->skc_family == SHUNT_AF_INET6) {
		for (int i = 0; i < 4; i++) {
			e->remote_ip[i] = c->skc_v6_daddr.in6_u.u6_addr32[i];
			local[i] = c->skc_v6_rcv_saddr.in6_u.u6_addr32[i];
		}
	} else {
		return -1;
	}
	if (shunt_ip_is_loopback(e->remote_ip) || shunt_ip_is_loopback(local))
		return -1;
	e->local_port = c->skc_num;
	e->remote_port = SHUNT_NTOHS(c->skc_dport);
	return 0;
}

/* The connection's counters into `e`: payload bytes each way (TCP's and the fast path's),
 * its duration, smoothed RTT and retransmissions. */
static __always_inline void l4_counters(struct tcp_sock *tp, const struct shunt_l4_conn *c,
					struct shunt_l4_event *e, __u64 now)
{
	e->duration_ns = c->start_ns && now > c->start_ns ? now - c->start_ns : 0;
	/* TCP's counters include the sequence numbers a SYN and a FIN take: an active socket's SYN
	 * is in its bytes acknowledged, so is its FIN once acknowledged; the peer's FIN (SOCK_DONE)
	 * is in its bytes received. Payload only here. */
	__u64 acked = tp->bytes_acked, got = tp->bytes_received;
	if (!(c->flags & SHUNT_L4_PASSIVE) && acked)
		acked--;
	if ((c->flags & SHUNT_L4_FIN_SENT) && tp->snd_una == tp->write_seq && acked)
		acked--;
	if ((tp->inet_conn.icsk_inet.sk.__sk_common.skc_flags &
	     (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE))) &&
	    got)
		got--;
	/* Redirected into it: its reader view counts them while it is in the sockhash. */
	__u64 spliced_in = c->spliced_received;
	struct shunt_sock_state *st = bpf_sk_storage_get(&shunt_skst_v3, tp, 0, 0);
	if (st) {
		const struct shunt_reader_view *v = own_view(st);
		if (v && v->delivered > spliced_in)
			spliced_in = v->delivered;
	}
	e->bytes_sent = acked + c->spliced_sent;
	e->bytes_received = got + spliced_in;
	e->srtt_us = tp->srtt_us >> 3;
	e->retrans = tp->total_retrans;
}

/* Sends the connection's event of `kind`; counted where the ring is full. */
static __always_inline void l4_send(struct tcp_sock *tp, struct shunt_l4_conn *c, __u8 kind,
				    __u64 now)
{
	struct shunt_l4_event *e = bpf_ringbuf_reserve(&shunt_l4ev_v1, sizeof(*e), 0);
	if (!e) {
		count_sock_event(c->ev.workload_id, SHUNT_SOCK_L4_LOST);
		return;
	}
	*e = c->ev;
	e->kind = kind;
	e->flags = (__u8)c->flags;
	if (kind != SHUNT_L4_EV_OPENED)
		l4_counters(tp, c, e, now);
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* A meshed pod's socket whose connection is measured from now: its state, and its state changes
 * seen from now on (its end). */
static __always_inline struct shunt_l4_conn *l4_start(struct bpf_sock_ops *skops,
						      const struct shunt_pod *pod, __u32 flags,
						      __u64 now)
{
	struct bpf_sock *bsk = skops->sk;
	if (!bsk)
		return NULL;
	struct shunt_l4_conn *c =
		bpf_sk_storage_get(&shunt_l4_v1, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c) {
		count_sock_event(pod->workload_id, SHUNT_SOCK_L4_NO_STORAGE);
		return NULL;
	}
	__builtin_memset(&c->ev, 0, sizeof(c->ev));
	c->ev.workload_id = pod->workload_id;
	c->ev.cookie = bpf_get_socket_cookie(skops);
	c->start_ns = now;
	c->spliced_sent = 0;
	c->spliced_received = 0;
	c->flags = flags;
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	return c;
}

/* connect() of a meshed pod's socket: the start of its setup time. */
static __always_inline void l4_on_connect(struct bpf_sock_ops *skops)
{
	struct bpf_sock *bsk = skops->sk;
	if (!bsk || !shunt_l4_metrics)
		return;
	const struct shunt_pod *pod = pod_of_sock(bsk);
	if (!pod || !(pod->flags & SHUNT_POD_MESHED))
		return;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	struct shunt_l4_event probe = {};
	if (!tp || l4_addresses(tp, &probe))
		return; /* loopback */
	l4_start(skops, pod, 0, bpf_ktime_get_ns());
}

static __always_inline void l4_on_established(struct bpf_sock_ops *skops,
					      const struct shunt_pod *pod)
{
	struct bpf_sock *bsk = skops->sk;
	if (!bsk || !shunt_l4_metrics)
		return;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return;
	__u64 now = bpf_ktime_get_ns();
	struct shunt_l4_conn *c;
	if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
		struct shunt_l4_event probe = {};
		if (l4_addresses(tp, &probe))
			return; /* loopback */
		/* No setup time: what a server's socket knows of its handshake is the SYN-ACK's
		 * round trip from TCP timestamps, in whole milliseconds. */
		c = l4_start(skops, pod, SHUNT_L4_PASSIVE, now);
		if (!c)
			return;
	} else {
		c = bpf_sk_storage_get(&shunt_l4_v1, bsk, 0, 0);
		if (!c)
			return; /* loopback, or connected before the agent came */
		__u64 setup = now > c->start_ns ? now - c->start_ns : 0;
		c->ev.setup_us = setup / 1000 > 0xffffffffULL ? 0xffffffffu : (__u32)(setup / 1000);
		c->start_ns = now;
	}
	if (l4_addresses(tp, &c->ev))
		return;
	/* The Service address connect() named, if the socket load balancer sent this very
	 * connection to its backend (not an earlier connect() of the socket that failed). */
	const struct shunt_lb_sock *lb =
		skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
			? bpf_sk_storage_get(&shunt_lbsk_v1, bsk, 0, 0)
			: NULL;
	if (lb && lb->backend_port == c->ev.remote_port && lb->backend[0] == c->ev.remote_ip[0] &&
	    lb->backend[1] == c->ev.remote_ip[1] && lb->backend[2] == c->ev.remote_ip[2] &&
	    lb->backend[3] == c->ev.remote_ip[3]) {
		for (int i = 0; i < 4; i++)
			c->ev.vip[i] = lb->vip[i];
		c->ev.vip_port = lb->vip_port;
		c->flags |= SHUNT_L4_VIP;
	}
	c->flags |= SHUNT_L4_OPENED;
	l4_send(tp, c, SHUNT_L4_EV_OPENED, now);
}

/* Its FIN going out, and its end (TCP_CLOSE): a connection that was established, or a
 * connect() that never was. */
static __always_inline void l4_on_state_change(struct bpf_sock_ops *skops)
{
	struct bpf_sock *bsk = skops->sk;
	if (!bsk || !shunt_l4_metrics)
		return;
	struct shunt_l4_conn *c = bpf_sk_storage_get(&shunt_l4_v1, bsk, 0, 0);
	if (!c || (c->flags & SHUNT_L4_CLOSED))
		return;
	/* Its FIN goes out as it enters FIN_WAIT1 or LAST_ACK (a close() that resets does not). */
	if (skops->args[1] == TCP_FIN_WAIT1_STATE || skops->args[1] == TCP_LAST_ACK_STATE) {
		c->flags |= SHUNT_L4_FIN_SENT;
		return;
	}
	if (skops->args[1] != TCP_CLOSE_STATE)
		return;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return;
	c->flags |= SHUNT_L4_CLOSED;
	if (!(c->flags & SHUNT_L4_OPENED)) {
		/* Never established: its addresses were not taken yet. */
		if (l4_addresses(tp, &c->ev))
			return;
		l4_send(tp, c, SHUNT_L4_EV_FAILED, bpf_ktime_get_ns());
		return;
	}
	l4_send(tp, c, SHUNT_L4_EV_CLOSED, bpf_ktime_get_ns());
}

/* Before a socket's reader view goes (it leaves the sockhash): the bytes redirected into it. */
static __always_inline void l4_keep_delivered(struct bpf_sock *bsk, const struct shunt_sock_state *st)
{
	const struct shunt_reader_view *v = own_view(st);
	if (!shunt_l4_metrics || !v || !v->delivered)
		return;
	struct shunt_l4_conn *c = bpf_sk_storage_get(&shunt_l4_v1, bsk, 0, 0);
	if (c)
		c->spliced_received = v->delivered;
}

/* A send of this socket that the fast path moved into its peer. */
static __always_inline void l4_spliced(struct bpf_sock *bsk, __u32 size)
{
	if (!shunt_l4_metrics)
		return;
	struct shunt_l4_conn *c = bpf_sk_storage_get(&shunt_l4_v1, bsk, 0, 0);
	if (c)
		c->spliced_sent += size; /* sends of one socket are serialised by its lock */
}



/* The file flags of the socket's file; blocking (0) when it has none (a kernel socket). */
static __always_inline int sock_nonblocking(struct sock *sk)
{
	struct socket *so = sk->sk_socket;
	if (!so)
		return 0;
	struct file *f = so->file;
	if (!f)
		return 0;
	return (f->f_flags & SHUNT_O_NONBLOCK) != 0;
}

/* Whether the socket's sockmap queue (psock ingress_msg) is empty. */
static __always_inline int psock_queue_empty(struct sock *sk)
{
	unsigned long ud = (unsigned long)sk->sk_user_data;
	struct sk_psock *ps = (struct sk_psock *)(ud & SHUNT_SK_USER_DATA_PTRMASK);
	if (!ps)
		return 1;
	unsigned long head = (unsigned long)ps + bpf_core_field_offset(struct sk_psock, ingress_msg);
	struct list_head *next = NULL;
	bpf_probe_read_kernel(&next, sizeof(next), (void *)head);
	return (unsigned long)next == head;
}

static __always_inline void class_key(struct shunt_listener_key *lk, __u64 netns, __u16 port,
				      __u16 kind)
{
	lk->netns = netns;
	lk->port = port;
	lk->kind = kind;
	lk->pad[0] = lk->pad[1] = 0;
}

/* The reader class of one of our sockets. */
static __always_inline void class_of(struct shunt_listener_key *lk,
				     const struct shunt_sock_state *st)
{
	if (st->flags & SHUNT_SKST_PASSIVE)
		class_key(lk, st->netns_cookie, st->key.local_port, SHUNT_CLASS_LISTENER);
	else
		class_key(lk, st->netns_cookie, st->key.remote_port, SHUNT_CLASS_CLIENT);
}

static __always_inline void on_listen(struct bpf_sock_ops *skops)
{
	struct bpf_sock *bsk = skops->sk;
	if (!bsk)
		return;
	const struct shunt_pod *pod = pod_of_sock(bsk);
	if (!pod || !(pod->flags & SHUNT_POD_MESHED))
		return;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return;
	struct shunt_listener_key lk;
	class_key(&lk, bpf_get_netns_cookie(skops), (__u16)skops->local_port, SHUNT_CLASS_LISTENER);
	struct shunt_listener v = {};
	v.blocking = !sock_nonblocking((struct sock *)tp);
	bpf_map_update_elem(&shunt_lsn_v1, &lk, &v, BPF_ANY);
}

/* A socket of the class closed without reading. */
static __always_inline void learn_quiet(const struct shunt_sock_state *st)
{
	struct shunt_listener_key lk;
	class_of(&lk, st);
	struct shunt_listener *l = bpf_map_lookup_elem(&shunt_lsn_v1, &lk);
	if (l) {
		l->learned_quiet = 1;
		return;
	}
	struct shunt_listener nl = {.learned_quiet = 1};
	bpf_map_update_elem(&shunt_lsn_v1, &lk, &nl, BPF_NOEXIST);
}

/* Whether the socket's reads are known to be unsafe to splice (1, counted why), known to be safe
 * from what its class did before (2), not known yet (0), or not known but its class closed
 * sockets without reading before (3: a sender; its reads are judged when they come). */
static __always_inline int judge_socket(struct bpf_sock_ops *skops, struct sock *sk, __u32 self,
					const struct shunt_listener_key *lk)
{
	if (sk->sk_rcvlowat > 1) {
		count_sock_event(self, SHUNT_SOCK_SKIP_OPTIONS);
		return 1;
	}
	struct shunt_listener *l = bpf_map_lookup_elem(&shunt_lsn_v1, lk);
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		if (!sock_nonblocking(sk)) {
			count_sock_event(self, SHUNT_SOCK_SKIP_BLOCKING);
			return 1;
		}
	} else if (!l || l->blocking) {
		/* Accepted: it has no file yet; its listener says how the server reads. */
		count_sock_event(self, SHUNT_SOCK_SKIP_BLOCKING);
		return 1;
	}
	if (!l)
		return 0;
	if (l->learned_unsafe) {
		count_sock_event(self, SHUNT_SOCK_SKIP_LEARNED);
		return 1;
	}
	return l->learned_safe ? 2 : l->learned_quiet ? 3 : 0;
}

/* Takes a peer that entered the sockhash back out before anything could be redirected into it
 * (its own peer, establishing now, is not spliced): it then is a plain TCP socket. Its state
 * learns it from its reader view, gone with it (in_sockhash). */
static __always_inline void evict_peer(const struct shunt_sock_key *peer, __u32 peer_workload)
{
	if (reader_remove(peer, 0) == 0 &&
	    bpf_map_delete_elem(&shunt_sk_v1, peer) == 0)
		count_sock_event(peer_workload, SHUNT_SOCK_EVICTED);
}

/* Where only pairs are spliced: a server-side socket that cannot enter takes its client out. */
static __always_inline void drop_lone_peer(struct bpf_sock_ops *skops,
					   const struct shunt_sock_key *key, __u32 peer)
{
	if (!shunt_unlearned_plain || skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return;
	struct shunt_sock_key pk = {};
	shunt_sock_key_peer(key, &pk);
	evict_peer(&pk, peer);
}

/* Whether the kernel took a socket out of every sockmap: its psock, which sk_user_data points to,
 * lives as long as a map holds it (sock_ops may look a sockhash up but not release what it finds).
 * A socket that another program's sockmap holds too reads as still in: counted at TCP_CLOSE. */
static __always_inline int unlinked(struct bpf_sock *bsk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 0;
	return BPF_CORE_READ(tp, inet_conn.icsk_inet.sk.sk_user_data) == NULL;
}

/* Whether a socket of ours is still in the sockhash: where first connections stay plain, the
 * peer that established second may have taken it out, with its reader view (evict_peer). */
static __always_inline int in_sockhash(struct shunt_sock_state *st)
{
	if (!st->in_map)
		return 0;
	if (shunt_protect && shunt_unlearned_plain &&
	    !bpf_map_lookup_elem(&shunt_rdr_v2, &st->key)) {
		st->in_map = 0;
		return 0;
	}
	return 1;
}

/* A meshed socket's state as it starts: not in the sockhash, no reader slot, its peer's not known. */
static __always_inline void sock_state_init(struct shunt_sock_state *st, struct bpf_sock_ops *skops,
					    __u32 self, __u32 peer, __u8 mode, __u8 reader,
					    __u64 netns, const struct shunt_sock_key *key)
{
	st->src_workload = self;
	st->dst_workload = peer;
	st->mode = mode;
	st->in_map = 0;
	st->reader = reader;
	st->flags = (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB ? SHUNT_SKST_PASSIVE : 0) |
		    (reader == SHUNT_READER_SAFE ? SHUNT_SKST_EVER_SAFE : 0);
	st->netns_cookie = netns;
	st->key = *key;
	st->slot = SHUNT_NO_SLOT;
	st->cookie = bpf_get_socket_cookie(skops);
	st->peer_cookie = 0;
	st->peer_slot = SHUNT_NO_SLOT;
}

/* A socket kept out of the sockhash whose reads are still to be seen (sock_recv_length sees
 * every socket's), so that its class is learned. */
static __always_inline void plain_for_life(struct bpf_sock_ops *skops, __u32 self, __u32 peer,
					   __u64 netns, const struct shunt_sock_key *key)
{
	struct bpf_sock *bsk = skops->sk;
	if (!bsk)
		return;
	struct shunt_sock_state *st =
		bpf_sk_storage_get(&shunt_skst_v3, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return;
	/* Its close tells a sender class (one that never reads) from one not seen yet. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	sock_state_init(st, skops, self, peer, SHUNT_SOCK_PLAIN, SHUNT_READER_UNKNOWN, netns, key);
}

static __always_inline void on_established(struct bpf_sock_ops *skops, const struct shunt_pod *pod)
{
	struct bpf_sock *bsk = skops->sk;
	if (!bsk)
		return;
	if (draining())
		return;
	__u32 self = pod->workload_id;

	struct shunt_sock_tuple t = {};
	SHUNT_TUPLE_FROM_CTX(skops, &t);
	struct shunt_sock_key key = {};
	__u64 netns = bpf_get_netns_cookie(skops);
	if (shunt_sock_key_build(&t, netns, &key))
		return;

	__u32 peer;
	if (key.netns) {
		peer = self; /* loopback: the peer is in this pod (the key holds its netns) */
	} else {
		/* Keys of other addresses are node-wide: a socket may only have its own pod's. A pod
		 * that puts other pods' IPs on a namespace of its own (user namespaces) and connects
		 * them would otherwise build their keys, and take their place (or evict them). */
		struct shunt_ip_key ip = {};
		for (int i = 0; i < 4; i++)
			ip.addr[i] = key.local_ip[i];
		__u32 *own = bpf_map_lookup_elem(&shunt_ep_v1, &ip);
		if (!own) {
			count_sock_event(self, SHUNT_SOCK_PEER_NOT_LOCAL); /* not a known pod address */
			return;
		}
		if (*own != self) {
			count_sock_event(self, SHUNT_SOCK_SKIP_FOREIGN);
			return;
		}
		for (int i = 0; i < 4; i++)
			ip.addr[i] = key.remote_ip[i];
		__u32 *wl = bpf_map_lookup_elem(&shunt_ep_v1, &ip);
		if (!wl) {
			count_sock_event(self, SHUNT_SOCK_PEER_NOT_LOCAL);
			return; /* the peer is remote or unmeshed: normal path, no per-send cost */
		}
		peer = *wl;
	}

	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return;
	struct sock *sk = (struct sock *)tp;
	struct shunt_listener_key lk;
	if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		class_key(&lk, netns, key.local_port, SHUNT_CLASS_LISTENER);
	else
		class_key(&lk, netns, key.remote_port, SHUNT_CLASS_CLIENT);
	int judged = 0;
	if (shunt_protect) {
		judged = judge_socket(skops, sk, self, &lk);
		if (shunt_unlearned_plain && judged != 1) {
			/* The client established first: it entered only if its class is learned. */
			struct shunt_sock_key pk = {};
			shunt_sock_key_peer(&key, &pk);
			int peer_in = bpf_map_lookup_elem(&shunt_rdr_v2, &pk) != 0;
			if (judged == 0 ||
			    (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && !peer_in)) {
				if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB && peer_in)
					evict_peer(&pk, peer);
				plain_for_life(skops, self, peer, netns, &key);
				count_sock_event(self, SHUNT_SOCK_SKIP_UNLEARNED);
				return;
			}
		}
		if (judged == 1) {
			drop_lone_peer(skops, &key, peer);
			return;
		}
	}
	/* A socket whose class read safely before is read the same way: spliced from its first
	 * byte (a stream never pauses for the order check to pass). */
	__u8 reader = judged == 2 ? SHUNT_READER_SAFE : SHUNT_READER_UNKNOWN;

	struct shunt_sock_state *st =
		bpf_sk_storage_get(&shunt_skst_v3, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count_sock_event(self, SHUNT_SOCK_INSERT_ERROR);
		drop_lone_peer(skops, &key, peer);
		return;
	}
	sock_state_init(st, skops, self, peer, SHUNT_SOCK_UNDECIDED, reader, netns, &key);

	if (shunt_protect) {
		__u32 slot = slot_take(st->cookie);
		struct shunt_reader_view *v = slot_view(slot, st->cookie);
		if (!v) {
			count_sock_event(self, SHUNT_SOCK_SLOTS_FULL);
			st->mode = SHUNT_SOCK_PLAIN;
			drop_lone_peer(skops, &key, peer);
			return;
		}
		/* Set before the reference below makes it visible to the peer. */
		v->copied_seq = tp->copied_seq;
		/* The bound while it reads (shunt_sk_msg: less once it stops). */
		v->rcvbuf = shunt_max_queued;
		v->queued = 0;
		v->delivered = 0;
		v->reader = reader;
		v->drained = 0;
		v->last_read = 0;
		v->sk_rcvbuf = (__u32)tp->inet_conn.icsk_inet.sk.sk_rcvbuf;
		st->slot = slot;
		struct shunt_reader_ref ref = {.cookie = st->cookie, .slot = slot};
		/* Never over another socket's entry (nor its peer taken out for it). */
		int e = shunt_map_update(&shunt_rdr_v2, &key, &ref, BPF_NOEXIST);
		if (e) {
			count_sock_event(self, e == -EEXIST			? SHUNT_SOCK_INSERT_COLLISION
					       : e == -E2BIG || e == -ENOMEM ? SHUNT_SOCK_INSERT_FULL
									     : SHUNT_SOCK_INSERT_ERROR);
			st->mode = SHUNT_SOCK_PLAIN;
			slot_give_back(slot, st->cookie);
			st->slot = SHUNT_NO_SLOT;
			if (e != -EEXIST)
				drop_lone_peer(skops, &key, peer);
			return;
		}
	}

	/* Never displaces a socket already there: its queued bytes would go with its entry. */
	int err = (int)bpf_sock_hash_update(skops, &shunt_sk_v1, &key, BPF_NOEXIST);
	if (err) {
		count_sock_event(self, err == -EEXIST			? SHUNT_SOCK_INSERT_COLLISION
				       : err == -E2BIG || err == -ENOMEM ? SHUNT_SOCK_INSERT_FULL
									 : SHUNT_SOCK_INSERT_ERROR);
		st->mode = SHUNT_SOCK_PLAIN;
		if (shunt_protect)
			reader_remove(&key, st->cookie); /* its own: inserted above */
		if (err != -EEXIST)
			drop_lone_peer(skops, &key, peer);
		return;
	}
	st->in_map = 1;
	count_sock_event(self, SHUNT_SOCK_INSERTED);
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* Whether a socket of ours reads non-blocking: its file says so, or, for an accepted socket not
 * accepted yet (no file), its listener did at listen(). */
static __always_inline int reads_nonblocking(struct bpf_sock *bsk,
					     const struct shunt_sock_state *st)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 0;
	struct sock *sk = (struct sock *)tp;
	if (sk->sk_socket && sk->sk_socket->file)
		return sock_nonblocking(sk);
	if (!(st->flags & SHUNT_SKST_PASSIVE))
		return 0;
	struct shunt_listener_key lk;
	class_of(&lk, st);
	struct shunt_listener *l = bpf_map_lookup_elem(&shunt_lsn_v1, &lk);
	return l && !l->blocking;
}

static __always_inline void on_state_change(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return;
	struct shunt_sock_state *st = bpf_sk_storage_get(&shunt_skst_v3, sk, 0, 0);
	if (!st)
		return;
	/* A sender: it sent data and received none, and never read (not a port probe, nor a pooled
	 * connection closed unused). The counters include a SYN and a FIN (one each). */
	if (shunt_unlearned_plain && skops->args[1] == TCP_CLOSE_STATE &&
	    st->reader == SHUNT_READER_UNKNOWN && skops->bytes_acked > 2 &&
	    skops->bytes_received <= 1)
		learn_quiet(st);
	if (skops->args[1] == TCP_CLOSE_STATE) {
		if (in_sockhash(st)) {
			st->in_map = 0; /* the kernel unlinks a closed socket from the sockhash itself */
			l4_keep_delivered(sk, st);
			reader_remove(&st->key, st->cookie);
			count_sock_event(st->src_workload, SHUNT_SOCK_REMOVED);
		}
		return;
	}
	if (!in_sockhash(st))
		return;
	/* close() unlinks a socket from the sockhash (sock_map_close) before TCP's close runs; its
	 * state change then (FIN_WAIT1, LAST_ACK) finds it gone: removed now, not at TCP_CLOSE,
	 * which a FIN_WAIT2 peer that keeps its end open puts off for up to tcp_fin_timeout, so that
	 * shunt_sockhash_sockets counts what the sockhash holds. shutdown() leaves it in. */
	if (unlinked(sk)) {
		st->in_map = 0;
		l4_keep_delivered(sk, st);
		reader_remove(&st->key, st->cookie);
		count_sock_event(st->src_workload, SHUNT_SOCK_REMOVED);
		return;
	}
	/* A socket that was never read safely has nothing queued by redirects (none are made into
	 * a reader not seen to be safe): take it out now if its file is blocking, before a blocking
	 * read meets the wake-up of this state change (e.g. the ACK of its own FIN after
	 * shutdown(SHUT_WR)). It then is a plain TCP socket; its peer's later sends find no reader
	 * and take the normal path. A non-blocking one stays, so that its first reads can be seen
	 * (where only reads of sockhash members are, fentry on tcp_bpf_recvmsg, that is the only
	 * way to learn a class that shuts down before it reads). */
	if (shunt_protect && !(st->flags & SHUNT_SKST_EVER_SAFE) &&
	    skops->args[1] != TCP_ESTABLISHED_STATE /* an accepted socket's, after its callback */ &&
	    !reads_nonblocking(sk, st)) {
		l4_keep_delivered(sk, st);
		reader_remove(&st->key, st->cookie);
		if (bpf_map_delete_elem(&shunt_sk_v1, &st->key) == 0) {
			st->in_map = 0;
			count_sock_event(st->src_workload, SHUNT_SOCK_EVICTED);
		}
	}
}

SEC("sockops")
int shunt_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		if (shunt_protect)
			on_listen(skops);
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		l4_on_connect(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		struct bpf_sock *bsk = skops->sk;
		if (!bsk)
			break;
		const struct shunt_pod *pod = pod_of_sock(bsk);
		if (!pod || !(pod->flags & SHUNT_POD_MESHED))
			break; /* not a meshed local pod: untouched */
		l4_on_established(skops, pod);
		on_established(skops, pod);
		break;
	}
	case BPF_SOCK_OPS_STATE_CB:
		/* First: its reader view, gone once it leaves the sockhash, holds its spliced bytes. */
		l4_on_state_change(skops);
		on_state_change(skops);
		break;
	}
	return 1;
}

/* Whether a receiver has read within the last SHUNT_READING_JIFFIES. */
static __always_inline int reading(const struct shunt_reader_view *v)
{
	return v->last_read && (__u32)bpf_jiffies64() - v->last_read <= SHUNT_READING_JIFFIES;
}

/* TCP's own memory pressure flag (sk_prot->memory_pressure): past tcp_mem[1], where TCP starts to
 * shrink buffers, queues grow no further here either. */
static __always_inline int tcp_memory_pressure(struct tcp_sock *tp)
{
	struct proto *prot = tp->inet_conn.icsk_inet.sk.__sk_common.skc_prot;
	if (!prot)
		return 1;
	unsigned long *flag = prot->memory_pressure;
	unsigned long pressure = 0;
	if (flag)
		bpf_probe_read_kernel(&pressure, sizeof(pressure), flag);
	return pressure != 0;
}

/* The unprotected fast path (shunt_protect == 0): a socket whose first send found no peer in the
 * sockhash has put bytes into the TCP stream; redirecting a later send could overtake them, so it
 * stays on the normal path. */
static __always_inline int sk_msg_unprotected(struct sk_msg_md *msg, struct shunt_sock_state *st,
					      const struct shunt_sock_key *peer, __u32 size)
{
	if (st->mode == SHUNT_SOCK_PLAIN) {
		count_msg(st, SHUNT_MSG_FALLBACK_PLAIN_SOCKET, size);
		return SK_PASS;
	}
	/* On a failed lookup the helper leaves no redirect target; returning SK_PASS then sends the
	 * message the normal way. */
	if (bpf_msg_redirect_hash(msg, &shunt_sk_v1, (void *)peer, BPF_F_INGRESS) == SK_PASS) {
		st->mode = SHUNT_SOCK_REDIRECT;
		count_msg(st, SHUNT_MSG_REDIRECTED, size);
		l4_spliced(msg->sk, size);
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

/* The peer's reader view: through the slot remembered from an earlier send while the peer still
 * owns it, else found by the peer's key (and remembered). */
static __always_inline struct shunt_reader_view *peer_view(struct shunt_sock_state *st,
							   const struct shunt_sock_key *peer)
{
	struct shunt_reader_view *v = slot_view(st->peer_slot, st->peer_cookie);
	if (v)
		return v;
	struct shunt_reader_ref *r = bpf_map_lookup_elem(&shunt_rdr_v2, peer);
	if (!r)
		return NULL;
	__u32 slot = r->slot;
	__u64 owner = r->cookie;
	v = slot_view(slot, owner);
	if (v) {
		st->peer_slot = slot;
		st->peer_cookie = owner;
	}
	return v;
}

SEC("sk_msg")
int shunt_sk_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	if (!sk)
		return SK_PASS;
	struct shunt_sock_state *st = bpf_sk_storage_get(&shunt_skst_v3, sk, 0, 0);
	if (!st)
		return SK_PASS; /* not ours: never touched */
	__u32 size = msg->size;

	struct shunt_sock_tuple t = {};
	SHUNT_TUPLE_FROM_CTX(msg, &t);
	struct shunt_sock_key key = {}, peer = {};
	if (shunt_sock_key_build(&t, bpf_get_netns_cookie(msg), &key)) {
		st->mode = SHUNT_SOCK_PLAIN;
		count_msg(st, SHUNT_MSG_FALLBACK_NO_STATE, size);
		return SK_PASS;
	}
	shunt_sock_key_peer(&key, &peer);
	if (draining()) {
		count_msg(st, SHUNT_MSG_FALLBACK_DRAINING, size);
		return SK_PASS;
	}
	if (!shunt_protect)
		return sk_msg_unprotected(msg, st, &peer, size);

	/* Every fallback below is order-safe: bytes already redirected sit in the peer's sockmap
	 * queue, which its reads drain before the TCP receive queue. */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp) {
		count_msg(st, SHUNT_MSG_FALLBACK_NO_STATE, size);
		return SK_PASS;
	}
	if (tp->inet_conn.icsk_inet.sk.__sk_common.skc_flags &
	    (1UL << bpf_core_enum_value(enum sock_flags, SOCK_ZEROCOPY))) {
		count_msg(st, SHUNT_MSG_FALLBACK_ZEROCOPY, size);
		return SK_PASS;
	}
	struct shunt_reader_view *v = peer_view(st, &peer);
	if (!v) {
		count_msg(st, st->mode == SHUNT_SOCK_REDIRECT ? SHUNT_MSG_FALLBACK_PEER_GONE
							      : SHUNT_MSG_FALLBACK_PEER_NOT_READY,
			  size);
		return SK_PASS;
	}
	if (v->reader != SHUNT_READER_SAFE) {
		count_msg(st, v->reader == SHUNT_READER_UNKNOWN ? SHUNT_MSG_FALLBACK_PEER_UNREAD
								 : SHUNT_MSG_FALLBACK_PEER_UNSAFE,
			  size);
		return SK_PASS;
	}
	/* Bytes this socket sent through the stack must all have been read by the peer first. */
	if (tp->write_seq != v->copied_seq) {
		count_msg(st, SHUNT_MSG_FALLBACK_ORDER, size);
		return SK_PASS;
	}
	__u64 after = v->queued + size;
	/* Under TCP memory pressure no queue grows past a few messages: charging the receiver at the
	 * hard limit would fail the send (ENOMEM), where TCP would make the sender wait. */
	if ((after > shunt_max_queued_idle && (after > v->rcvbuf || !reading(v))) ||
	    (after > SHUNT_QUEUED_FREE && tcp_memory_pressure(tp)) ||
	    (shunt_rcvbuf_bound &&
	     after > (v->sk_rcvbuf ? v->sk_rcvbuf : shunt_rcvbuf_default) / 4)) {
		count_msg(st, SHUNT_MSG_FALLBACK_PEER_BACKLOG, size);
		return SK_PASS;
	}
	__sync_fetch_and_add(&v->queued, size);
	if (bpf_msg_redirect_hash(msg, &shunt_sk_v1, &peer, BPF_F_INGRESS) == SK_PASS) {
		st->mode = SHUNT_SOCK_REDIRECT;
		count_msg(st, SHUNT_MSG_REDIRECTED, size);
		v->delivered += size; /* only this socket sends into its peer */
		l4_spliced(sk, size);
		return SK_PASS;
	}
	__sync_fetch_and_sub(&v->queued, size);
	count_msg(st, SHUNT_MSG_FALLBACK_PEER_GONE, size);
	return SK_PASS;
}

/* Remembers how a socket of its class read: later sockets of the class start from it. */
static __always_inline void learn_class(const struct shunt_sock_state *st, int safe)
{
	struct shunt_listener_key lk;
	class_of(&lk, st);
	struct shunt_listener *l = bpf_map_lookup_elem(&shunt_lsn_v1, &lk);
	if (l) {
		if (safe)
			l->learned_safe = 1;
		else
			l->learned_unsafe = 1;
		return;
	}
	struct shunt_listener nl = {.learned_safe = safe, .learned_unsafe = !safe};
	bpf_map_update_elem(&shunt_lsn_v1, &lk, &nl, BPF_NOEXIST);
}

/* A socket of ours turned out to be read in a way the sockmap receive path does not serve like
 * TCP: no more redirects into it; its server is remembered; counted. */
static __always_inline void reader_unsafe(struct sock *sk, struct shunt_sock_state *st, __u32 event)
{
	if (st->reader == SHUNT_READER_UNSAFE)
		return;
	st->reader = SHUNT_READER_UNSAFE;
	count_sock_event(st->src_workload, event);
	struct shunt_reader_view *v = own_view(st);
	if (v)
		v->reader = SHUNT_READER_UNSAFE;
	/* Too late for this socket if bytes were redirected into it and are unread, or if it reads
	 * blocking while in the sockhash (that read goes through the sockmap receive path, whose
	 * wake-ups without data end it with EAGAIN). */
	if ((event == SHUNT_SOCK_READ_BLOCKING && in_sockhash(st)) ||
	    ((st->flags & SHUNT_SKST_EVER_SAFE) && in_sockhash(st) && !psock_queue_empty(sk)))
		count_sock_event(st->src_workload, SHUNT_SOCK_UNPROTECTED);
	learn_class(st, 0);
}

/* How one read call of a socket of ours classifies its reader. Called before the read where the
 * kernel lets us trace tcp_bpf_recvmsg, else right after it (sock_recv_length). */
static __always_inline void classify_read(struct sock *sk, struct shunt_sock_state *st, int flags)
{
	if (!(flags & SHUNT_MSG_DONTWAIT) && !sock_nonblocking(sk)) {
		reader_unsafe(sk, st, SHUNT_SOCK_READ_BLOCKING);
		return;
	}
	if (sk->sk_rcvlowat > 1) {
		reader_unsafe(sk, st, SHUNT_SOCK_READ_LOWAT);
		return;
	}
	if (st->reader == SHUNT_READER_UNKNOWN) {
		st->reader = SHUNT_READER_SAFE;
		st->flags |= SHUNT_SKST_EVER_SAFE;
		struct shunt_reader_view *v = own_view(st);
		if (v)
			v->reader = SHUNT_READER_SAFE;
		learn_class(st, 1);
	}
}

/* After a read that returned `ret` bytes: how far the TCP stream was read (the order check of the
 * peer's sk_msg), and how many bytes the read took from the sockmap queue (the rest came from the
 * TCP queue, as copied_seq tells), off the count of queued bytes; an empty queue resets it. */
static __always_inline void after_read(struct sock *sk, struct shunt_sock_state *st, long ret,
				       int flags)
{
	struct shunt_reader_view *v = own_view(st);
	if (!v)
		return;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return;
	__u32 cs = tp->copied_seq;
	__u32 from_tcp = cs - v->copied_seq;
	/* Written only when changed: the view's cache line is read by the sender's every send. */
	if (from_tcp)
		v->copied_seq = cs;
	__u32 now = (__u32)bpf_jiffies64();
	if (v->last_read != now)
		v->last_read = now ? now : 1;
	/* Autotuning grows it as the application reads what TCP queued. */
	__u32 rb = (__u32)tp->inet_conn.icsk_inet.sk.sk_rcvbuf;
	if (shunt_rcvbuf_bound && v->sk_rcvbuf != rb)
		v->sk_rcvbuf = rb;
	/* Each write below takes the line from the sender's CPU: none that changes nothing. */
	if (psock_queue_empty(sk)) {
		if (v->queued)
			v->queued = 0;
		/* Exact once the drain settled: nothing can be added to the queue any more. */
		if (!v->drained && (ctl_flags() & SHUNT_CTL_SETTLED))
			v->drained = 1;
	} else if (ret > 0 && !(flags & SHUNT_MSG_PEEK) && (__u64)ret > from_tcp) {
		__u64 from_queue = (__u64)ret - from_tcp;
		if (v->queued > from_queue)
			__sync_fetch_and_sub(&v->queued, from_queue);
		else if (v->queued)
			v->queued = 0;
	}
}

/* Variant 1: every read of a socket in the sockhash (only those go through tcp_bpf_recvmsg).
 * Classified before the read: a blocking read then waits for bytes sent through the stack. */
SEC("fentry/tcp_bpf_recvmsg")
int BPF_PROG(shunt_read_enter, struct sock *sk, struct msghdr *m, size_t len, int flags)
{
	struct shunt_sock_state *st = bpf_sk_storage_get(&shunt_skst_v3, sk, 0, 0);
	if (st && shunt_protect)
		classify_read(sk, st, flags);
	return 0;
}

SEC("fexit/tcp_bpf_recvmsg")
int BPF_PROG(shunt_read_exit, struct sock *sk, struct msghdr *m, size_t len, int flags)
{
	struct shunt_sock_state *st = bpf_sk_storage_get(&shunt_skst_v3, sk, 0, 0);
	if (!st || !shunt_protect)
		return 0;
	__u64 ret = 0; /* where the return value sits depends on the kernel's signature */
	bpf_get_func_ret(ctx, &ret);
	after_read(sk, st, (long)(int)ret, flags);
	return 0;
}

/* Variant 2, for kernels that refuse tracing programs on tcp_bpf_recvmsg: the sock_recv_length
 * tracepoint (Linux >= 6.3) after every recvmsg. The first read of a socket is never of
 * redirected bytes (none are sent to a reader not yet seen), so classifying after it is as safe. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(shunt_read_done, struct sock *sk, int ret, int flags)
{
	if (!sk)
		return 0;
	struct shunt_sock_state *st = bpf_sk_storage_get(&shunt_skst_v3, sk, 0, 0);
	if (!st || !shunt_protect)
		return 0;
	classify_read(sk, st, flags);
	after_read(sk, st, ret, flags);
	return 0;
}

/* splice(2) from a socket, seen where the kernel refuses fentry (tcp_splice_read): its reads of
 * the TCP queue end in tcp_rcv_space_adjust, in the task's splice syscall. */
#if defined(__TARGET_ARCH_x86)
#define SHUNT_NR_SPLICE 275
#define SHUNT_SYSCALL_NR(regs) BPF_CORE_READ((regs), orig_ax)
#elif defined(__TARGET_ARCH_arm64)
#define SHUNT_NR_SPLICE 76
#define SHUNT_SYSCALL_NR(regs) BPF_CORE_READ((struct user_pt_regs *)(regs), regs[8])
#endif
SEC("tp_btf/tcp_rcv_space_adjust")
int BPF_PROG(shunt_space_adjust, struct sock *sk)
{
	if (!sk)
		return 0;
#ifdef SHUNT_NR_SPLICE
	if (!shunt_protect)
		return 0;
	/* The syscall first: it is cheaper than the socket's storage, and rarely splice. */
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs || SHUNT_SYSCALL_NR(regs) != SHUNT_NR_SPLICE)
		return 0;
	struct shunt_sock_state *st = bpf_sk_storage_get(&shunt_skst_v3, sk, 0, 0);
	if (st && st->reader != SHUNT_READER_UNSAFE)
		reader_unsafe(sk, st, SHUNT_SOCK_READ_SPLICE);
#endif
	return 0;
}

/* splice(2) from a socket: it reads only the TCP receive queue. */
SEC("fentry/tcp_splice_read")
int BPF_PROG(shunt_splice_enter, struct socket *sock)
{
	struct sock *sk = sock->sk;
	if (!sk)
		return 0;
	struct shunt_sock_state *st = bpf_sk_storage_get(&shunt_skst_v3, sk, 0, 0);
	if (!st || !shunt_protect)
		return 0;
	reader_unsafe(sk, st, SHUNT_SOCK_READ_SPLICE);
	return 0;
}

/* FIONREAD (SIOCINQ) of a socket in the sockhash counts only TCP's queue on Linux 6.1
 * (tcp_ioctl) and only the sockmap queue where tcp_bpf_ioctl exists (6.18): an event loop that
 * sizes its reads with it, or waits for it to be > 0 (libevent, Java's available()), must not be
 * spliced. Seen before the ioctl runs, which counts right while nothing was redirected yet. */
#define SHUNT_SIOCINQ 0x541B
static __always_inline void on_ioctl(struct sock *sk, int cmd)
{
	if (cmd != SHUNT_SIOCINQ || !sk)
		return;
	struct shunt_sock_state *st = bpf_sk_storage_get(&shunt_skst_v3, sk, 0, 0);
	if (st && shunt_protect)
		reader_unsafe(sk, st, SHUNT_SOCK_READ_FIONREAD);
}

SEC("fentry/tcp_ioctl")
int BPF_PROG(shunt_ioctl_enter, struct sock *sk, int cmd)
{
	on_ioctl(sk, cmd);
	return 0;
}

SEC("fentry/tcp_bpf_ioctl")
int BPF_PROG(shunt_bpf_ioctl_enter, struct sock *sk, int cmd)
{
	on_ioctl(sk, cmd);
	return 0;
}
