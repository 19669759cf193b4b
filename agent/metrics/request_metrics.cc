#include "agent/metrics/request_metrics.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "agent/metrics/families.h"

namespace shunt::agent::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// The series of one destination pod out of `series` (keyed by RequestKey or ConnectionKey).
template <typename Map>
void EraseDestinationPod(Map& series, const std::string& ns, const std::string& name) {
  for (auto it = series.begin(); it != series.end();) {
    if (it->first.destination_namespace == ns && it->first.destination_pod == name) {
      it = series.erase(it);
    } else {
      ++it;
    }
  }
}

// shunt's own labels (docs/metrics.md).
std::vector<ClientMetric::Label> Labels(const RequestKey& k) {
  return {{"reporter", "destination"},
          {"source_workload_namespace", OrUnknown(k.source_namespace)},
          {"source_workload", OrUnknown(k.source_workload)},
          {"destination_workload_namespace", k.destination_namespace},
          {"destination_workload", k.destination_workload},
          {"destination_pod", k.destination_pod},
          {"destination_service_namespace", OrUnknown(k.service_namespace)},
          {"destination_service_name", OrUnknown(k.service_name)},
          {"request_protocol", k.grpc ? "grpc" : "http"},
          {"response_code", absl::StrCat(k.response_code)},
          {"grpc_response_status", k.grpc_status < 0 ? "" : absl::StrCat(k.grpc_status)}};
}

// Istio's standard labels, as its sidecars and ztunnel's waypoints report them at the
// destination.
std::vector<ClientMetric::Label> IstioLabels(const RequestKey& k) {
  auto labels = metrics::IstioLabels("destination", k.source_namespace, k.source_workload,
                                     k.destination_namespace, k.destination_workload,
                                     k.service_namespace, k.service_name,
                                     k.grpc ? "grpc" : "http");
  labels.push_back({"response_code", absl::StrCat(k.response_code)});
  labels.push_back(
      {"grpc_response_status", k.grpc_status < 0 ? "" : absl::StrCat(k.grpc_status)});
  IstioTrailingLabels(labels);
  return labels;
}

}  // namespace

void RequestMetrics::Record(const RequestKey& in, const ExchangeRecord& r) {
  const double seconds = r.end > r.start ? absl::ToDoubleSeconds(r.end - r.start) : 0.0;
  // Values the upstream chooses, bounded: a status outside HTTP's is none (0), a gRPC status
  // outside gRPC's 0..16 is UNKNOWN (2), as gRPC's clients read it.
  RequestKey key = in;
  if (key.response_code < 100 || key.response_code > 599) key.response_code = 0;
  if (key.grpc_status < -1 || key.grpc_status > 16) key.grpc_status = 2;
  absl::MutexLock l(&mu_);
  auto it = series_.find(key);
  if (it == series_.end()) {
    if (series_.size() >= max_series_) {
      RequestKey other;
      other.source_namespace = other.source_workload = "other";
      other.destination_namespace = key.destination_namespace;
      other.destination_workload = other.destination_pod = "other";
      other.service_namespace = other.service_name = "other";
      other.grpc = key.grpc;
      other.response_code = key.response_code / 100 * 100;  // its class: 2xx as 200
      other.grpc_status = key.grpc_status;
      // Beyond the cap by at most these: per namespace, 6 classes x 18 gRPC statuses x 2.
      it = series_.find(other);
      if (it == series_.end()) it = series_.emplace(other, Series{}).first;
      ++folded_;
    } else {
      it = series_.emplace(key, Series{}).first;
    }
  }
  Series& s = it->second;
  ++s.requests;
  s.request_bytes += r.request_bytes;
  s.response_bytes += r.response_bytes;
  s.duration_sum += seconds;
  Observe(s.duration, kDurationBucketsSeconds, seconds);
  if (istio_) {
    Observe(s.istio_ms, kIstioBuckets, seconds * 1000);
    Observe(s.istio_request_bytes, kIstioBuckets, static_cast<double>(r.request_bytes));
    Observe(s.istio_response_bytes, kIstioBuckets, static_cast<double>(r.response_bytes));
  }
}

void RequestMetrics::ForgetDestinationPod(const std::string& ns, const std::string& name) {
  absl::MutexLock l(&mu_);
  EraseDestinationPod(series_, ns, name);
}

uint64_t RequestMetrics::folded() const {
  absl::MutexLock l(&mu_);
  return folded_;
}

std::vector<MetricFamily> RequestMetrics::Collect() const {
  MetricFamily requests = Family("shunt_requests_total",
                                 "HTTP and gRPC requests the relay read where they arrived, by "
                                 "source, destination and response.",
                                 MetricType::Counter);
  MetricFamily duration =
      Family("shunt_request_duration_seconds",
             "From a request's head to the end of its response, seconds.", MetricType::Histogram);
  MetricFamily request_bytes =
      Family("shunt_request_bytes_total", "Body bytes of those requests (client to server).",
             MetricType::Counter);
  MetricFamily response_bytes =
      Family("shunt_response_bytes_total", "Body bytes of their responses (server to client).",
             MetricType::Counter);
  MetricFamily istio_requests =
      Family("istio_requests_total", "Istio's standard request count.", MetricType::Counter);
  MetricFamily istio_duration =
      Family("istio_request_duration_milliseconds",
             "Istio's standard request duration, milliseconds.", MetricType::Histogram);
  MetricFamily istio_request_bytes = Family(
      "istio_request_bytes", "Istio's standard request body sizes, bytes.", MetricType::Histogram);
  MetricFamily istio_response_bytes =
      Family("istio_response_bytes", "Istio's standard response body sizes, bytes.",
             MetricType::Histogram);
  // A copy, so that the relay's loops do not wait on the labels built below.
  std::map<RequestKey, Series> series;
  uint64_t folded = 0;
  {
    absl::MutexLock l(&mu_);
    series = series_;
    folded = folded_;
  }
  // Istio's label sets have no pod: the series of a workload's pods are added up into one.
  std::map<std::vector<std::pair<std::string, std::string>>, Series> istio;
  for (const auto& [k, s] : series) {
    const auto labels = Labels(k);
    requests.metric.push_back(Sample(labels, static_cast<double>(s.requests), true));
    request_bytes.metric.push_back(Sample(labels, static_cast<double>(s.request_bytes), true));
    response_bytes.metric.push_back(Sample(labels, static_cast<double>(s.response_bytes), true));
    ClientMetric h;
    h.label = labels;
    h.histogram = Histogram(s.duration, kDurationBucketsSeconds, s.requests, s.duration_sum);
    duration.metric.push_back(std::move(h));
    if (!istio_) continue;
    std::vector<std::pair<std::string, std::string>> il;
    for (const auto& l : IstioLabels(k)) il.emplace_back(l.name, l.value);
    Series& sum = istio[il];
    sum.requests += s.requests;
    sum.request_bytes += s.request_bytes;
    sum.response_bytes += s.response_bytes;
    sum.duration_sum += s.duration_sum;
    for (size_t i = 0; i < kIstioBuckets.size(); ++i) {
      sum.istio_ms[i] += s.istio_ms[i];
      sum.istio_request_bytes[i] += s.istio_request_bytes[i];
      sum.istio_response_bytes[i] += s.istio_response_bytes[i];
    }
  }
  for (const auto& [pairs, s] : istio) {
    std::vector<ClientMetric::Label> il;
    for (const auto& [n, v] : pairs) il.push_back({n, v});
    istio_requests.metric.push_back(Sample(il, static_cast<double>(s.requests), true));
    ClientMetric ih;
    ih.label = il;
    ih.histogram = Histogram(s.istio_ms, kIstioBuckets, s.requests, s.duration_sum * 1000);
    istio_duration.metric.push_back(ih);
    ih.histogram = Histogram(s.istio_request_bytes, kIstioBuckets, s.requests,
                             static_cast<double>(s.request_bytes));
    istio_request_bytes.metric.push_back(ih);
    ih.histogram = Histogram(s.istio_response_bytes, kIstioBuckets, s.requests,
                             static_cast<double>(s.response_bytes));
    istio_response_bytes.metric.push_back(ih);
  }
  MetricFamily folded_family =
      Family("shunt_request_metrics_folded_total",
             "Requests recorded under the label set \"other\": the request metrics' series cap "
             "(--max-metric-series) was reached.",
             MetricType::Counter);
  folded_family.metric.push_back(Sample({}, static_cast<double>(folded), true));
  std::vector<MetricFamily> out = {std::move(requests), std::move(duration),
                                   std::move(request_bytes), std::move(response_bytes),
                                   std::move(folded_family)};
  if (istio_) {
    out.push_back(std::move(istio_requests));
    out.push_back(std::move(istio_duration));
    out.push_back(std::move(istio_request_bytes));
    out.push_back(std::move(istio_response_bytes));
  }
  return out;
}

std::shared_ptr<ConnectionCounters> ConnectionMetrics::For(const ConnectionKey& key) {
  absl::MutexLock l(&mu_);
  auto it = series_.find(key);
  if (it != series_.end()) return it->second;
  if (series_.size() >= max_series_) {
    ConnectionKey other;
    other.source_namespace = other.source_workload = "other";
    other.destination_namespace = key.destination_namespace;
    other.destination_workload = other.destination_pod = "other";
    other.service_namespace = other.service_name = "other";
    ++folded_;
    auto& c = series_[other];  // over the cap by one at most
    if (!c) c = std::make_shared<ConnectionCounters>();
    return c;
  }
  auto c = std::make_shared<ConnectionCounters>();
  series_.emplace(key, c);
  return c;
}

void ConnectionMetrics::ForgetDestinationPod(const std::string& ns, const std::string& name) {
  absl::MutexLock l(&mu_);
  EraseDestinationPod(series_, ns, name);
}

uint64_t ConnectionMetrics::folded() const {
  absl::MutexLock l(&mu_);
  return folded_;
}

std::vector<MetricFamily> ConnectionMetrics::Collect() const {
  struct Out {
    const char* name;
    const char* help;
    std::atomic<uint64_t> ConnectionCounters::*field;
  };
  static const Out kOurs[] = {
      {"shunt_tcp_connections_opened_total",
       "Connections the relay carried where they arrived (its upstream connected).",
       &ConnectionCounters::opened},
      {"shunt_tcp_connections_closed_total", "Of those, the ones that ended.",
       &ConnectionCounters::closed},
      {"shunt_tcp_received_bytes_total", "Bytes of those connections, client to server.",
       &ConnectionCounters::to_upstream},
      {"shunt_tcp_sent_bytes_total", "Bytes of those connections, server to client.",
       &ConnectionCounters::to_downstream},
  };
  static const Out kIstio[] = {
      {"istio_tcp_connections_opened_total", "Istio's standard TCP connections opened.",
       &ConnectionCounters::opened},
      {"istio_tcp_connections_closed_total", "Istio's standard TCP connections closed.",
       &ConnectionCounters::closed},
      {"istio_tcp_received_bytes_total", "Istio's standard TCP bytes received (request).",
       &ConnectionCounters::to_upstream},
      {"istio_tcp_sent_bytes_total", "Istio's standard TCP bytes sent (response).",
       &ConnectionCounters::to_downstream},
  };
  std::vector<MetricFamily> out;
  for (const auto& o : kOurs) out.push_back(Family(o.name, o.help, MetricType::Counter));
  if (istio_) {
    for (const auto& o : kIstio) out.push_back(Family(o.name, o.help, MetricType::Counter));
  }
  std::vector<std::pair<ConnectionKey, std::shared_ptr<ConnectionCounters>>> series;
  uint64_t folded = 0;
  {
    absl::MutexLock l(&mu_);
    series.assign(series_.begin(), series_.end());
    folded = folded_;
  }
  auto l4 = [](std::vector<ClientMetric::Label> labels) {  // an L4 series: tcp, no response
    labels.erase(std::remove_if(labels.begin(), labels.end(),
                                [](const ClientMetric::Label& l) {
                                  return l.name == "response_code" ||
                                         l.name == "grpc_response_status";
                                }),
                 labels.end());
    for (auto& l : labels) {
      if (l.name == "request_protocol") l.value = "tcp";
    }
    return labels;
  };
  // Istio's label sets have no pod: a workload's pods are added up into one series.
  std::map<std::vector<std::pair<std::string, std::string>>, std::array<uint64_t, 4>> istio;
  for (const auto& [k, c] : series) {
    RequestKey rk;
    rk.source_namespace = k.source_namespace;
    rk.source_workload = k.source_workload;
    rk.destination_namespace = k.destination_namespace;
    rk.destination_workload = k.destination_workload;
    rk.destination_pod = k.destination_pod;
    rk.service_namespace = k.service_namespace;
    rk.service_name = k.service_name;
    const auto labels = l4(Labels(rk));
    std::array<uint64_t, 4> v{};
    for (size_t i = 0; i < 4; ++i) {
      v[i] = (c.get()->*kOurs[i].field).load(std::memory_order_relaxed);
      out[i].metric.push_back(Sample(labels, static_cast<double>(v[i]), true));
    }
    if (!istio_) continue;
    std::vector<std::pair<std::string, std::string>> il;
    for (const auto& l : l4(IstioLabels(rk))) il.emplace_back(l.name, l.value);
    auto& sum = istio[il];
    for (size_t i = 0; i < 4; ++i) sum[i] += v[i];
  }
  for (const auto& [pairs, v] : istio) {
    std::vector<ClientMetric::Label> il;
    for (const auto& [n, value] : pairs) il.push_back({n, value});
    for (size_t i = 0; i < 4; ++i) {
      out[4 + i].metric.push_back(Sample(il, static_cast<double>(v[i]), true));
    }
  }
  MetricFamily f = Family("shunt_tcp_metrics_folded_total",
                          "Connections counted under the label set \"other\": the connection "
                          "metrics' series cap (--max-metric-series) was reached.",
                          MetricType::Counter);
  f.metric.push_back(Sample({}, static_cast<double>(folded), true));
  out.push_back(std::move(f));
  return out;
}

}  // namespace shunt::agent::metrics
