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
#define SHUNT_MAP_SOCKSTATE "shunt_skst_v3" /* per-socket state (sk_storage) */
#define SHUNT_MAP_READERS "shunt_rdr_v2"    /* sock key -> its reader slot (presence: spliced) */
#define SHUNT_MAP_READER_SLOTS "shunt_rdv_v1" /* reader slot -> how that socket is read */
#define SHUNT_MAP_LISTENERS "shunt_lsn_v1"  /* (netns, port) -> how a listener's sockets read */
#define SHUNT_MAP_CONTROL "shunt_ctl_v1"    /* [0] -> SHUNT_CTL_* flags set by the agent */

/* shunt_ctl_v1[0] */
#define SHUNT_CTL_DRAIN 0x1   /* uninstalling: redirect nothing more, splice no new socket */
#define SHUNT_CTL_SETTLED 0x2 /* ... and every redirect made before is queued: an empty sockmap
			       * queue seen now stays empty */
#define SHUNT_MAP_PODS "shunt_pods_v1"      /* pod cgroup id -> local workload */
#define SHUNT_MAP_PENDING_PODS "shunt_podpnd_v1" /* pod uid -> local workload, before its cgroup */
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

/* pending pods map key: a pod's uid as the API server gives it ("8-4-4-4-12" hex with dashes, or
 * the 32 hex digits of a static pod), NUL-padded. A pod of this node that policy knows is put
 * here before its cgroup exists; the cgroup_mkdir tracepoint (socklb) resolves its cgroup to it
 * from the cgroup's name the moment kubelet creates it (docs/kernel-policy.md). */
#define SHUNT_POD_UID_LEN 40
struct shunt_pod_uid {
	char uid[SHUNT_POD_UID_LEN];
};

/* endpoints map key: a local meshed pod's IP, 16 bytes, IPv4 v4-mapped. */
struct shunt_ip_key {
	__u32 addr[4]; /* network order */
};

/* Per-socket decision, kept in sk_storage. */
enum shunt_sock_mode {
	SHUNT_SOCK_UNDECIDED = 0, /* no data sent yet */
	SHUNT_SOCK_REDIRECT = 1,  /* every send goes into the peer socket */
	SHUNT_SOCK_PLAIN = 2,     /* unprotected mode only: data went through the stack once */
};

/* How a socket in the sockhash is read by its program (docs/fastpath.md, "Transparency").
 * Bytes are redirected into a socket only while its reader is SAFE: every read so far was a
 * non-blocking recvmsg without SO_RCVLOWAT, which the sockmap receive path serves exactly as
 * TCP does. A blocking read, splice(2) or SO_RCVLOWAT makes it UNSAFE for good. */
enum shunt_reader {
	SHUNT_READER_UNKNOWN = 0, /* not read yet: its peer sends through the stack */
	SHUNT_READER_SAFE = 1,
	SHUNT_READER_UNSAFE = 2,
};

/* shunt_sock_state.flags */
#define SHUNT_SKST_EVER_SAFE 0x1 /* was SAFE once: bytes may sit in its sockmap queue */
#define SHUNT_SKST_PASSIVE 0x2   /* accepted (its listener is in the listeners map) */

struct shunt_sock_state {
	__u32 src_workload;
	__u32 dst_workload;
	__u8 mode;      /* enum shunt_sock_mode */
	__u8 in_map;    /* 1 while this socket is in the sockhash */
	__u8 reader;    /* enum shunt_reader */
	__u8 flags;     /* SHUNT_SKST_* */
	__u32 slot;     /* its reader view's slot (SHUNT_NO_SLOT: none) */
	__u64 netns_cookie;
	struct shunt_sock_key key; /* this socket's own key (for the tracing programs) */
	__u64 cookie;      /* its socket cookie: the owner of its slot */
	__u64 peer_cookie; /* the peer's socket cookie, once its slot is known (0: not yet) */
	__u32 peer_slot;   /* the peer's reader view slot, valid while it is owned by peer_cookie */
	__u32 pad;
};
#define SHUNT_NO_SLOT 0xffffffffu

/* readers map value: where the socket's reader view is (an array slot: the per-send and per-read
 * paths index it instead of hashing a key), and who owns that slot. The entry's presence says
 * the socket is spliced (in the sockhash). */
struct shunt_reader_ref {
	__u64 cookie;
	__u32 slot;
	__u32 pad;
};

/* reader slots map value: what a peer's sk_msg needs to know about this socket before
 * redirecting into it. Written by this socket's own programs; one cache line each (its reader and
 * its sender run on different CPUs; neighbours must not share the line: the array is mmapable,
 * so its values start page-aligned). A slot is free while
 * owner is 0; sockets take one at establishment (compare-and-swap) and give it back at close. */
struct shunt_reader_view {
	__u64 owner;      /* socket cookie of its socket; 0: free */
	__u32 copied_seq; /* TCP bytes read so far (the last read's tcp_sock.copied_seq) */
	__u32 rcvbuf;     /* bound of bytes queued for it by redirects while it reads */
	__u64 queued;     /* bytes redirected into it and not read yet (approximate, >= 0) */
	__u8 reader;      /* enum shunt_reader */
	__u8 drained;     /* seen empty after the drain settled (uninstall): may leave the sockhash */
	__u8 pad[2];
	__u32 last_read;  /* jiffies (low 32 bits) of its last read; 0 before the first */
	__u32 sk_rcvbuf;  /* its sk_rcvbuf as of its insertion or last read; 0: unknown */
	__u32 pad3;
	__u64 delivered;  /* bytes redirected into it, ever (its connection's L4 metrics) */
	__u64 pad2[2];
};
/* A socket's slot is searched from its cookie's, this many slots on. */
#define SHUNT_SLOT_PROBES 8

/* Reader classes, learned from the sockets of a meshed pod (its network namespace): the server
 * behind a listening port (kind LISTENER, port = local port) or the clients of a remote port
 * (kind CLIENT, port = remote port). A class whose sockets read safely gets later sockets spliced
 * from their first byte; one that read unsafely once gets none spliced. */
#define SHUNT_CLASS_LISTENER 0
#define SHUNT_CLASS_CLIENT 1
struct shunt_listener_key {
	__u64 netns;
	__u16 port; /* host order */
	__u16 kind; /* SHUNT_CLASS_* */
	__u16 pad[2];
};
struct shunt_listener {
	__u8 blocking;       /* LISTENER: blocking at listen(): its sockets read blocking */
	__u8 learned_unsafe; /* a socket of the class read unsafely: later ones are not spliced */
	__u8 learned_safe;   /* sockets of the class read safely: later ones start SAFE */
	__u8 learned_quiet;  /* a socket of the class closed without a read (a pure sender): where
			      * only learned pairs are spliced, later ones may enter the sockhash,
			      * UNKNOWN until they read */
	__u8 pad[4];
};

/* Message verdicts, the "reason" dimension of the message counters. */
enum shunt_msg_verdict {
	SHUNT_MSG_REDIRECTED = 0,
	SHUNT_MSG_FALLBACK_PEER_NOT_READY = 1, /* first send before the peer was in the sockhash */
	SHUNT_MSG_FALLBACK_PLAIN_SOCKET = 2,   /* socket already sent through the stack */
	SHUNT_MSG_FALLBACK_PEER_GONE = 3,      /* peer left the sockhash (closed) */
	SHUNT_MSG_FALLBACK_NO_STATE = 4,       /* socket has no shunt state (inserted elsewhere) */
	SHUNT_MSG_FALLBACK_PEER_UNREAD = 5,    /* the peer has not read yet: how it reads is unknown */
	SHUNT_MSG_FALLBACK_PEER_UNSAFE = 6,    /* the peer reads blocking, with splice or RCVLOWAT */
	SHUNT_MSG_FALLBACK_PEER_BACKLOG = 7,   /* the peer has too much unread (docs/fastpath.md) */
	SHUNT_MSG_FALLBACK_ORDER = 8,          /* bytes sent through the stack are not read yet */
	SHUNT_MSG_FALLBACK_ZEROCOPY = 9,       /* SO_ZEROCOPY sender: completions come from TCP */
	SHUNT_MSG_FALLBACK_DRAINING = 10,      /* the agent is being uninstalled */
	SHUNT_MSG_VERDICT_MAX = 11,
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
	SHUNT_SOCK_SKIP_BLOCKING = 6,   /* blocking socket (or listener): never spliced */
	SHUNT_SOCK_SKIP_LEARNED = 7,    /* its server read unsafely before: not spliced */
	SHUNT_SOCK_SKIP_OPTIONS = 8,    /* SO_RCVLOWAT set before the handshake: not spliced */
	SHUNT_SOCK_READ_BLOCKING = 9,   /* a spliced socket was read blocking: UNSAFE */
	SHUNT_SOCK_READ_SPLICE = 10,    /* ... read with splice(2): UNSAFE */
	SHUNT_SOCK_READ_LOWAT = 11,     /* ... read under SO_RCVLOWAT > 1: UNSAFE */
	SHUNT_SOCK_EVICTED = 12,        /* taken out of the sockhash (nothing queued): plain TCP */
	SHUNT_SOCK_UNPROTECTED = 13,    /* turned UNSAFE with redirected bytes unread, or read
					 * blocking in the sockhash where it could not be evicted */
	SHUNT_SOCK_READ_FIONREAD = 14,  /* ... asked FIONREAD (SIOCINQ), which counts one of its two
					 * queues only: UNSAFE */
	SHUNT_SOCK_SKIP_UNLEARNED = 15, /* where FIONREAD users cannot be seen: a socket whose
					 * class (or whose peer's) has not read safely yet stays
					 * out of the sockhash, plain TCP for life */
	SHUNT_SOCK_SKIP_FOREIGN = 16,   /* its local address is not its own pod's (another pod's
					 * IP on a namespace of its own): never spliced */
	SHUNT_SOCK_INSERT_COLLISION = 17, /* its key is in the sockhash already (another socket's):
					   * never displaced, normal path */
	SHUNT_SOCK_SLOTS_FULL = 18,     /* no free reader slot near its own: normal path */
	SHUNT_SOCK_L4_LOST = 19,        /* a connection event found the events ring full: that
					 * connection's opening or end is not in the L4 metrics */
	SHUNT_SOCK_L4_NO_STORAGE = 20,  /* no per-connection state could be made: not measured */
	SHUNT_SOCK_EVENT_MAX = 21,
};

struct shunt_sock_stats_key {
	__u32 workload_id;
	__u32 event; /* enum shunt_sock_event */
};

/* L4 metrics of every TCP connection of a meshed pod (docs/metrics.md): per-socket state from its
 * connect() or accept on, and an event at its establishment and at its end, which the agent reads
 * from a ring buffer and aggregates by source and destination. The end carries the socket's
 * totals: TCP's own counters plus the bytes the fast path moved around TCP (sk_msg redirects). */
#define SHUNT_MAP_L4 "shunt_l4_v1"        /* per-socket connection state (sk_storage) */
#define SHUNT_MAP_L4_EVENTS "shunt_l4ev_v1" /* connection events (ring buffer) */
#define SHUNT_L4_RING_BYTES (2 << 20)

/* shunt_l4_conn.flags and shunt_l4_event.flags */
#define SHUNT_L4_PASSIVE 0x1 /* accepted: the pod is the destination */
#define SHUNT_L4_OPENED 0x2  /* established (its opening event was sent) */
#define SHUNT_L4_VIP 0x4     /* connect() to a Service address the agent rewrote (vip, vip_port) */
#define SHUNT_L4_CLOSED 0x8  /* its end was sent */
#define SHUNT_L4_FIN_SENT 0x10 /* it sent its FIN (FIN_WAIT1 or LAST_ACK) */

enum shunt_l4_event_kind {
	SHUNT_L4_EV_OPENED = 0,
	SHUNT_L4_EV_CLOSED = 1,  /* an established connection ended */
	SHUNT_L4_EV_FAILED = 2,  /* a connect() that never established (refused, timed out, reset) */
};

struct shunt_l4_event {
	__u8 kind;          /* enum shunt_l4_event_kind */
	__u8 flags;         /* SHUNT_L4_* */
	__u16 local_port;   /* host order */
	__u16 remote_port;  /* host order */
	__u16 vip_port;     /* host order; with SHUNT_L4_VIP */
	__u32 workload_id;  /* the pod's (the reporter's) */
	__u32 setup_us;
	__u32 remote_ip[4]; /* network order, IPv4 v4-mapped */
	__u32 vip[4];       /* the Service address connect() named; with SHUNT_L4_VIP */
	__u64 cookie;       /* the socket's cookie: one connection's events */
	__u64 duration_ns;  /* CLOSED: established (passive: SYN) to end */
	__u64 bytes_sent;   /* CLOSED: payload, TCP's acknowledged + the spliced bytes sent */
	__u64 bytes_received; /* CLOSED: payload, TCP's + the spliced bytes received */
	__u32 srtt_us;      /* CLOSED: smoothed round-trip time */
	__u32 retrans;      /* CLOSED: segments retransmitted */
};

/* A connection's state (sk_storage): its event as filled at establishment, its counters. */
struct shunt_l4_conn {
	struct shunt_l4_event ev;
	__u64 start_ns;     /* established (active; connect() until then), or the SYN's arrival
			     * estimated (passive) */
	__u64 spliced_sent; /* bytes this socket's sends moved into its peer by redirect */
	__u64 spliced_received; /* bytes redirected into it, as of when it left the sockhash */
	__u32 flags;        /* SHUNT_L4_* */
	__u32 pad;
};

#endif /* SHUNT_FASTPATH_ABI_H */
