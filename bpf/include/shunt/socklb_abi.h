/* ABI shared by bpf/socklb.bpf.c and the agent: socket-level service load balancing and access
 * policy at connect() time. Plain C, fixed-width types, explicit padding, no bitfields; sizes and
 * offsets are checked by tests/unit/abi_test.cc. A layout change bumps the _vN suffix.
 *
 * Addresses are 16 bytes, network order, IPv4 v4-mapped (as struct shunt_ip_key of the fast path);
 * ports are host order. The pods map (shunt_pods_v1) is the fast path's, reused by pin name.
 */
#ifndef SHUNT_SOCKLB_ABI_H
#define SHUNT_SOCKLB_ABI_H

#ifdef __BPF__
/* vmlinux.h provides __u8.. */
#else
#include <linux/types.h>
#endif

#define SHUNT_MAP_LB_SERVICES "shunt_svc_v1"   /* VIP:port -> service (slot count) */
#define SHUNT_MAP_LB_SLOTS "shunt_slot_v1"     /* VIP:port, slot -> backend */
#define SHUNT_MAP_LB_SOCKS "shunt_lbsk_v1"     /* per-socket original VIP (sk_storage) */
#define SHUNT_MAP_AP_SOURCES "shunt_apsrc_v1"  /* pod cgroup id -> policies whose `from` matches */
#define SHUNT_MAP_AP_DESTS "shunt_apdst_v1"    /* pod IP -> policies targeting it */
#define SHUNT_MAP_AP_PORTS "shunt_apport_v1"   /* policy bit -> destination port ranges */
#define SHUNT_MAP_LB_STATS "shunt_lbst_v1"     /* (workload, event, detail) -> count (per CPU) */
#define SHUNT_MAP_AP_NAMES "shunt_apnam_v1"    /* policy bit -> its policy's name (agent only) */
#define SHUNT_MAP_AP_PENDING "shunt_appnd_v1"  /* pod uid -> policy mask, before its cgroup */

/* Access policies are bits of a u64: at most 64 per node (more is a reconcile error). */
#define SHUNT_AP_MAX_POLICIES 64
/* Port ranges per policy; a policy with more is a reconcile error. */
#define SHUNT_AP_MAX_PORT_RANGES 8
/* Pod cgroups are searched among the current task's ancestors down to this depth. */
#define SHUNT_LB_MAX_CGROUP_DEPTH 32
/* Upper bound of a service's slot table (the --lb-max-slots flag may lower it). */
#define SHUNT_LB_MAX_SLOTS 65535

struct shunt_svc_key {
	__u32 addr[4]; /* VIP, network order, IPv4 v4-mapped */
	__u16 port;    /* host order */
	__u16 pad;
};

struct shunt_svc {
	__u32 slots;      /* slot table entries 0..slots-1 in the slots map; 0: no backend */
	__u32 service_id; /* for counters: the agent's id of this service port */
};

struct shunt_slot_key {
	__u32 addr[4]; /* VIP, as in shunt_svc_key */
	__u16 port;
	__u16 slot;
};

struct shunt_backend {
	__u32 addr[4]; /* backend, same family as the VIP */
	__u16 port;    /* host order */
	__u16 pad;
};

/* Saved at connect() for getpeername(): what the application asked for and where it went. */
struct shunt_lb_sock {
	__u32 vip[4];
	__u32 backend[4];
	__u16 vip_port;
	__u16 backend_port;
	__u32 pad;
};

struct shunt_ap_dst {
	__u64 deny;  /* DENY policies that target this pod */
	__u64 allow; /* ALLOW policies that target this pod */
};

/* policy names map value: "namespace/name", NUL-terminated; empty: a free bit. Written by the
 * agent after each pass, read at its start so that policies keep their bits (and counters). */
#define SHUNT_AP_NAME_LEN 320 /* namespace (63) + "/" + name (253), NUL */
struct shunt_ap_name {
	char name[SHUNT_AP_NAME_LEN];
};

struct shunt_ap_ports {
	__u16 from[SHUNT_AP_MAX_PORT_RANGES];
	__u16 to[SHUNT_AP_MAX_PORT_RANGES]; /* inclusive */
	__u32 count;                        /* 0: every port */
	__u32 pad;
};

enum shunt_lb_event {
	SHUNT_LB_REWRITTEN = 0,         /* VIP -> backend (detail: service id) */
	SHUNT_LB_NO_BACKEND = 1,        /* VIP known, slot missing (update in flight): unmodified */
	SHUNT_LB_NO_STORAGE = 2,        /* cannot remember the VIP for getpeername: unmodified */
	SHUNT_LB_DENIED = 3,            /* a DENY policy matched (detail: policy bit) */
	SHUNT_LB_NOT_ALLOWED = 4,       /* ALLOW policies target the peer, none matched (detail: the
					 * lowest such policy bit) */
	SHUNT_LB_STATS_FULL = 5,        /* a counter could not be created */
	SHUNT_LB_POD_RESOLVED = 6,      /* a pod cgroup created under the root was resolved to its
					 * pending pod at mkdir (workload: unknown, so never deleted) */
	SHUNT_LB_POD_UNKNOWN = 7,       /* a pod cgroup created under the root whose uid was not
					 * pending: classified at the agent's next rescan */
	SHUNT_LB_POD_MAP_FULL = 8,      /* a pending pod's cgroup whose pods map (or policy source)
					 * entry could not be written: classified at the next rescan */
	SHUNT_LB_EVENT_MAX = 9,
};

struct shunt_lb_stats_key {
	__u32 workload_id; /* source workload (pods map) */
	__u32 event;       /* enum shunt_lb_event */
	__u32 detail;
	__u32 pad;
};

#endif /* SHUNT_SOCKLB_ABI_H */
