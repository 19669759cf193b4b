// Turns the Kubernetes objects of ClusterState into the mesh's policy resources (proto/shunt/v1):
// Pods -> Workload, Service + EndpointSlices -> Service, our CRs -> TrafficRoute / AccessPolicy /
// ApiCostPolicy. Pure: no I/O, deterministic, so it is tested without a cluster.
//
// Mesh membership: a pod is meshed when its namespace has the label shunt.dev/mesh=enabled or the
// pod has the annotation shunt.dev/mesh=enabled; the annotation shunt.dev/mesh=disabled opts a
// pod out of a meshed namespace. hostNetwork pods are never meshed (they share the node's IP and
// cgroup layout is theirs alone).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "controller/cluster_state.h"
#include "common/resources.h"
#include "shunt/v1/discovery.pb.h"

namespace shunt::controller {

inline constexpr char kMeshLabel[] = "shunt.dev/mesh";
inline constexpr char kMeshEnabled[] = "enabled";
inline constexpr char kMeshDisabled[] = "disabled";
// Port ranges of one AccessPolicy the agents can check at connect() (SHUNT_AP_MAX_PORT_RANGES
// in bpf/include/shunt/socklb_abi.h; tests/unit/abi_test.cc keeps the two equal).
inline constexpr int kAccessPolicyMaxPortRanges = 8;

// Resources are immutable once built and shared: between builds (an unchanged pod's Workload is
// the same object as last time), with the PolicyServer's versions, and across agents.
using ResourcePtr = std::shared_ptr<const shunt::v1::Resource>;

struct Snapshot {
  std::map<std::string, ResourcePtr> resources;  // by ResourceKeyString
  std::vector<PolicyStatus> statuses;                     // one per CR seen
  std::vector<std::string> warnings;                      // objects skipped, and why
};

// Builds snapshots, reusing what it derived from objects that did not change since the last
// build (objects are compared by pointer: ClusterState keeps the pointer of an unchanged object),
// so a change to one pod costs one Workload, not a thousand.
class SnapshotBuilder {
 public:
  Snapshot Build(const ObjectMap& objects);

  struct Cache {
    struct Entry {
      std::vector<ObjectPtr> inputs;  // the objects it was derived from
      bool flag = false;              // other input (a pod: its namespace is meshed)
      ResourcePtr resource;  // null: derived nothing (skipped)
      std::string resource_key;  // ResourceKeyString(resource->key())
      std::string warning;       // why the object derived nothing ("" if it did, or no reason)
    };
    std::map<ObjectKey, Entry> entries;
  };

 private:
  Cache pods_, services_;
};

// A one-off build (no cache).
Snapshot BuildSnapshot(const ObjectMap& objects);

}  // namespace shunt::controller
