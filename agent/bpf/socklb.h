// Socket-level load balancing and access policy in the kernel: owns the socklb BPF object
// (cgroup connect4/connect6 + getpeername4/getpeername6), its pins under the bpffs and its
// attachments. The service-policy reconciler writes its maps through it; the metrics collector
// reads its per-CPU counters through it at scrape time.
//
// Install after Fastpath::Install: the pods map (shunt_pods_v1) is the fast path's, reused by pin
// name, so `pods_size` must equal the fast path's. Restart safety as the fast path: maps and links
// pinned, programs swapped in with bpf_link_update. Uninstall before Fastpath::Uninstall (the
// latter removes the pin directory).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shunt/socklb_abi.h"

struct shunt_socklb;  // the generated skeleton

namespace shunt::agent {

struct SockLbConfig {
  std::string pin_dir;
  std::string cgroup_root;
  uint32_t pods_size = 4096;  // must match FastpathConfig::pods_size
  uint32_t services_size = 4096;
  uint32_t slots_size = 65536;
  uint32_t policy_sources_size = 4096;
  uint32_t policy_dests_size = 16384;
  uint32_t stats_size = 16384;
};

// The kernel maps of the socklb object, as the reconciler names them.
enum class SockLbMap {
  kServices,
  kSlots,
  kPolicySources,
  kPolicyDests,
  kPolicyPorts,
  kPolicyNames,  // the agent's own record: policy bit -> name
  kPolicyPending,  // pod uid (shunt_pod_uid) -> policy mask, copied to kPolicySources at mkdir
};

// Link pins (the maps pin under their own names).
inline constexpr const char* kSockLbLinkPins[] = {"link_connect4", "link_connect6",
                                                  "link_getpeername4", "link_getpeername6",
                                                  "link_cgroup_mkdir"};

class SockLb {
 public:
  static absl::StatusOr<std::unique_ptr<SockLb>> Install(const SockLbConfig& config);
  // Detaches the links and removes the pins of this object under `pin_dir` (not the pods map,
  // which is the fast path's). Missing pieces are skipped.
  static absl::Status Uninstall(const std::string& pin_dir);

  ~SockLb();
  SockLb(const SockLb&) = delete;
  SockLb& operator=(const SockLb&) = delete;

  // Raw map access for the reconciler: key and value are the ABI structs' bytes.
  using Bytes = std::string;
  absl::StatusOr<std::map<Bytes, Bytes>> List(SockLbMap map) const;
  absl::Status Upsert(SockLbMap map, const Bytes& key, const Bytes& value);
  absl::Status Delete(SockLbMap map, const Bytes& key);

  struct Stat {
    shunt_lb_stats_key key;
    uint64_t value;
  };
  absl::StatusOr<std::vector<Stat>> ReadStats() const;
  absl::Status DeleteStatsOf(uint32_t workload_id);
  // Drops the counters of events whose detail is `detail` (a service id for SHUNT_LB_REWRITTEN,
  // a policy bit for SHUNT_LB_DENIED / SHUNT_LB_NOT_ALLOWED), in every workload.
  absl::Status DeleteStatsOfDetail(std::initializer_list<uint32_t> events,
                                   const std::set<uint32_t>& details);

  const SockLbConfig& config() const { return config_; }
  // Whether pod cgroups are resolved at mkdir (tp_btf/cgroup_mkdir could be attached); if not,
  // a new pod is known at the agent's next cgroup rescan.
  bool resolves_at_mkdir() const { return mkdir_; }

 private:
  explicit SockLb(SockLbConfig config) : config_(std::move(config)) {}
  absl::Status Load();
  absl::Status Attach(int index);
  int MapFd(SockLbMap map) const;

  SockLbConfig config_;
  shunt_socklb* skel_ = nullptr;
  int cgroup_fd_ = -1;
  int ncpus_ = 1;
  bool mkdir_ = false;
};
using SockLbPtr = std::unique_ptr<SockLb>;

}  // namespace shunt::agent
