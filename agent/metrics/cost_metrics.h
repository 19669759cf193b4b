// Per-pod API cost on /metrics (COST_MODEL.md): what each calling pod spent on each priced
// Service, by route and model, in whole units of the policy's currency (kept as integers of
// nano-units until the scrape: a total over pods is the sum over requests, exactly); tokens by
// type; requests by outcome (priced, failed, unpriced, usage_missing). Labels come only from the
// workload table and policy (route and model names; anything else is "other"); at most
// `max_series` label sets per family, beyond folded into "other" (counted). A calling pod's
// series go when it leaves the cluster (RetainSourcePods). Thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "agent/cost/cost_policy.h"
#include "prometheus/metric_family.h"

namespace shunt::agent::metrics {

struct CostKey {
  std::string source_namespace, source_workload, source_pod;  // "" unknown
  std::string service_namespace, service_name;
  std::string route, model;  // from policy, or "other"; model "" for a request without tokens
  std::string currency;
  auto Tie() const {
    return std::tie(source_namespace, source_workload, source_pod, service_namespace, service_name,
                    route, model, currency);
  }
  bool operator<(const CostKey& o) const { return Tie() < o.Tie(); }
};

class CostMetrics {
 public:
  explicit CostMetrics(size_t max_series) : max_series_(max_series) {}

  void Record(const CostKey& key, const cost::Charge& charge);
  // The calling pods still in the cluster, as (namespace, name): every other pod's series go.
  void RetainSourcePods(const std::set<std::pair<std::string, std::string>>& pods);
  std::vector<prometheus::MetricFamily> Collect() const;

  // Totals, for tests and the demo: nano-units spent over every series of `currency`.
  uint64_t TotalNano(const std::string& currency) const;
  uint64_t folded() const;

 private:
  static constexpr size_t kResults = 4;  // cost::CostResult's values
  struct Series {
    uint64_t nano = 0;
    std::array<uint64_t, kResults> requests{};
    uint64_t input = 0, cached_input = 0, cache_creation = 0, output = 0, reasoning = 0;
  };
  const size_t max_series_;
  mutable absl::Mutex mu_;
  std::map<CostKey, Series> series_ ABSL_GUARDED_BY(mu_);
  uint64_t folded_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace shunt::agent::metrics
