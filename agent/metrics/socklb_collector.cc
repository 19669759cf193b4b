#include "agent/metrics/socklb_collector.h"

#include <map>
#include <tuple>

#include "agent/metrics/families.h"
#include "common/log.h"

namespace shunt::agent {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

using metrics::Family;
using metrics::Sample;

std::pair<std::string, std::string> SplitName(const std::string& ns_name) {
  const size_t slash = ns_name.find('/');
  if (slash == std::string::npos) return {"unknown", ns_name};
  return {ns_name.substr(0, slash), ns_name.substr(slash + 1)};
}

}  // namespace

SockLbCollector::SockLbCollector(const SockLb& lb, DirectoryFn directory, StatusFn status,
                                 size_t max_series)
    : lb_(lb),
      directory_(std::move(directory)),
      status_(std::move(status)),
      max_series_(max_series) {}

std::vector<MetricFamily> SockLbCollector::Collect() const {
  auto dir = directory_();
  auto st = status_();
  auto lb_conns = Family("shunt_service_connections_total",
                         "Connections to a Service VIP sent to a backend by the kernel at "
                         "connect() (socket-level load balancing).",
                         MetricType::Counter);
  auto denied = Family("shunt_access_denied_connections_total",
                       "connect() calls of meshed pods failed with EPERM by an access policy.",
                       MetricType::Counter);
  auto events = Family("shunt_socklb_events_total",
                       "connect() calls that took the normal path although they matched a "
                       "service (no_backend, no_storage), and counters that could not be "
                       "created (stats_full).",
                       MetricType::Counter);
  auto entries =
      Family("shunt_socklb_map_entries", "Entries written to each socklb map.", MetricType::Gauge);
  auto capacity =
      Family("shunt_socklb_map_capacity_entries",
             "Configured size of each socklb map (policies: the per-node cap).", MetricType::Gauge);
  auto overflow = Family("shunt_socklb_map_overflow_entries",
                         "Entries that did not fit their map in the last reconcile pass: those "
                         "services and policy entries take the normal path.",
                         MetricType::Gauge);
  auto errors =
      Family("shunt_socklb_reconcile_errors_total",
             "Service/policy reconcile passes that ended in an error.", MetricType::Counter);
  auto collect_error =
      Family("shunt_socklb_collect_error",
             "1 when reading the socklb counters failed in this scrape.", MetricType::Gauge);

  auto source = [&](uint32_t id) -> std::vector<ClientMetric::Label> {
    auto it = dir->find(id);
    if (it == dir->end()) {
      return {{"source_workload_namespace", "unknown"},
              {"source_workload", "unknown"},
              {"source_pod", "unknown"}};
    }
    return {{"source_workload_namespace", it->second.k8s_namespace},
            {"source_workload", it->second.owner},
            {"source_pod", it->second.name}};
  };

  double failed = 0;
  auto stats = lb_.ReadStats();
  if (stats.ok()) {
    size_t series = 0;
    for (const auto& s : *stats) {
      if (series++ >= max_series_) break;  // the cap of the fast path's families applies here too
      auto labels = source(s.key.workload_id);
      switch (s.key.event) {
        case SHUNT_LB_REWRITTEN: {
          auto it = st->service_names.find(s.key.detail);
          auto [ns, name] =
              SplitName(it == st->service_names.end() ? "unknown/unknown" : it->second);
          labels.push_back({"destination_service_namespace", ns});
          labels.push_back({"destination_service_name", name});
          lb_conns.metric.push_back(Sample(labels, s.value, true));
          break;
        }
        case SHUNT_LB_DENIED:
        case SHUNT_LB_NOT_ALLOWED: {
          auto it = st->policy_names.find(s.key.detail);
          labels.push_back({"policy", it == st->policy_names.end() ? "unknown" : it->second});
          labels.push_back({"reason", s.key.event == SHUNT_LB_DENIED ? "deny" : "not_allowed"});
          denied.metric.push_back(Sample(labels, s.value, true));
          break;
        }
        case SHUNT_LB_NO_BACKEND:
        case SHUNT_LB_NO_STORAGE:
        case SHUNT_LB_STATS_FULL:
          labels.push_back({"event", s.key.event == SHUNT_LB_NO_BACKEND   ? "no_backend"
                                     : s.key.event == SHUNT_LB_NO_STORAGE ? "no_storage"
                                                                          : "stats_full"});
          events.metric.push_back(Sample(labels, s.value, true));
          break;
        default:
          break;
      }
    }
  } else {
    failed = 1;
    SHUNT_LOG_EVERY_N_SEC(WARNING, 30) << "read socklb counters: " << stats.status().message();
  }
  for (const auto& [map, n] : st->entries)
    entries.metric.push_back(Sample({{"map", map}}, n, false));
  for (const auto& [map, n] : st->capacity) {
    capacity.metric.push_back(Sample({{"map", map}}, n, false));
  }
  for (const auto& [map, n] : st->overflow) {
    overflow.metric.push_back(Sample({{"map", map}}, n, false));
  }
  errors.metric.push_back(Sample({}, st->errors_total, true));
  collect_error.metric.push_back(Sample({}, failed, false));
  return {lb_conns, denied, events, entries, capacity, overflow, errors, collect_error};
}

}  // namespace shunt::agent
