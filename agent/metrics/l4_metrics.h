// L4 metrics of every TCP connection of a meshed pod, from the kernel (bpf/fastpath.bpf.c): the
// sock_ops program sends an event when a connection of a meshed pod's socket is established and
// one when it ends, with TCP's counters and the bytes the fast path moved around TCP; the agent
// reads them from a ring buffer (L4EventReader) and aggregates them here by reporter, source and
// destination. Spliced connections, connections the relay carries to a pod, and connections
// leaving for other nodes are all counted, each by the meshed pods at its ends: the client's
// socket reports as reporter="source", the server's as reporter="destination".
//
// Label values come only from the workload table and the Services of policy (never an IP or a
// port): what they do not know is "unknown". At most `max_series` label sets; beyond, folded into
// a set named "other" (counted). The series of a local pod go when it leaves the node (Retain).
// Thread-safe: the reader records, a scrape collects.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "agent/dataplane/local_dataplane.h"
#include "agent/policy/policy_store.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "shunt/fastpath_abi.h"

namespace shunt::agent::metrics {

struct L4Key {
  bool destination_reporter = false;  // the server's socket reported it (else the client's)
  std::string source_namespace, source_workload, source_pod;
  std::string destination_namespace, destination_workload, destination_pod;
  std::string service_namespace, service_name;

  auto Tie() const {
    return std::tie(destination_reporter, source_namespace, source_workload, source_pod,
                    destination_namespace, destination_workload, destination_pod,
                    service_namespace, service_name);
  }
  bool operator<(const L4Key& o) const { return Tie() < o.Tie(); }
};

// Upper bounds of the histograms, seconds.
inline constexpr std::array<double, 15> kConnectionDurationBuckets = {
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 86400};
inline constexpr std::array<double, 15> kConnectionSetupBuckets = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,   0.1,     0.25,   0.5,   1,      3,      10};
inline constexpr std::array<double, 15> kRttBuckets = {
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
    0.005,   0.01,     0.025,   0.05,   0.1,     0.25,   1};

// Who one event's connection is between: the reporting pod (its workload id, through the
// directory) and its peer (by its IP, in the workload table of `snapshot`), and the Service: the
// one whose address connect() named (the socket load balancer rewrote it), else the first, by
// namespace and name, of the Services that have the server pod's port among their endpoints.
L4Key L4KeyOf(const shunt_l4_event& e, const PolicySnapshot* snapshot,
              const WorkloadDirectory& directory);

class L4Metrics : public prometheus::Collectable {
 public:
  using KeyFn = std::function<L4Key(const shunt_l4_event&)>;
  // `max_open`: open connections whose label set is kept (beyond: resolved again at the end).
  L4Metrics(size_t max_series, bool istio, size_t max_open = 1 << 18)
      : max_series_(max_series), istio_(istio), max_open_(max_open) {}

  // One event of the kernel's. A connection keeps the label set it got when it opened, so that
  // all its figures go to one series; `key_of` makes it. Label sets are kept per reporting pod,
  // peer and server port while `generation` (the workload table's and policy's version) stays:
  // most events then cost a hash lookup.
  void Record(const shunt_l4_event& e, const KeyFn& key_of, uint64_t generation = 0);

  // The series (and the open connections) whose reporting pod (namespace, name) is not in
  // `local_pods` go.
  void Retain(const std::set<std::pair<std::string, std::string>>& local_pods);
  std::vector<prometheus::MetricFamily> Collect() const override;
  uint64_t folded() const;  // events recorded under "other"
  uint64_t events() const;  // events recorded
  size_t open() const;      // open connections whose label set is kept

 private:
  struct Series {
    L4Key key;
    bool gone = false;   // out of series_ (its pod left): what still comes to it is dropped
    bool other = false;  // the label set "other" (beyond the cap)
    uint64_t opened = 0, closed = 0, failed = 0;
    uint64_t to_server = 0, to_client = 0, retransmits = 0;
    double duration_sum = 0, setup_sum = 0, rtt_sum = 0;
    uint64_t setups = 0, rtts = 0;
    std::array<uint64_t, kConnectionDurationBuckets.size()> duration{};
    std::array<uint64_t, kConnectionSetupBuckets.size()> setup{};
    std::array<uint64_t, kRttBuckets.size()> rtt{};
  };
  using SeriesPtr = std::shared_ptr<Series>;
  SeriesPtr SeriesFor(const L4Key& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What decides an event's labels: the reporter, its flags, the peer, the server's port, the
  // Service address.
  using Identity = std::array<uint32_t, 12>;
  static Identity IdentityOf(const shunt_l4_event& e);
  const size_t max_series_;
  const bool istio_;
  const size_t max_open_;
  mutable absl::Mutex mu_;
  std::map<L4Key, SeriesPtr> series_ ABSL_GUARDED_BY(mu_);
  // The series of each open connection, by socket cookie.
  absl::flat_hash_map<uint64_t, SeriesPtr> open_ ABSL_GUARDED_BY(mu_);
  // Label sets already made, while `generation_` holds.
  absl::flat_hash_map<Identity, SeriesPtr> made_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t folded_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t events_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace shunt::agent::metrics
