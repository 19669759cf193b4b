// Exposes the fast path's kernel counters to Prometheus. The counters live in per-CPU BPF maps and
// are read and summed at scrape time (never pushed per packet); workload ids are turned into
// Istio-style labels through the reconciler's directory. Series of a workload disappear when it
// leaves the node (the reconciler deletes its counters). Label cardinality is capped: pairs beyond
// `max_series` fold into workload "other", and the folding is itself exported.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/bpf/fastpath.h"
#include "agent/dataplane/local_dataplane.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace shunt::agent {

class FastpathCollector : public prometheus::Collectable {
 public:
  using DirectoryFn = std::function<std::shared_ptr<const WorkloadDirectory>()>;
  FastpathCollector(const Fastpath& fastpath, DirectoryFn directory, size_t max_series = 10000);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const Fastpath& fastpath_;
  DirectoryFn directory_;
  size_t max_series_;
};

// Names of the verdict label values, indexed by enum shunt_msg_verdict.
const char* MsgVerdictReason(uint32_t verdict);

}  // namespace shunt::agent
