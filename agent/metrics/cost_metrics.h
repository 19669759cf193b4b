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
#include <string_view>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
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

// One LLM call, for the OpenTelemetry GenAI conventions' metrics (gen_ai_*), per calling
// workload (not pod: these are histograms), destination Service, model (as policy names it) and
// operation (chat, text_completion, embeddings, other: from the path).
struct GenAiKey {
  std::string source_namespace, source_workload;
  std::string service_namespace, service_name;
  std::string model, operation;
  auto Tie() const {
    return std::tie(source_namespace, source_workload, service_namespace, service_name, model,
                    operation);
  }
  bool operator<(const GenAiKey& o) const { return Tie() < o.Tie(); }
};
struct GenAiCall {
  uint64_t input_tokens = 0, output_tokens = 0;  // all input (cached too), all output
  bool usage = false;                            // the response reported them
  double seconds = 0;                            // request head to response end
  double first_token_seconds = -1;               // a stream's first event (-1: not a stream)
};
// A priced call's GenAI figures: its tokens as billed (input: cached and cache writes too;
// output: reasoning too; reported when it was priced or its model unpriced), its duration from
// `start` to `end`, and a stream's first event (`first_event`, InfinitePast: none).
GenAiCall GenAiCallOf(const cost::Charge& charge, absl::Time start, absl::Time end,
                      absl::Time first_event);
// The operation a path names ("/v1/chat/completions": chat; ".../completions": text_completion;
// ".../embeddings": embeddings; ".../responses", ".../messages": chat; else other).
std::string GenAiOperation(std::string_view path);

// OpenTelemetry GenAI buckets: token counts 1, 4, 16, ... 4^13; durations 0.01 ... 81.92 s;
// time to first token 0.001 ... 10 s.
inline constexpr std::array<double, 14> kGenAiTokenBuckets = {
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864};
inline constexpr std::array<double, 14> kGenAiDurationBuckets = {
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92};
inline constexpr std::array<double, 16> kGenAiFirstTokenBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0};

class CostMetrics {
 public:
  explicit CostMetrics(size_t max_series) : max_series_(max_series) {}

  void Record(const CostKey& key, const cost::Charge& charge);
  void RecordGenAi(const GenAiKey& key, const GenAiCall& call);
  // The calling pods still in the cluster, as (namespace, name), and their workloads (namespace,
  // owner or pod name): every other pod's series go, and every other workload's GenAI series.
  void RetainSourcePods(const std::set<std::pair<std::string, std::string>>& pods,
                        const std::set<std::pair<std::string, std::string>>& workloads = {});
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
  struct GenAiSeries {
    uint64_t calls = 0;
    double seconds = 0;
    std::array<uint64_t, kGenAiDurationBuckets.size()> duration{};
    uint64_t with_usage = 0;  // calls whose tokens are in the token histograms
    uint64_t input = 0, output = 0;
    std::array<uint64_t, kGenAiTokenBuckets.size()> input_buckets{}, output_buckets{};
    uint64_t streams = 0;
    double first_token_seconds = 0;
    std::array<uint64_t, kGenAiFirstTokenBuckets.size()> first_token{};
  };
  const size_t max_series_;
  mutable absl::Mutex mu_;
  std::map<CostKey, Series> series_ ABSL_GUARDED_BY(mu_);
  std::map<GenAiKey, GenAiSeries> gen_ai_ ABSL_GUARDED_BY(mu_);
  uint64_t folded_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace shunt::agent::metrics
