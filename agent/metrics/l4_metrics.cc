#include "agent/metrics/l4_metrics.h"

#include "absl/strings/str_cat.h"
#include "agent/dataplane/service_policy.h"
#include "agent/metrics/families.h"

namespace shunt::agent::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

struct Side {
  std::string ns, workload, pod;
};

Side OfWorkload(const shunt::v1::Workload* w) {
  if (w == nullptr) return {};
  return {w->namespace_(), w->owner().empty() ? w->name() : w->owner(), w->name()};
}

std::vector<ClientMetric::Label> Labels(const L4Key& k) {
  return {{"reporter", k.destination_reporter ? "destination" : "source"},
          {"source_workload_namespace", OrUnknown(k.source_namespace)},
          {"source_workload", OrUnknown(k.source_workload)},
          {"source_pod", OrUnknown(k.source_pod)},
          {"destination_workload_namespace", OrUnknown(k.destination_namespace)},
          {"destination_workload", OrUnknown(k.destination_workload)},
          {"destination_pod", OrUnknown(k.destination_pod)},
          {"destination_service_namespace", OrUnknown(k.service_namespace)},
          {"destination_service_name", OrUnknown(k.service_name)},
          {"request_protocol", "tcp"}};
}

// Istio's standard TCP labels.
std::vector<std::pair<std::string, std::string>> IstioTcpLabels(const L4Key& k) {
  auto labels = IstioLabels(k.destination_reporter ? "destination" : "source", k.source_namespace,
                            k.source_workload, OrUnknown(k.destination_namespace),
                            OrUnknown(k.destination_workload), k.service_namespace,
                            k.service_name, "tcp");
  IstioTrailingLabels(labels);
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& l : labels) out.emplace_back(std::move(l.name), std::move(l.value));
  return out;
}

}  // namespace

L4Key L4KeyOf(const shunt_l4_event& e, const PolicySnapshot* snapshot,
              const WorkloadDirectory& directory) {
  L4Key k;
  k.destination_reporter = (e.flags & SHUNT_L4_PASSIVE) != 0;
  Side self;
  std::string self_uid;
  if (auto it = directory.find(e.workload_id); it != directory.end()) {
    self = {it->second.k8s_namespace, it->second.owner.empty() ? it->second.name : it->second.owner,
            it->second.name};
    self_uid = it->second.uid;
  }
  const shunt::v1::Workload* peer = nullptr;
  if (snapshot != nullptr) {
    IpKey ip{};
    std::copy(e.remote_ip, e.remote_ip + 4, ip.addr);
    peer = WorkloadByIp(*snapshot, ip);
  }
  const Side other = OfWorkload(peer);
  const Side& source = k.destination_reporter ? other : self;
  const Side& destination = k.destination_reporter ? self : other;
  std::tie(k.source_namespace, k.source_workload, k.source_pod) =
      std::tie(source.ns, source.workload, source.pod);
  std::tie(k.destination_namespace, k.destination_workload, k.destination_pod) =
      std::tie(destination.ns, destination.workload, destination.pod);
  if (snapshot == nullptr) return k;
  if (e.flags & SHUNT_L4_VIP) {
    IpKey vip{};
    std::copy(e.vip, e.vip + 4, vip.addr);
    std::tie(k.service_namespace, k.service_name) = ServiceAt(*snapshot, vip, e.vip_port);
  }
  if (k.service_name.empty()) {
    const std::string server_uid =
        k.destination_reporter ? self_uid : (peer != nullptr ? peer->uid() : "");
    const uint16_t server_port = k.destination_reporter ? e.local_port : e.remote_port;
    if (!server_uid.empty()) {
      auto services = ServicesOf(*snapshot, server_uid, server_port);
      if (!services.empty()) std::tie(k.service_namespace, k.service_name) = services.front();
    }
  }
  return k;
}

L4Metrics::SeriesPtr L4Metrics::SeriesFor(const L4Key& key) {
  auto it = series_.find(key);
  if (it != series_.end()) return it->second;
  L4Key k = key;
  const bool other = series_.size() >= max_series_;
  if (other) {
    k = L4Key{};
    k.destination_reporter = key.destination_reporter;
    k.source_namespace = k.source_workload = k.source_pod = "other";
    k.destination_namespace = k.destination_workload = k.destination_pod = "other";
    k.service_namespace = k.service_name = "other";
    it = series_.find(k);
    if (it != series_.end()) return it->second;
  }
  auto s = std::make_shared<Series>();
  s->key = k;
  s->other = other;
  series_.emplace(k, s);
  return s;
}

L4Metrics::Identity L4Metrics::IdentityOf(const shunt_l4_event& e) {
  const bool passive = (e.flags & SHUNT_L4_PASSIVE) != 0;
  const bool vip = (e.flags & SHUNT_L4_VIP) != 0;
  return {e.workload_id,
          static_cast<uint32_t>(passive) | (static_cast<uint32_t>(vip) << 1),
          e.remote_ip[0],
          e.remote_ip[1],
          e.remote_ip[2],
          e.remote_ip[3],
          passive ? e.local_port : e.remote_port,  // the server's port (not the ephemeral one)
          vip ? e.vip[0] : 0u,
          vip ? e.vip[1] : 0u,
          vip ? e.vip[2] : 0u,
          vip ? e.vip[3] : 0u,
          vip ? e.vip_port : 0u};
}

void L4Metrics::Record(const shunt_l4_event& e, const KeyFn& key_of, uint64_t generation) {
  absl::MutexLock l(&mu_);
  ++events_;
  // Bounded: peers outside the cluster (a NodePort's clients) are many, their labels few.
  if (generation != generation_ || made_.size() >= 4 * max_series_ + 1024) {
    made_.clear();
    generation_ = generation;
  }
  auto open = open_.find(e.cookie);
  SeriesPtr series;
  if (open != open_.end()) {
    series = open->second;
  } else {
    SeriesPtr& made = made_[IdentityOf(e)];
    if (made == nullptr || made->gone) made = SeriesFor(key_of(e));
    series = made;
  }
  if (series->gone) return;  // its pod left: nothing more is shown for it
  if (series->other) ++folded_;
  Series& s = *series;
  const bool server = s.key.destination_reporter;
  switch (e.kind) {
    case SHUNT_L4_EV_OPENED: {
      ++s.opened;
      const double setup = e.setup_us / 1e6;
      // A server's end measures no setup (bpf/fastpath.bpf.c).
      if (!server) {
        ++s.setups;
        s.setup_sum += setup;
        Observe(s.setup, kConnectionSetupBuckets, setup);
      }
      if (open == open_.end() && open_.size() < max_open_) open_.emplace(e.cookie, series);
      break;
    }
    case SHUNT_L4_EV_CLOSED: {
      ++s.closed;
      const double seconds = e.duration_ns / 1e9;
      s.duration_sum += seconds;
      Observe(s.duration, kConnectionDurationBuckets, seconds);
      s.to_server += server ? e.bytes_received : e.bytes_sent;
      s.to_client += server ? e.bytes_sent : e.bytes_received;
      s.retransmits += e.retrans;
      if (e.srtt_us > 0) {
        const double rtt = e.srtt_us / 1e6;
        ++s.rtts;
        s.rtt_sum += rtt;
        Observe(s.rtt, kRttBuckets, rtt);
      }
      break;
    }
    case SHUNT_L4_EV_FAILED:
      ++s.failed;
      s.retransmits += e.retrans;
      break;
    default:
      break;
  }
  if (e.kind != SHUNT_L4_EV_OPENED && open != open_.end()) open_.erase(open);
}

void L4Metrics::Retain(const std::set<std::pair<std::string, std::string>>& local_pods) {
  auto gone = [&](const L4Key& k) {
    const auto& pod = k.destination_reporter
                          ? std::make_pair(k.destination_namespace, k.destination_pod)
                          : std::make_pair(k.source_namespace, k.source_pod);
    // "other" and a reporter the directory no longer knew (a late event) stay: bounded.
    return !pod.second.empty() && pod.second != "other" && !local_pods.count(pod);
  };
  absl::MutexLock l(&mu_);
  for (auto it = series_.begin(); it != series_.end();) {
    if (gone(it->first)) {
      it->second->gone = true;
      it = series_.erase(it);
    } else {
      ++it;
    }
  }
  absl::erase_if(open_, [](const auto& o) { return o.second->gone; });
  absl::erase_if(made_, [](const auto& m) { return m.second->gone; });
}

uint64_t L4Metrics::folded() const {
  absl::MutexLock l(&mu_);
  return folded_;
}

uint64_t L4Metrics::events() const {
  absl::MutexLock l(&mu_);
  return events_;
}

size_t L4Metrics::open() const {
  absl::MutexLock l(&mu_);
  return open_.size();
}

std::vector<MetricFamily> L4Metrics::Collect() const {
  std::vector<std::pair<L4Key, Series>> series;
  uint64_t folded = 0;
  {
    absl::MutexLock l(&mu_);
    series.reserve(series_.size());
    for (const auto& [k, s] : series_) series.emplace_back(k, *s);
    folded = folded_;
  }
  enum { kOpened, kClosed, kFailed, kToServer, kToClient, kRetrans, kDuration, kSetup, kRtt };
  std::vector<MetricFamily> out = {
      Family("shunt_connections_opened_total",
             "TCP connections of meshed pods established, from the kernel (sock_ops), by the "
             "pod at either end (reporter).",
             MetricType::Counter),
      Family("shunt_connections_closed_total", "Of those, the ones that ended.",
             MetricType::Counter),
      Family("shunt_connection_failures_total",
             "connect() calls of meshed pods that never established (refused, timed out, reset, "
             "abandoned).",
             MetricType::Counter),
      Family("shunt_connection_received_bytes_total",
             "Bytes of ended connections, client to server (TCP's and the fast path's).",
             MetricType::Counter),
      Family("shunt_connection_sent_bytes_total",
             "Bytes of ended connections, server to client (TCP's and the fast path's).",
             MetricType::Counter),
      Family("shunt_connection_retransmitted_segments_total",
             "TCP segments the reporting socket retransmitted.", MetricType::Counter),
      Family("shunt_connection_duration_seconds", "From establishment to the end, seconds.",
             MetricType::Histogram),
      Family("shunt_connection_setup_seconds",
             "A client's connect() to established, seconds (a server's end: none).",
             MetricType::Histogram),
      Family("shunt_connection_rtt_seconds",
             "TCP's smoothed round-trip time at a connection's end, seconds.",
             MetricType::Histogram),
  };
  // Istio's, as its sidecars report them by reporter.
  std::map<std::vector<std::pair<std::string, std::string>>, std::array<uint64_t, 4>> istio;
  for (const auto& [k, s] : series) {
    const auto labels = Labels(k);
    out[kOpened].metric.push_back(Sample(labels, static_cast<double>(s.opened), true));
    out[kClosed].metric.push_back(Sample(labels, static_cast<double>(s.closed), true));
    out[kFailed].metric.push_back(Sample(labels, static_cast<double>(s.failed), true));
    out[kToServer].metric.push_back(Sample(labels, static_cast<double>(s.to_server), true));
    out[kToClient].metric.push_back(Sample(labels, static_cast<double>(s.to_client), true));
    out[kRetrans].metric.push_back(Sample(labels, static_cast<double>(s.retransmits), true));
    ClientMetric m;
    m.label = labels;
    m.histogram = Histogram(s.duration, kConnectionDurationBuckets, s.closed, s.duration_sum);
    out[kDuration].metric.push_back(m);
    m.histogram = Histogram(s.setup, kConnectionSetupBuckets, s.setups, s.setup_sum);
    out[kSetup].metric.push_back(m);
    m.histogram = Histogram(s.rtt, kRttBuckets, s.rtts, s.rtt_sum);
    out[kRtt].metric.push_back(std::move(m));
    if (istio_ && !k.destination_reporter) {
      auto& sum = istio[IstioTcpLabels(k)];
      sum[0] += s.opened;
      sum[1] += s.closed;
      sum[2] += s.to_server;
      sum[3] += s.to_client;
    }
  }
  if (istio_) {
    // The source's view (the destination's is the relay's: request_metrics.h), each connection
    // once per reporter as Istio's.
    const char* kNames[][2] = {
        {"istio_tcp_connections_opened_total", "Istio's standard TCP connections opened."},
        {"istio_tcp_connections_closed_total", "Istio's standard TCP connections closed."},
        {"istio_tcp_received_bytes_total", "Istio's standard TCP bytes received (request)."},
        {"istio_tcp_sent_bytes_total", "Istio's standard TCP bytes sent (response)."}};
    for (size_t i = 0; i < 4; ++i) {
      MetricFamily f = Family(kNames[i][0], kNames[i][1], MetricType::Counter);
      for (const auto& [pairs, v] : istio) {
        std::vector<ClientMetric::Label> il;
        for (const auto& [n, value] : pairs) il.push_back({n, value});
        f.metric.push_back(Sample(std::move(il), static_cast<double>(v[i]), true));
      }
      out.push_back(std::move(f));
    }
  }
  MetricFamily f = Family("shunt_connection_metrics_folded_total",
                          "Connection events counted under the label set \"other\": the series "
                          "cap (--max-metric-series) was reached.",
                          MetricType::Counter);
  f.metric.push_back(Sample({}, static_cast<double>(folded), true));
  out.push_back(std::move(f));
  return out;
}

}  // namespace shunt::agent::metrics
