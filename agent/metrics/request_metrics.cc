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

template <size_t N>
void Observe(std::array<uint64_t, N>& buckets, const std::array<double, N>& bounds, double v) {
  // The first bucket whose upper bound holds v; above the last: only +Inf (the count).
  auto it = std::lower_bound(bounds.begin(), bounds.end(), v);
  if (it != bounds.end()) ++buckets[static_cast<size_t>(it - bounds.begin())];
}

template <size_t N>
ClientMetric::Histogram Histogram(const std::array<uint64_t, N>& buckets,
                                  const std::array<double, N>& bounds, uint64_t count, double sum) {
  ClientMetric::Histogram h;
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

std::string OrUnknown(const std::string& s) { return s.empty() ? "unknown" : s; }

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
// destination (no mTLS identity here: principals unknown, security policy none).
std::vector<ClientMetric::Label> IstioLabels(const RequestKey& k) {
  const std::string service =
      k.service_name.empty()
          ? "unknown"
          : absl::StrCat(k.service_name, ".", k.service_namespace, ".svc.cluster.local");
  return {{"reporter", "destination"},
          {"source_workload", OrUnknown(k.source_workload)},
          {"source_workload_namespace", OrUnknown(k.source_namespace)},
          {"source_canonical_service", OrUnknown(k.source_workload)},
          {"source_canonical_revision", "latest"},
          {"source_principal", "unknown"},
          {"destination_workload", k.destination_workload},
          {"destination_workload_namespace", k.destination_namespace},
          {"destination_canonical_service", k.destination_workload},
          {"destination_canonical_revision", "latest"},
          {"destination_principal", "unknown"},
          {"destination_service", service},
          {"destination_service_name", OrUnknown(k.service_name)},
          {"destination_service_namespace", OrUnknown(k.service_namespace)},
          {"request_protocol", k.grpc ? "grpc" : "http"},
          {"response_code", absl::StrCat(k.response_code)},
          {"grpc_response_status", k.grpc_status < 0 ? "" : absl::StrCat(k.grpc_status)},
          {"response_flags", "-"},
          {"connection_security_policy", "none"}};
}

}  // namespace

void RequestMetrics::Record(const RequestKey& key, const ExchangeRecord& r) {
  const double seconds = r.end > r.start ? absl::ToDoubleSeconds(r.end - r.start) : 0.0;
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
      other.response_code = key.response_code;
      other.grpc_status = key.grpc_status;
      it = series_.find(other);
      if (it == series_.end()) it = series_.emplace(other, Series{}).first;  // over by a few
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
  for (auto it = series_.begin(); it != series_.end();) {
    if (it->first.destination_namespace == ns && it->first.destination_pod == name) {
      it = series_.erase(it);
    } else {
      ++it;
    }
  }
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
  uint64_t folded = 0;
  {
    absl::MutexLock l(&mu_);
    folded = folded_;
    for (const auto& [k, s] : series_) {
      const auto labels = Labels(k);
      requests.metric.push_back(Sample(labels, static_cast<double>(s.requests), true));
      request_bytes.metric.push_back(Sample(labels, static_cast<double>(s.request_bytes), true));
      response_bytes.metric.push_back(Sample(labels, static_cast<double>(s.response_bytes), true));
      ClientMetric h;
      h.label = labels;
      h.histogram = Histogram(s.duration, kDurationBucketsSeconds, s.requests, s.duration_sum);
      duration.metric.push_back(std::move(h));
      if (!istio_) continue;
      const auto il = IstioLabels(k);
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

}  // namespace shunt::agent::metrics
