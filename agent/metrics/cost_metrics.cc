#include "agent/metrics/cost_metrics.h"

#include "agent/metrics/families.h"

namespace shunt::agent::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

std::string OrUnknown(const std::string& s) { return s.empty() ? "unknown" : s; }

std::vector<ClientMetric::Label> Labels(const CostKey& k) {
  return {{"source_workload_namespace", OrUnknown(k.source_namespace)},
          {"source_workload", OrUnknown(k.source_workload)},
          {"source_pod", OrUnknown(k.source_pod)},
          {"destination_service_namespace", k.service_namespace},
          {"destination_service_name", k.service_name},
          {"route", k.route},
          {"model", k.model}};
}

}  // namespace

void CostMetrics::Record(const CostKey& key, const cost::Charge& charge) {
  absl::MutexLock l(&mu_);
  auto it = series_.find(key);
  if (it == series_.end()) {
    if (series_.size() >= max_series_) {
      CostKey other = key;
      other.source_namespace = other.source_workload = other.source_pod = "other";
      it = series_.find(other);
      if (it == series_.end()) it = series_.emplace(other, Series{}).first;
      ++folded_;
    } else {
      it = series_.emplace(key, Series{}).first;
    }
  }
  Series& s = it->second;
  s.nano = charge.nano > UINT64_MAX - s.nano ? UINT64_MAX : s.nano + charge.nano;  // saturates
  ++s.requests[static_cast<size_t>(charge.result)];
  s.input += charge.tokens.input;
  s.cached_input += charge.tokens.cached_input;
  s.cache_creation += charge.tokens.cache_creation;
  s.output += charge.tokens.output;
  s.reasoning += charge.tokens.reasoning;
}

void CostMetrics::RetainSourcePods(const std::set<std::pair<std::string, std::string>>& pods) {
  absl::MutexLock l(&mu_);
  for (auto it = series_.begin(); it != series_.end();) {
    const CostKey& k = it->first;
    const bool keep = k.source_pod.empty() || k.source_pod == "other" ||
                      pods.contains({k.source_namespace, k.source_pod});
    it = keep ? std::next(it) : series_.erase(it);
  }
}

uint64_t CostMetrics::TotalNano(const std::string& currency) const {
  absl::MutexLock l(&mu_);
  uint64_t total = 0;
  for (const auto& [k, s] : series_) {
    if (k.currency == currency) total += s.nano;
  }
  return total;
}

uint64_t CostMetrics::folded() const {
  absl::MutexLock l(&mu_);
  return folded_;
}

std::vector<MetricFamily> CostMetrics::Collect() const {
  MetricFamily cost = Family(
      "shunt_api_cost_total",
      "What calling pods spent on Services an ApiCostPolicy prices, in whole units of its "
      "currency (each request's cost rounded once to a nano-unit).",
      MetricType::Counter);
  MetricFamily tokens = Family("shunt_api_tokens_total",
                               "Tokens the priced APIs reported, by type, as billed (input: not "
                               "read from cache; output: without reasoning when it has a price "
                               "of its own).",
                               MetricType::Counter);
  MetricFamily requests =
      Family("shunt_api_requests_total",
             "Requests to priced Services, by outcome: priced, failed (non-2xx or a gRPC error: "
             "the route price only), unpriced (a model without a price), usage_missing (a "
             "successful token request whose response reported no usage: never guessed).",
             MetricType::Counter);
  std::map<CostKey, Series> series;
  uint64_t folded = 0;
  {
    absl::MutexLock l(&mu_);
    series = series_;
    folded = folded_;
  }
  for (const auto& [k, s] : series) {
    // The currency on every family: a policy whose currency changed has series of each.
    auto labels = Labels(k);
    labels.push_back({"currency", k.currency});
    cost.metric.push_back(Sample(labels, static_cast<double>(s.nano) / cost::kNanoPerUnit, true));
    const std::pair<const char*, uint64_t> types[] = {{"input", s.input},
                                                      {"cached_input", s.cached_input},
                                                      {"cache_creation_input", s.cache_creation},
                                                      {"output", s.output},
                                                      {"reasoning", s.reasoning}};
    if (!k.model.empty()) {
      for (const auto& [type, n] : types) {
        auto l = labels;
        l.push_back({"type", type});
        tokens.metric.push_back(Sample(std::move(l), static_cast<double>(n), true));
      }
    }
    for (size_t r = 0; r < kResults; ++r) {
      if (s.requests[r] == 0) continue;
      auto l = labels;
      l.push_back({"result", std::string(cost::CostResultName(static_cast<cost::CostResult>(r)))});
      requests.metric.push_back(Sample(std::move(l), static_cast<double>(s.requests[r]), true));
    }
  }
  MetricFamily folded_family =
      Family("shunt_api_cost_metrics_folded_total",
             "Priced requests recorded under the source \"other\": the cost metrics' series cap "
             "(--max-metric-series) was reached.",
             MetricType::Counter);
  folded_family.metric.push_back(Sample({}, static_cast<double>(folded), true));
  return {std::move(cost), std::move(tokens), std::move(requests), std::move(folded_family)};
}

}  // namespace shunt::agent::metrics
