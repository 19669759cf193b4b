// Building blocks for collectors that produce prometheus-cpp MetricFamily values at scrape time
// (kernel counters read from BPF maps).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"
#include "prometheus/metric_type.h"

namespace shunt::agent::metrics {

inline prometheus::ClientMetric Sample(std::vector<prometheus::ClientMetric::Label> labels,
                                       double value, bool counter) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  if (counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  return m;
}

inline prometheus::MetricFamily Family(std::string name, std::string help,
                                       prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

// A label value from the workload table, "unknown" where it had none.
inline std::string OrUnknown(const std::string& s) { return s.empty() ? "unknown" : s; }

// One observation into a histogram kept as per-bucket counts (not cumulative): the first bucket
// whose upper bound holds v; above the last, only +Inf (the count).
template <size_t N>
void Observe(std::array<uint64_t, N>& buckets, const std::array<double, N>& bounds, double v) {
  auto it = std::lower_bound(bounds.begin(), bounds.end(), v);
  if (it != bounds.end()) ++buckets[static_cast<size_t>(it - bounds.begin())];
}

// Those counts as Prometheus' cumulative buckets, with +Inf.
template <size_t N>
prometheus::ClientMetric::Histogram Histogram(const std::array<uint64_t, N>& buckets,
                                              const std::array<double, N>& bounds, uint64_t count,
                                              double sum) {
  prometheus::ClientMetric::Histogram h;
  h.sample_count = count;
  h.sample_sum = sum;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < N; ++i) {
    cumulative += buckets[i];
    h.bucket.push_back({cumulative, bounds[i]});
  }
  h.bucket.push_back({count, std::numeric_limits<double>::infinity()});
  return h;
}

// Families of one name made one (two sources of one family, e.g. Istio's TCP series: the text
// format allows each name once), in the order of their first appearance.
inline std::vector<prometheus::MetricFamily> MergeFamilies(std::vector<prometheus::MetricFamily> in) {
  std::vector<prometheus::MetricFamily> out;
  for (auto& f : in) {
    auto it = std::find_if(out.begin(), out.end(),
                           [&](const prometheus::MetricFamily& o) { return o.name == f.name; });
    if (it == out.end()) {
      out.push_back(std::move(f));
    } else {
      for (auto& m : f.metric) it->metric.push_back(std::move(m));
    }
  }
  return out;
}

// Istio's standard labels as its proxies report them (no mTLS identity here: principals
// unknown, security policy none; no pods: a workload's pods add up into one series), up to and
// with request_protocol; a request's response labels come next, then `IstioTrailingLabels`.
// Source and Service values are "unknown" where empty; the destination's are as given.
inline std::vector<prometheus::ClientMetric::Label> IstioLabels(
    const std::string& reporter, const std::string& source_namespace,
    const std::string& source_workload, const std::string& destination_namespace,
    const std::string& destination_workload, const std::string& service_namespace,
    const std::string& service_name, const std::string& protocol) {
  const std::string service =
      service_name.empty() ? "unknown"
                           : service_name + "." + service_namespace + ".svc.cluster.local";
  return {{"reporter", reporter},
          {"source_workload", OrUnknown(source_workload)},
          {"source_workload_namespace", OrUnknown(source_namespace)},
          {"source_canonical_service", OrUnknown(source_workload)},
          {"source_canonical_revision", "latest"},
          {"source_principal", "unknown"},
          {"destination_workload", destination_workload},
          {"destination_workload_namespace", destination_namespace},
          {"destination_canonical_service", destination_workload},
          {"destination_canonical_revision", "latest"},
          {"destination_principal", "unknown"},
          {"destination_service", service},
          {"destination_service_name", OrUnknown(service_name)},
          {"destination_service_namespace", OrUnknown(service_namespace)},
          {"request_protocol", protocol}};
}
inline void IstioTrailingLabels(std::vector<prometheus::ClientMetric::Label>& labels) {
  labels.push_back({"response_flags", "-"});
  labels.push_back({"connection_security_policy", "none"});
}

}  // namespace shunt::agent::metrics
