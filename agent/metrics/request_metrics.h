// The requests the relay read at L7 (HTTP/1.1, HTTP/2, gRPC), aggregated into what /metrics
// exports: counts by response code and gRPC status, a duration histogram, request and response
// body bytes, per source workload -> destination service and workload. Labels follow Istio's
// standard metrics (docs/metrics.md); with `istio` the same series are also exported under
// Istio's names and units (istio_requests_total, istio_request_duration_milliseconds, ...), so
// that Kiali's and Istio's dashboards read them unchanged.
//
// Label values come only from the workload table and the Services in policy (never an IP, a
// port, a path, a header): a source the table does not know is "unknown". At most `max_series`
// label sets; beyond, folded into one set whose names are "other" (counted). A pod's series go
// when it leaves (ForgetDestinationPod). Thread-safe: the relay's loops record, a scrape collects.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "agent/proxy/l7_session.h"
#include "agent/proxy/tcp_relay.h"
#include "prometheus/metric_family.h"

namespace shunt::agent::metrics {

struct RequestKey {
  std::string source_namespace, source_workload;  // "" when the source is not known
  std::string destination_namespace, destination_workload, destination_pod;
  std::string service_namespace, service_name;  // "" when no Service of policy serves the port
  bool grpc = false;                            // request_protocol: "grpc", else "http"
  int response_code = 0;                        // 0: no response (the exchange broke)
  int grpc_status = -1;                         // -1: none

  auto Tie() const {
    return std::tie(source_namespace, source_workload, destination_namespace, destination_workload,
                    destination_pod, service_namespace, service_name, grpc, response_code,
                    grpc_status);
  }
  bool operator<(const RequestKey& o) const { return Tie() < o.Tie(); }
};

// Upper bounds of the duration histogram, seconds (shunt_request_duration_seconds).
inline constexpr std::array<double, 17> kDurationBucketsSeconds = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
// Istio's (Envoy's default histogram buckets), used for its durations in milliseconds and its
// byte sizes alike.
inline constexpr std::array<double, 19> kIstioBuckets = {
    0.5,  1,    5,     10,    25,    50,     100,    250,     500,    1000,
    2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000};

class RequestMetrics {
 public:
  RequestMetrics(size_t max_series, bool istio) : max_series_(max_series), istio_(istio) {}

  // One finished exchange. Its duration: from the request head to the end of the response (or
  // of the exchange, broken); bytes: the bodies each way.
  void Record(const RequestKey& key, const ExchangeRecord& r);
  // The pod `name` of `ns` left the node: its series as a destination go.
  void ForgetDestinationPod(const std::string& ns, const std::string& name);
  std::vector<prometheus::MetricFamily> Collect() const;
  uint64_t folded() const;  // requests recorded under "other" (the cap was reached)

 private:
  struct Series {
    uint64_t requests = 0;
    uint64_t request_bytes = 0, response_bytes = 0;
    double duration_sum = 0;                                          // seconds
    std::array<uint64_t, kDurationBucketsSeconds.size()> duration{};  // per bucket, not cumulative
    // Istio's, only where exported.
    std::array<uint64_t, kIstioBuckets.size()> istio_ms{}, istio_request_bytes{},
        istio_response_bytes{};
  };
  const size_t max_series_;
  const bool istio_;
  mutable absl::Mutex mu_;
  std::map<RequestKey, Series> series_ ABSL_GUARDED_BY(mu_);
  uint64_t folded_ ABSL_GUARDED_BY(mu_) = 0;  // requests recorded under "other"
};

// The connections the relay carries (every captured one, opaque or read at L7), per source
// workload -> destination workload, pod and service (the first of policy's Services that serve
// the port: no request names one at L4): opened (its upstream connected), closed, bytes each way
// as they move (shunt_tcp_*; with `istio` also Istio's istio_tcp_*). Same caps and removal as
// RequestMetrics.
struct ConnectionKey {
  std::string source_namespace, source_workload;
  std::string destination_namespace, destination_workload, destination_pod;
  std::string service_namespace, service_name;
  auto Tie() const {
    return std::tie(source_namespace, source_workload, destination_namespace, destination_workload,
                    destination_pod, service_namespace, service_name);
  }
  bool operator<(const ConnectionKey& o) const { return Tie() < o.Tie(); }
};

class ConnectionMetrics {
 public:
  ConnectionMetrics(size_t max_series, bool istio) : max_series_(max_series), istio_(istio) {}
  // The counters the relay's connections of `key` share (those of the set "other" beyond the
  // cap, counted in folded()).
  std::shared_ptr<ConnectionCounters> For(const ConnectionKey& key);
  void ForgetDestinationPod(const std::string& ns, const std::string& name);
  std::vector<prometheus::MetricFamily> Collect() const;
  uint64_t folded() const;  // connections counted under "other"

 private:
  const size_t max_series_;
  const bool istio_;
  mutable absl::Mutex mu_;
  std::map<ConnectionKey, std::shared_ptr<ConnectionCounters>> series_ ABSL_GUARDED_BY(mu_);
  uint64_t folded_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace shunt::agent::metrics
