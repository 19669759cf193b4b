// Reading prometheus-cpp MetricFamily values in unit tests of collectors.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "prometheus/metric_family.h"

namespace shunt::agent::metrics::families_test {

// The family named `name` in `fs` (nullptr: none).
inline const prometheus::MetricFamily* Find(const std::vector<prometheus::MetricFamily>& fs,
                                            const std::string& name) {
  for (const auto& f : fs) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

// A sample's labels, by name.
inline std::map<std::string, std::string> LabelsOf(const prometheus::ClientMetric& m) {
  std::map<std::string, std::string> out;
  for (const auto& l : m.label) out[l.name] = l.value;
  return out;
}

}  // namespace shunt::agent::metrics::families_test
