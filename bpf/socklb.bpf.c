// SPDX-License-Identifier: GPL-2.0
/* Decisions at connect() of a meshed pod's TCP socket (cgroup connect4/connect6):
 *  1. Service VIP:port -> a backend picked from the service's weighted slot table; the connect
 *     address is rewritten, the VIP saved in sk_storage so getpeername4/6 still show it.
 *  2. Access policy on the (possibly rewritten) destination pod IP + port: a DENY policy whose
 *     source matches, or ALLOW policies targeting the peer of which none matches, fail the
 *     connect() with EPERM. Counted per source workload and policy.
 *
 * Identity is the pod cgroup: the nearest ancestor of the calling task's cgroup found in the fast
 * path's pods map (shunt_pods_v1, shared by pin name). Unknown pods, unknown VIPs and anything
 * that does not fit a map pass unmodified, counted.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "shunt/fastpath_abi.h"
#include "shunt/socklb_abi.h"

char LICENSE[] SEC("license") = "GPL";

#define SOCK_STREAM_TYPE 1
#define E2BIG 7
#define EEXIST 17
#define SYS_PROCEED 1
#define SYS_REJECT 0

/* The fast path's pods map: one definition, one pinned map (same size set by the agent). */
#include "shunt/map_ops.bpf.h"
#include "shunt/pods_map.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct shunt_svc_key);
	__type(value, struct shunt_svc);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_svc_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct shunt_slot_key);
	__type(value, struct shunt_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_slot_v1 SEC(".maps");

#include "shunt/lbsk_map.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_apsrc_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct shunt_ip_key);
	__type(value, struct shunt_ap_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_apdst_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SHUNT_AP_MAX_POLICIES);
	__type(key, __u32);
	__type(value, struct shunt_ap_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_apport_v1 SEC(".maps");

/* Policy masks of pods of this node that have no cgroup yet, by uid: copied into shunt_apsrc_v1
 * when the cgroup appears (shunt_cgroup_mkdir). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct shunt_pod_uid);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_appnd_v1 SEC(".maps");

/* The node's pod cgroup root (--cgroup-root), set by the agent before load. */
const volatile __u64 shunt_cgroup_root_id = 0;

/* Not used by the programs: the agent's record of which policy holds which bit. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SHUNT_AP_MAX_POLICIES);
	__type(key, __u32);
	__type(value, struct shunt_ap_name);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_apnam_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct shunt_lb_stats_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_lbst_v1 SEC(".maps");

/* Global (BPF-to-BPF) functions with scalar arguments are verified once, on their own, instead
 * of once per inlined call site and path: they keep connect4/6's verification cost down. */
__noinline int count_event(__u32 workload_id, __u32 event, __u32 detail)
{
	struct shunt_lb_stats_key k = { .workload_id = workload_id, .event = event, .detail = detail };
	__u64 *v = bpf_map_lookup_elem(&shunt_lbst_v1, &k);
	if (v) {
		__sync_fetch_and_add(v, 1); /* per-CPU, but connect() is preemptible: atomic */
		return 0;
	}
	__u64 one = 1;
	int err = shunt_map_update(&shunt_lbst_v1, &k, &one, BPF_NOEXIST);
	if (err == -EEXIST) {
		v = bpf_map_lookup_elem(&shunt_lbst_v1, &k); /* created meanwhile by another CPU */
		if (v)
			__sync_fetch_and_add(v, 1);
	} else if (err == -E2BIG) {
		struct shunt_lb_stats_key full = { .workload_id = workload_id,
						   .event = SHUNT_LB_STATS_FULL };
		v = bpf_map_lookup_elem(&shunt_lbst_v1, &full);
		if (v)
			__sync_fetch_and_add(v, 1);
	}
	return 0;
}

/* The calling task's pod: the first ancestor cgroup (from the root down) in the pods map. Pod
 * cgroups do not nest, so the first hit is the only one. */
static __always_inline const struct shunt_pod *current_pod(__u64 *cgroup_id)
{
	for (int level = 1; level < SHUNT_LB_MAX_CGROUP_DEPTH; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return NULL;
		const struct shunt_pod *pod = bpf_map_lookup_elem(&shunt_pods_v1, &id);
		if (pod) {
			*cgroup_id = id;
			return pod;
		}
	}
	return NULL;
}

/* Policies among `mask` whose port ranges contain `port`. */
__noinline __u64 ports_match(__u64 mask, __u16 port)
{
	__u64 out = 0;
	for (__u32 i = 0; i < SHUNT_AP_MAX_POLICIES; i++) {
		__u64 bit = 1ULL << i;
		if (!(mask & bit))
			continue;
		__u32 idx = i;
		const struct shunt_ap_ports *p = bpf_map_lookup_elem(&shunt_apport_v1, &idx);
		if (!p)
			continue;
		if (p->count == 0) {
			out |= bit;
			continue;
		}
		for (__u32 j = 0; j < SHUNT_AP_MAX_PORT_RANGES; j++) {
			if (j >= p->count)
				break;
			if (port >= p->from[j] && port <= p->to[j]) {
				out |= bit;
				break;
			}
		}
	}
	return out;
}

__noinline __u32 lowest_bit(__u64 m)
{
	for (__u32 i = 0; i < 64; i++) {
		if (m & (1ULL << i))
			return i;
	}
	return 0;
}

/* SYS_PROCEED or SYS_REJECT for a meshed pod connecting to ip:port (the backend, after LB). */
static __always_inline int access_verdict(__u64 cgroup_id, __u32 workload_id,
					  const struct shunt_ip_key *ip, __u16 port)
{
	const struct shunt_ap_dst *dst = bpf_map_lookup_elem(&shunt_apdst_v1, ip);
	if (!dst)
		return SYS_PROCEED; /* no policy targets this peer */
	__u64 deny = dst->deny, allow = dst->allow;
	if (!deny && !allow)
		return SYS_PROCEED;
	__u64 src = 0;
	const __u64 *s = bpf_map_lookup_elem(&shunt_apsrc_v1, &cgroup_id);
	if (s)
		src = *s;
	__u64 hit = ports_match((deny | allow) & src, port);
	if (hit & deny) {
		count_event(workload_id, SHUNT_LB_DENIED, lowest_bit(hit & deny));
		return SYS_REJECT;
	}
	if (allow && !(hit & allow)) {
		count_event(workload_id, SHUNT_LB_NOT_ALLOWED, lowest_bit(allow));
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

/* Picks a backend for key; NULL if the destination is no service (or its table is in flux). */
static __always_inline const struct shunt_backend *pick_backend(const struct shunt_svc_key *key,
								__u32 workload_id,
								__u32 *service_id)
{
	const struct shunt_svc *svc = bpf_map_lookup_elem(&shunt_svc_v1, key);
	if (!svc || svc->slots == 0)
		return NULL;
	*service_id = svc->service_id;
	struct shunt_slot_key sk = { .port = key->port };
	for (int i = 0; i < 4; i++)
		sk.addr[i] = key->addr[i];
	sk.slot = (__u16)(bpf_get_prandom_u32() % svc->slots);
	const struct shunt_backend *be = bpf_map_lookup_elem(&shunt_slot_v1, &sk);
	if (!be)
		count_event(workload_id, SHUNT_LB_NO_BACKEND, svc->service_id);
	return be;
}

/* Common part of connect4/6. `dst` holds the requested address (v4-mapped for IPv4) and port;
 * on a rewrite it is updated to the backend and *rewrite set. */
static __always_inline int on_connect(struct bpf_sock_addr *ctx, struct shunt_svc_key *dst,
				      int *rewrite)
{
	*rewrite = 0;
	if (ctx->type != SOCK_STREAM_TYPE)
		return SYS_PROCEED; /* TCP only */
	__u64 cgroup_id = 0;
	const struct shunt_pod *pod = current_pod(&cgroup_id);
	if (!pod || !(pod->flags & SHUNT_POD_MESHED))
		return SYS_PROCEED; /* unmeshed: untouched */
	__u32 self = pod->workload_id;

	__u32 service_id = 0;
	const struct shunt_backend *be = pick_backend(dst, self, &service_id);
	if (be) {
		struct bpf_sock *sk = ctx->sk;
		struct shunt_lb_sock *st =
			sk ? bpf_sk_storage_get(&shunt_lbsk_v1, sk, 0, BPF_SK_STORAGE_GET_F_CREATE)
			   : NULL;
		if (!st) {
			count_event(self, SHUNT_LB_NO_STORAGE, service_id);
		} else {
			for (int i = 0; i < 4; i++) {
				st->vip[i] = dst->addr[i];
				st->backend[i] = be->addr[i];
				dst->addr[i] = be->addr[i];
			}
			st->vip_port = dst->port;
			st->backend_port = be->port;
			dst->port = be->port;
			*rewrite = 1;
		}
	}

	struct shunt_ip_key ip;
	for (int i = 0; i < 4; i++)
		ip.addr[i] = dst->addr[i];
	if (access_verdict(cgroup_id, self, &ip, dst->port) == SYS_REJECT) {
		*rewrite = 0;
		return SYS_REJECT;
	}
	if (*rewrite)
		count_event(self, SHUNT_LB_REWRITTEN, service_id);
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int shunt_connect4(struct bpf_sock_addr *ctx)
{
	struct shunt_svc_key dst = {};
	dst.addr[2] = bpf_htonl(0x0000ffff);
	dst.addr[3] = ctx->user_ip4;
	dst.port = bpf_ntohs((__u16)ctx->user_port);
	int rewrite;
	int verdict = on_connect(ctx, &dst, &rewrite);
	if (rewrite) {
		ctx->user_ip4 = dst.addr[3];
		ctx->user_port = bpf_htons(dst.port);
	}
	return verdict;
}

SEC("cgroup/connect6")
int shunt_connect6(struct bpf_sock_addr *ctx)
{
	struct shunt_svc_key dst = {};
	dst.addr[0] = ctx->user_ip6[0];
	dst.addr[1] = ctx->user_ip6[1];
	dst.addr[2] = ctx->user_ip6[2];
	dst.addr[3] = ctx->user_ip6[3];
	dst.port = bpf_ntohs((__u16)ctx->user_port);
	int rewrite;
	int verdict = on_connect(ctx, &dst, &rewrite);
	if (rewrite) {
		ctx->user_ip6[0] = dst.addr[0];
		ctx->user_ip6[1] = dst.addr[1];
		ctx->user_ip6[2] = dst.addr[2];
		ctx->user_ip6[3] = dst.addr[3];
		ctx->user_port = bpf_htons(dst.port);
	}
	return verdict;
}

/* The saved VIP of a rewritten socket, if its peer is still the backend it was sent to. */
static __always_inline const struct shunt_lb_sock *saved_vip(struct bpf_sock_addr *ctx,
							      const __u32 peer[4], __u16 port)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return NULL;
	const struct shunt_lb_sock *st = bpf_sk_storage_get(&shunt_lbsk_v1, sk, 0, 0);
	if (!st || st->backend_port != port)
		return NULL;
	for (int i = 0; i < 4; i++) {
		if (st->backend[i] != peer[i])
			return NULL;
	}
	return st;
}

SEC("cgroup/getpeername4")
int shunt_getpeername4(struct bpf_sock_addr *ctx)
{
	__u32 peer[4] = { 0, 0, bpf_htonl(0x0000ffff), ctx->user_ip4 };
	const struct shunt_lb_sock *st = saved_vip(ctx, peer, bpf_ntohs((__u16)ctx->user_port));
	if (st) {
		ctx->user_ip4 = st->vip[3];
		ctx->user_port = bpf_htons(st->vip_port);
	}
	return 1;
}

SEC("cgroup/getpeername6")
int shunt_getpeername6(struct bpf_sock_addr *ctx)
{
	__u32 peer[4] = { ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3] };
	const struct shunt_lb_sock *st = saved_vip(ctx, peer, bpf_ntohs((__u16)ctx->user_port));
	if (st) {
		ctx->user_ip6[0] = st->vip[0];
		ctx->user_ip6[1] = st->vip[1];
		ctx->user_ip6[2] = st->vip[2];
		ctx->user_ip6[3] = st->vip[3];
		ctx->user_port = bpf_htons(st->vip_port);
	}
	return 1;
}

/* Pod cgroups from their first instant.
 *
 * kubelet names a pod's cgroup after the pod's uid: "pod<uid>" (cgroupfs driver) or
 * "kubepods[-besteffort|-burstable]-pod<uid with '_' for '-'>.slice" (systemd driver). The agent
 * puts every pod of this node that policy knows into the pending maps by uid before its cgroup
 * exists; when kubelet creates the cgroup, this program (cgroup_mkdir fires before the directory
 * is visible, so before any task can join it) gives it its pods map and policy source entries.
 * A pod's very first connect() is then decided like every later one, with no rescan in between,
 * also while no agent runs (the link is pinned). Only cgroups of the unified hierarchy below the
 * node's pod cgroup root are looked at. */

#define SHUNT_CG_NAME_MAX 80

/* Copies the uid at buf[off], `len` (36 or 32) characters whose dashes are `sep`, into `out` with
 * dashes; 0 if the separators are not where a UUID has them. */
static __always_inline int take_uid(const char *buf, int off, int len, char sep,
				    struct shunt_pod_uid *out)
{
	for (int i = 0; i < 36; i++) {
		if (i >= len)
			break;
		char c = buf[(off + i) & 127];
		const int dash = len == 36 && (i == 8 || i == 13 || i == 18 || i == 23);
		if (dash) {
			if (c != sep)
				return 0;
			c = '-';
		} else if (c == '-' || c == '_' || c == 0) {
			/* Other non-hex characters are let through (checking for hex digits here
			 * quadrupled the verifier's work): such a name matches no pending uid, all
			 * of which come from Kubernetes (hex), and is only counted unknown. */
			return 0;
		}
		out->uid[i] = c;
	}
	return 1;
}

static __always_inline int starts_with(const char *buf, const char *prefix, int n)
{
	for (int i = 0; i < 24; i++) {
		if (i >= n)
			break;
		if (buf[i] != prefix[i])
			return 0;
	}
	return 1;
}

/* The pod uid in a kubelet pod cgroup name of length n (without NUL); 0 if it is none. */
static __always_inline int pod_uid_of(const char *buf, int n, struct shunt_pod_uid *out)
{
	if (starts_with(buf, "pod", 3) && (n == 3 + 36 || n == 3 + 32))
		return take_uid(buf, 3, n - 3, '-', out);
	if (n < 6 || buf[(n - 6) & 127] != '.' || buf[(n - 5) & 127] != 's' ||
	    buf[(n - 4) & 127] != 'l' || buf[(n - 3) & 127] != 'i' || buf[(n - 2) & 127] != 'c' ||
	    buf[(n - 1) & 127] != 'e')
		return 0;
	const int uid_len = n - 6;
	if (starts_with(buf, "kubepods-pod", 12) && (uid_len == 12 + 36 || uid_len == 12 + 32))
		return take_uid(buf, 12, uid_len - 12, '_', out);
	if (starts_with(buf, "kubepods-burstable-pod", 22) &&
	    (uid_len == 22 + 36 || uid_len == 22 + 32))
		return take_uid(buf, 22, uid_len - 22, '_', out);
	if (starts_with(buf, "kubepods-besteffort-pod", 23) &&
	    (uid_len == 23 + 36 || uid_len == 23 + 32))
		return take_uid(buf, 23, uid_len - 23, '_', out);
	return 0;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(shunt_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	if (!shunt_cgroup_root_id || BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0; /* not the unified hierarchy */
	/* Below the pod cgroup root? */
	struct cgroup *cg = cgrp;
	int below = 0;
	for (int i = 0; i < SHUNT_MAX_CGROUP_WALK; i++) {
		struct cgroup_subsys_state *parent = BPF_CORE_READ(cg, self.parent);
		if (!parent)
			break;
		cg = BPF_CORE_READ(parent, cgroup);
		if (!cg)
			break;
		if (BPF_CORE_READ(cg, kn, id) == shunt_cgroup_root_id) {
			below = 1;
			break;
		}
	}
	if (!below)
		return 0;
	char buf[128] = {};
	const char *name = BPF_CORE_READ(cgrp, kn, name);
	long len = bpf_probe_read_kernel_str(buf, SHUNT_CG_NAME_MAX, name);
	if (len <= 1)
		return 0;
	struct shunt_pod_uid uid = {};
	if (!pod_uid_of(buf, (int)(len - 1) & 127, &uid))
		return 0; /* a QoS slice or a container: not a pod */
	const struct shunt_pod *pod = bpf_map_lookup_elem(&shunt_podpnd_v1, &uid);
	if (!pod) {
		count_event(SHUNT_WORKLOAD_UNKNOWN, SHUNT_LB_POD_UNKNOWN, 0);
		return 0;
	}
	__u64 id = BPF_CORE_READ(cgrp, kn, id);
	struct shunt_pod p = *pod;
	/* Sources first: once the pods map knows the cgroup, its connects are decided. */
	const __u64 *mask = bpf_map_lookup_elem(&shunt_appnd_v1, &uid);
	if (mask) {
		__u64 m = *mask;
		if (shunt_map_update(&shunt_apsrc_v1, &id, &m, BPF_ANY)) {
			/* Without its sources the pod's DENY policies would not hold: leave it
			 * unknown (its connects undecided by policy until the rescan, as any pod
			 * the agent has not seen) and say so. */
			count_event(SHUNT_WORKLOAD_UNKNOWN, SHUNT_LB_POD_MAP_FULL, 0);
			return 0;
		}
	}
	if (shunt_map_update(&shunt_pods_v1, &id, &p, BPF_ANY)) {
		count_event(SHUNT_WORKLOAD_UNKNOWN, SHUNT_LB_POD_MAP_FULL, 0);
		return 0;
	}
	count_event(SHUNT_WORKLOAD_UNKNOWN, SHUNT_LB_POD_RESOLVED, 0);
	return 0;
}
