// The order in which access-policy map entries change: from what the maps hold to what they must
// hold, through intermediate states each of which decides every connect (source pod, destination
// IP, port) as the old policy or as the new one does, never otherwise (docs/kernel-policy.md,
// "Update order"). Pure; the verdict model is the one of bpf/socklb.bpf.c (access_verdict).
#ifndef SHUNT_AGENT_DATAPLANE_POLICY_STAGES_H_
#define SHUNT_AGENT_DATAPLANE_POLICY_STAGES_H_

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "shunt/socklb_abi.h"

namespace shunt::agent {

// The three access-policy maps, decoded. Destination keys are the 16 key bytes.
struct PolicyMaps {
  std::map<uint64_t, uint64_t> sources;       // pod cgroup id -> policy mask
  std::map<std::string, shunt_ap_dst> dests;  // IP key bytes -> {deny, allow}
  std::array<shunt_ap_ports, SHUNT_AP_MAX_POLICIES> ports{};  // by policy bit; count 0: every port
};

// The states to write one after the other, each differing from the one before in one map only;
// the last one is `to`. Every state decides each connect as `from` or as `to` does. A bit whose
// one part grows while another shrinks, or that changes kind, goes through a spare bit; with none
// spare (all 64 referenced) it is cut to what old and new share first (docs/kernel-policy.md).
std::vector<PolicyMaps> PolicyStages(const PolicyMaps& from, const PolicyMaps& to);

// Whether a connect from `cgroup` to `ip`:`port` proceeds (access_verdict in socklb.bpf.c).
bool AccessProceeds(const PolicyMaps& maps, uint64_t cgroup, const std::string& ip, uint16_t port);

}  // namespace shunt::agent

#endif  // SHUNT_AGENT_DATAPLANE_POLICY_STAGES_H_
