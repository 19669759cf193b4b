#include "agent/metrics/cost_metrics.h"

#include <algorithm>
#include <limits>
#include <tuple>

#include "agent/metrics/families.h"

namespace shunt::agent::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

std::vector<ClientMetric::Label> Labels(const CostKey& k) {
  return {{"source_workload_namespace", OrUnknown(k.source_namespace)},
          {"source_workload", OrUnknown(k.source_workload)},
          {"source_pod", OrUnknown(k.source_pod)},
          {"destination_service_namespace", k.service_namespace},
          {"destination_service_name", k.service_name},
          {"route", k.route},
          {"model", k.model}};
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

GenAiCall GenAiCallOf(const cost::Charge& charge, absl::Time start, absl::Time end,
                      absl::Time first_event) {
  const cost::Usage::Billable& t = charge.tokens;
  GenAiCall call{.input_tokens = t.input + t.cached_input + t.cache_creation,
                 .output_tokens = t.output + t.reasoning,
                 .usage = charge.tokens_priced || charge.result == cost::CostResult::kUnpriced,
                 .seconds = end > start ? absl::ToDoubleSeconds(end - start) : 0.0};
  if (first_event != absl::InfinitePast()) {
    call.first_token_seconds = std::max(0.0, absl::ToDoubleSeconds(first_event - start));
  }
  return call;
}

std::string GenAiOperation(std::string_view path) {
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  if (EndsWith(path, "/chat/completions") || EndsWith(path, "/responses") ||
      EndsWith(path, "/messages")) {
    return "chat";
  }
  if (EndsWith(path, "/completions")) return "text_completion";
  if (EndsWith(path, "/embeddings")) return "embeddings";
  return "other";
}

void CostMetrics::RecordGenAi(const GenAiKey& in, const GenAiCall& call) {
  absl::MutexLock l(&mu_);
  GenAiKey key = in;
  if (gen_ai_.find(key) == gen_ai_.end() && gen_ai_.size() >= max_series_) {
    key.source_namespace = key.source_workload = "other";
    ++folded_;
  }
  GenAiSeries& s = gen_ai_[key];
  ++s.calls;
  s.seconds += call.seconds;
  Observe(s.duration, kGenAiDurationBuckets, call.seconds);
  if (call.usage) {
    ++s.with_usage;
    s.input += call.input_tokens;
    s.output += call.output_tokens;
    Observe(s.input_buckets, kGenAiTokenBuckets, static_cast<double>(call.input_tokens));
    Observe(s.output_buckets, kGenAiTokenBuckets, static_cast<double>(call.output_tokens));
  }
  if (call.first_token_seconds >= 0) {
    ++s.streams;
    s.first_token_seconds += call.first_token_seconds;
    Observe(s.first_token, kGenAiFirstTokenBuckets, call.first_token_seconds);
  }
}

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

void CostMetrics::RetainSourcePods(const std::set<std::pair<std::string, std::string>>& pods,
                                   const std::set<std::pair<std::string, std::string>>& workloads) {
  absl::MutexLock l(&mu_);
  for (auto it = series_.begin(); it != series_.end();) {
    const CostKey& k = it->first;
    const bool keep = k.source_pod.empty() || k.source_pod == "other" ||
                      pods.contains({k.source_namespace, k.source_pod});
    it = keep ? std::next(it) : series_.erase(it);
  }
  // The GenAI series are per workload: kept while the workload table has it.
  for (auto it = gen_ai_.begin(); it != gen_ai_.end();) {
    const GenAiKey& k = it->first;
    const bool keep = k.source_workload.empty() || k.source_workload == "other" ||
                      workloads.contains({k.source_namespace, k.source_workload});
    it = keep ? std::next(it) : gen_ai_.erase(it);
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
  MetricFamily tokens_h = Family(
      "gen_ai_client_token_usage",
      "OpenTelemetry GenAI: tokens per call as the API reported them (gen_ai_token_type input: "
      "cached included; output: reasoning included), per calling workload.",
      MetricType::Histogram);
  MetricFamily duration_h =
      Family("gen_ai_client_operation_duration_seconds",
             "OpenTelemetry GenAI: a call's duration, request head to response end, seconds.",
             MetricType::Histogram);
  MetricFamily first_token_h = Family(
      "gen_ai_server_time_to_first_token_seconds",
      "OpenTelemetry GenAI: a streamed call's time to its first event, from the request head, "
      "seconds (measured where the call arrives, next to the server).",
      MetricType::Histogram);
  std::map<GenAiKey, GenAiSeries> gen_ai;
  {
    absl::MutexLock l(&mu_);
    gen_ai = gen_ai_;
  }
  for (const auto& [k, s] : gen_ai) {
    const std::vector<ClientMetric::Label> labels = {
        {"source_workload_namespace", OrUnknown(k.source_namespace)},
        {"source_workload", OrUnknown(k.source_workload)},
        {"destination_service_namespace", k.service_namespace},
        {"destination_service_name", k.service_name},
        {"gen_ai_request_model", k.model},
        {"gen_ai_operation_name", k.operation}};
    ClientMetric m;
    m.label = labels;
    m.histogram = Histogram(s.duration, kGenAiDurationBuckets, s.calls, s.seconds);
    duration_h.metric.push_back(m);
    if (s.with_usage > 0) {
      for (const auto& [type, buckets, sum] :
           {std::tuple{"input", &s.input_buckets, s.input},
            std::tuple{"output", &s.output_buckets, s.output}}) {
        ClientMetric t;
        t.label = labels;
        t.label.push_back({"gen_ai_token_type", type});
        t.histogram =
            Histogram(*buckets, kGenAiTokenBuckets, s.with_usage, static_cast<double>(sum));
        tokens_h.metric.push_back(std::move(t));
      }
    }
    if (s.streams > 0) {
      ClientMetric f;
      f.label = labels;
      f.histogram =
          Histogram(s.first_token, kGenAiFirstTokenBuckets, s.streams, s.first_token_seconds);
      first_token_h.metric.push_back(std::move(f));
    }
  }
  MetricFamily folded_family =
      Family("shunt_api_cost_metrics_folded_total",
             "Priced requests recorded under the source \"other\": the cost metrics' series cap "
             "(--max-metric-series) was reached.",
             MetricType::Counter);
  folded_family.metric.push_back(Sample({}, static_cast<double>(folded), true));
  return {std::move(cost),     std::move(tokens),     std::move(requests),
          std::move(tokens_h), std::move(duration_h), std::move(first_token_h),
          std::move(folded_family)};
}

}  // namespace shunt::agent::metrics
