// Exposes the connect-time load balancing and access policy (socklb) to Prometheus: the per-CPU
// kernel counters, summed at scrape time, labelled through the fast path reconciler's workload
// directory (source pod) and the service-policy reconciler's service and policy names; and the
// fill levels, capacities and overflow of the socklb maps from the last reconcile pass.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "agent/bpf/socklb.h"
#include "agent/dataplane/local_dataplane.h"
#include "agent/dataplane/service_policy.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace shunt::agent {

class SockLbCollector : public prometheus::Collectable {
 public:
  using DirectoryFn = std::function<std::shared_ptr<const WorkloadDirectory>()>;
  using StatusFn = std::function<std::shared_ptr<const ServicePolicyStatus>()>;
  SockLbCollector(const SockLb& lb, DirectoryFn directory, StatusFn status,
                  size_t max_series = 10000);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const SockLb& lb_;
  DirectoryFn directory_;
  StatusFn status_;
  size_t max_series_;
};

}  // namespace shunt::agent
