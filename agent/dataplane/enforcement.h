// What of the policy in force the kernel enforces: the state an ACK to the controller reports
// (proto/shunt/v1/discovery.proto, EnforcementReport), /readyz and /metrics show.
//
// A snapshot is enforced once the fast path's pass and the access policy pass (its hook) ran
// for it; what they could not enforce as written (a policy over the cap, a map full, a failed
// map write) is listed by policy, or node-wide.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/dataplane/local_dataplane.h"
#include "agent/dataplane/service_policy.h"
#include "agent/policy/policy_store.h"
#include "shunt/v1/discovery.pb.h"

namespace shunt::agent {

struct Enforcement {
  uint64_t version = 0;  // the store's snapshot (0: no policy yet)
  bool applied = false;  // both passes ran for it
  std::vector<NotEnforcedPart> not_enforced;  // sorted; empty and applied: all of it enforced
};

// Now, without waiting. A snapshot the passes have not run for is reported as not applied only
// once it is older than `grace` (until then, what the last passes left; /readyz and the metrics
// do not flap at every version).
Enforcement CurrentEnforcement(const PolicyStore& store, const Reconciler& fast_path,
                               const ServicePolicyReconciler& policy,
                               absl::Duration grace = absl::ZeroDuration());
// The grace /readyz and the metrics give a new version: what an ACK waits for it at most.
inline constexpr absl::Duration kEnforcementGrace = absl::Seconds(5);
// Once both passes ran for the store's snapshot, or after `wait` (then it says what is not
// applied yet).
Enforcement AwaitEnforcement(const PolicyStore& store, const Reconciler& fast_path,
                             const ServicePolicyReconciler& policy, absl::Duration wait);

// For the controller: policies by key (AccessPolicy, ApiCostPolicy), node-wide parts without one.
shunt::v1::EnforcementReport ToReport(const Enforcement& e);
// "ns/name: reason; node: reason" for /readyz and logs; at most `max_parts`, then "(+N more)".
std::string DescribeNotEnforced(const std::vector<NotEnforcedPart>& parts, size_t max_parts = 8);

}  // namespace shunt::agent
