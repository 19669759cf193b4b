// What the benchmarks share: medians, and clients whose failure is said, not thrown.
#pragma once

#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/e2e/e2e_util.h"
#include "tests/testbed/testbed.h"

namespace shunt::bench {

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs `shunt-testpeer <args>` in `pod` (after `prefix`, e.g. taskset); its JSON, or {} (said
// on stderr) when it failed.
inline nlohmann::json Client(testbed::Testbed& bed, const testbed::Pod& pod,
                             std::vector<std::string> args, std::vector<std::string> prefix = {}) {
  auto r = e2e::RunTestpeer(bed, pod, std::move(args), std::chrono::seconds(300), std::move(prefix));
  if (!r.ok()) {
    std::fprintf(stderr, "client failed: %s\n", std::string(r.status().message()).c_str());
    return {};
  }
  return *r;
}

// A test bed of `nodes` x `pods_per_node`, or null (said on stderr).
inline std::unique_ptr<testbed::Testbed> CreateTestbed(int nodes, int pods_per_node) {
  testbed::Options opts;
  opts.nodes = nodes;
  opts.pods_per_node = pods_per_node;
  auto created = testbed::Testbed::Create(opts);
  if (!created.ok()) {
    std::fprintf(stderr, "test bed: %s\n", std::string(created.status().message()).c_str());
    return nullptr;
  }
  return std::move(*created);
}

}  // namespace shunt::bench
