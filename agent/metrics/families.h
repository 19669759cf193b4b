// Building blocks for collectors that produce prometheus-cpp MetricFamily values at scrape time
// (kernel counters read from BPF maps).
#pragma once

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

}  // namespace shunt::agent::metrics
