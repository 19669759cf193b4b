/* The pods map (pod cgroup id -> local workload), written by the agent's reconciler and read by
 * every BPF object of the agent. One definition, so that each object's copy is identical and
 * libbpf reuses the one pinned map (LIBBPF_PIN_BY_NAME). BPF side only. */
#ifndef SHUNT_PODS_MAP_BPF_H
#define SHUNT_PODS_MAP_BPF_H

#include "shunt/fastpath_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* set by the agent before load (--pods-map-size) */
	__type(key, __u64);
	__type(value, struct shunt_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_pods_v1 SEC(".maps");

/* Pods of this node known to policy, by uid (the pods map's value for their cgroup-to-be). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* the pods map's size */
	__type(key, struct shunt_pod_uid);
	__type(value, struct shunt_pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shunt_podpnd_v1 SEC(".maps");

#endif /* SHUNT_PODS_MAP_BPF_H */
