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
  auto pod_cgroups = Family(
      "shunt_pod_cgroups_created_total",
      "Pod cgroups created under the node's pod cgroup root, by result: resolved at creation to "
      "a pod that policy knows (enforced from its first connect()), unknown then (its pod was "
      "not known to the agent yet: classified at the next cgroup rescan), or map_full (known, "
      "but its map entries could not be written: classified at the next rescan).",
      MetricType::Counter);
  auto not_understood = Family(
      "shunt_access_policies_not_understood",
      "Access policies this agent cannot fully read (an unknown action or unknown fields: a "
      "newer controller), enforced closed.",
      MetricType::Gauge);
  auto folded = Family("shunt_socklb_series_folded",
                       "Label sets of the socklb counters folded into source workload \"other\" "
                       "by the cardinality cap.",
                       MetricType::Gauge);

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

  // Counters are summed by label set: several kernel keys name one series (the ports of one
  // Service, the service ids behind one event). Over the cap, new label sets fold into source
  // workload "other" (counted), so that series neither flap nor repeat between scrapes.
  using LabelKey = std::vector<std::pair<std::string, std::string>>;
  enum Fam { kConns, kDenied, kEvents };
  std::map<std::pair<Fam, LabelKey>, double> agg;
  uint64_t folded_count = 0;
  auto add = [&](Fam fam, const std::vector<ClientMetric::Label>& labels, double v) {
    std::pair<Fam, LabelKey> key{fam, {}};
    for (const auto& l : labels) key.second.push_back({l.name, l.value});
    if (!agg.count(key) && agg.size() >= max_series_) {
      for (auto& [n, val] : key.second) {
        if (n.rfind("source_", 0) == 0) val = "other";
      }
      ++folded_count;
    }
    agg[key] += v;
  };
  double failed = 0;
  double pods_resolved = 0, pods_unknown = 0, pods_map_full = 0;
  auto stats = lb_.ReadStats();
  if (stats.ok()) {
    for (const auto& s : *stats) {
      auto labels = source(s.key.workload_id);
      switch (s.key.event) {
        case SHUNT_LB_REWRITTEN: {
          auto it = st->service_names.find(s.key.detail);
          auto [ns, name] =
              SplitName(it == st->service_names.end() ? "unknown/unknown" : it->second);
          labels.push_back({"destination_service_namespace", ns});
          labels.push_back({"destination_service_name", name});
          add(kConns, labels, s.value);
          break;
        }
        case SHUNT_LB_DENIED:
        case SHUNT_LB_NOT_ALLOWED: {
          auto it = st->policy_names.find(s.key.detail);
          labels.push_back({"policy", it == st->policy_names.end() ? "unknown" : it->second});
          labels.push_back({"reason", s.key.event == SHUNT_LB_DENIED ? "deny" : "not_allowed"});
          add(kDenied, labels, s.value);
          break;
        }
        case SHUNT_LB_NO_BACKEND:
        case SHUNT_LB_NO_STORAGE:
        case SHUNT_LB_STATS_FULL:
          labels.push_back({"event", s.key.event == SHUNT_LB_NO_BACKEND   ? "no_backend"
                                     : s.key.event == SHUNT_LB_NO_STORAGE ? "no_storage"
                                                                          : "stats_full"});
          add(kEvents, labels, s.value);
          break;
        case SHUNT_LB_POD_RESOLVED:
          pods_resolved += s.value;
          break;
        case SHUNT_LB_POD_UNKNOWN:
          pods_unknown += s.value;
          break;
        case SHUNT_LB_POD_MAP_FULL:
          pods_map_full += s.value;
          break;
        default:
          break;
      }
    }
    for (const auto& [key, v] : agg) {
      std::vector<ClientMetric::Label> labels;
      for (const auto& [n, val] : key.second) labels.push_back({n, val});
      auto& fam = key.first == kConns ? lb_conns : key.first == kDenied ? denied : events;
      fam.metric.push_back(Sample(labels, v, true));
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
  not_understood.metric.push_back(Sample({}, st->policies_not_understood, false));
  collect_error.metric.push_back(Sample({}, failed, false));
  folded.metric.push_back(Sample({}, static_cast<double>(folded_count), false));
  pod_cgroups.metric.push_back(Sample({{"result", "resolved"}}, pods_resolved, true));
  pod_cgroups.metric.push_back(Sample({{"result", "unknown"}}, pods_unknown, true));
  pod_cgroups.metric.push_back(Sample({{"result", "map_full"}}, pods_map_full, true));
  return {lb_conns, denied,        events, entries,    capacity,      overflow,
          errors,   collect_error, folded, pod_cgroups, not_understood};
}

}  // namespace shunt::agent
