/* ABI shared by bpf/fastpath.bpf.c and the agent: map keys, values and constants of the in-node
 * fast path. Plain C, fixed-width types, explicit padding, no bitfields; sizes and offsets are
 * checked by tests/unit/abi_test.cc. A layout change bumps the _vN suffix of the map names.
 */
#ifndef SHUNT_FASTPATH_ABI_H
#define SHUNT_FASTPATH_ABI_H

#ifdef __BPF__
/* vmlinux.h provides __u8.. */
#else
#include <linux/types.h>
#endif

/* Map names (BPF object names are at most 15 characters). */
#define SHUNT_MAP_SOCKHASH "shunt_sk_v1"    /* sock key -> socket (sockhash) */
#define SHUNT_MAP_SOCKSTATE "shunt_skst_v1" /* per-socket state (sk_storage) */
#define SHUNT_MAP_PODS "shunt_pods_v1"      /* pod cgroup id -> local workload */
#define SHUNT_MAP_ENDPOINTS "shunt_ep_v1"   /* local meshed pod IP -> workload id */
#define SHUNT_MAP_MSG_STATS "shunt_msg_v1"  /* (src, dst, verdict) -> msgs, bytes (per CPU) */
#define SHUNT_MAP_SOCK_STATS "shunt_sock_v1" /* (workload, event) -> count (per CPU) */

/* How many cgroup levels above a socket's own cgroup are searched for its pod cgroup. */
#define SHUNT_MAX_CGROUP_WALK 8

/* Workload id 0 means "unknown"; the agent assigns ids from 1. */
#define SHUNT_WORKLOAD_UNKNOWN 0

/* One TCP connection end, as seen from one socket. Addresses are 16 bytes, network order; IPv4 is
 * stored v4-mapped (::ffff:a.b.c.d) so that an IPv4 client and a dual-stack [::] server build the
 * same key. Ports are host order. netns is the network namespace cookie for loopback addresses
 * (127.0.0.0/8, ::1), whose 4-tuples repeat in every pod, and 0 for every other address. */
struct shunt_sock_key {
	__u32 local_ip[4];  /* network order */
	__u32 remote_ip[4]; /* network order */
	__u64 netns;
	__u16 local_port;
	__u16 remote_port;
	__u32 pad;
};

/* pods map value. */
struct shunt_pod {
	__u32 workload_id;
	__u32 flags; /* SHUNT_POD_* */
};
#define SHUNT_POD_MESHED 0x1

/* endpoints map key: a local meshed pod's IP, 16 bytes, IPv4 v4-mapped. */
struct shunt_ip_key {
	__u32 addr[4]; /* network order */
};

/* Per-socket decision, kept in sk_storage. */
enum shunt_sock_mode {
	SHUNT_SOCK_UNDECIDED = 0, /* no data sent yet */
	SHUNT_SOCK_REDIRECT = 1,  /* every send goes into the peer socket */
	SHUNT_SOCK_PLAIN = 2,     /* data went through the stack once; stays there (ordering) */
};

struct shunt_sock_state {
	__u32 src_workload;
	__u32 dst_workload;
	__u8 mode;      /* enum shunt_sock_mode */
	__u8 in_map;    /* 1 while this socket is in the sockhash */
	__u8 pad[6];
};

/* Message verdicts, the "reason" dimension of the message counters. */
enum shunt_msg_verdict {
	SHUNT_MSG_REDIRECTED = 0,
	SHUNT_MSG_FALLBACK_PEER_NOT_READY = 1, /* first send before the peer was in the sockhash */
	SHUNT_MSG_FALLBACK_PLAIN_SOCKET = 2,   /* socket already sent through the stack */
	SHUNT_MSG_FALLBACK_PEER_GONE = 3,      /* peer left the sockhash (closed) */
	SHUNT_MSG_FALLBACK_NO_STATE = 4,       /* socket has no shunt state (inserted elsewhere) */
	SHUNT_MSG_VERDICT_MAX = 5,
};

struct shunt_msg_stats_key {
	__u32 src_workload;
	__u32 dst_workload;
	__u32 verdict; /* enum shunt_msg_verdict */
	__u32 pad;
};

struct shunt_msg_stats {
	__u64 msgs;
	__u64 bytes;
};

/* Socket events, per workload. */
enum shunt_sock_event {
	SHUNT_SOCK_INSERTED = 0,        /* added to the sockhash */
	SHUNT_SOCK_REMOVED = 1,         /* closed while in the sockhash */
	SHUNT_SOCK_INSERT_FULL = 2,     /* sockhash full: normal path */
	SHUNT_SOCK_INSERT_ERROR = 3,    /* other insert error: normal path */
	SHUNT_SOCK_PEER_NOT_LOCAL = 4,  /* meshed socket whose peer is no local meshed pod */
	SHUNT_SOCK_STATS_FULL = 5,      /* a message counter could not be created */
	SHUNT_SOCK_EVENT_MAX = 6,
};

struct shunt_sock_stats_key {
	__u32 workload_id;
	__u32 event; /* enum shunt_sock_event */
};

#endif /* SHUNT_FASTPATH_ABI_H */
