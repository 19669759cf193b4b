// Helpers over the policy resources of proto/shunt/v1 that both the controller and the agent use:
// resource keys, content versions, and the PolicyBundle view of a set of resources.
#pragma once

#include <cstdint>

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "shunt/v1/discovery.pb.h"

namespace shunt {

// "KIND/namespace/name", e.g. "WORKLOAD/default/<uid>": the key of a resource in snapshots, in
// the agent's store and in initial_resource_versions.
std::string ResourceKeyString(const shunt::v1::ResourceKey& key);

// A hash of the resource's deterministic serialization (its `version` field excluded), so that the
// same content has the same version across controller restarts.
std::string ResourceVersion(const shunt::v1::Resource& resource);

// Every resource of `resources` in a PolicyBundle, grouped by kind in key order.
shunt::v1::PolicyBundle ToBundle(const std::map<std::string, shunt::v1::Resource>& resources);
shunt::v1::PolicyBundle ToBundle(
    const std::map<std::string, std::shared_ptr<const shunt::v1::Resource>>& resources);

// FNV-1a 64 of `bytes`, as 16 hex digits.
std::string Fnv1a64Hex(const std::string& bytes);

// Message size limits of the policy stream (gRPC's default receive limit is 4 MiB, which a
// cluster of ~40000 pods exceeds). Responses carry a full state (~100 bytes per resource);
// requests only the versions an agent holds after a restart (~75 bytes per resource: 7.5 MiB
// for 100000 workloads). The controller holds a stream's first request until its first ACK:
// what a stream may cost it is bounded by this.
inline constexpr int kPolicyResponseMaxBytes = 256 << 20;
inline constexpr int kPolicyRequestMaxBytes = 16 << 20;

// The same hash, fed piecewise: Update(a); Update(b) == Fnv1a64Hex(a + b).
class Fnv1a64 {
 public:
  void Update(std::string_view bytes) {
    for (unsigned char c : bytes) {
      h_ ^= c;
      h_ *= 1099511628211ULL;
    }
  }
  std::string Hex() const;

 private:
  uint64_t h_ = 1469598103934665603ULL;
};

}  // namespace shunt
