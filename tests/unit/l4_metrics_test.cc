// The kernel's connection events into L4 series (agent/metrics/l4_metrics.h): who each event is
// between, from the workload table and the Services of policy, and what the series count. The
// events themselves come from the kernel in tests/e2e/fastpath_test.cc.
#include "agent/metrics/l4_metrics.h"

#include <arpa/inet.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "agent/bpf/fastpath.h"
#include "prometheus/text_serializer.h"
#include "tests/unit/metric_families.h"

namespace shunt::agent::metrics {
namespace {

constexpr char kBundle[] = R"({
 "workloads": [
  {"uid": "u-web", "namespace": "shop", "name": "web-1", "owner": "web", "node": "n1",
   "ips": ["10.0.0.1"], "meshed": true},
  {"uid": "u-cart", "namespace": "shop", "name": "cart-7", "owner": "cart", "node": "n2",
   "ips": ["10.0.1.7", "fd00::7"], "meshed": true}],
 "services": [
  {"namespace": "shop", "name": "cart", "vips": ["10.96.0.10"],
   "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
   "endpoints": [{"ips": ["10.0.1.7"], "workloadUid": "u-cart", "ready": true,
                  "ports": [{"name": "http", "port": 8080}]}]},
  {"namespace": "shop", "name": "cart-admin", "vips": ["10.96.0.11"],
   "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
   "endpoints": [{"ips": ["10.0.1.7"], "workloadUid": "u-cart", "ready": true,
                  "ports": [{"name": "http", "port": 8080}]}]},
  {"namespace": "shop", "name": "web", "vips": ["10.96.0.20"],
   "ports": [{"name": "http", "port": 80, "targetPort": 9090}],
   "endpoints": [{"ips": ["10.0.0.1"], "workloadUid": "u-web", "ready": true,
                  "ports": [{"name": "http", "port": 9090}]}]}]})";

PolicySnapshot Snapshot() {
  PolicySnapshot s;
  EXPECT_TRUE(google::protobuf::util::JsonStringToMessage(kBundle, &s.bundle).ok());
  return s;
}

WorkloadDirectory Directory() {
  return {{3, WorkloadInfo{.uid = "u-web", .k8s_namespace = "shop", .name = "web-1", .owner = "web"}}};
}

shunt_l4_event Event(uint8_t kind, bool passive, const std::string& remote, uint16_t local_port,
                     uint16_t remote_port) {
  shunt_l4_event e{};
  e.kind = kind;
  e.flags = passive ? SHUNT_L4_PASSIVE : 0;
  e.workload_id = 3;
  auto ip = ParseIpKey(remote);
  EXPECT_TRUE(ip.ok());
  std::copy(ip->addr, ip->addr + 4, e.remote_ip);
  e.local_port = local_port;
  e.remote_port = remote_port;
  return e;
}

using families_test::Find;
using families_test::LabelsOf;

TEST(L4KeyOf, AClientsServiceIsTheAddressItConnectedToElseTheServerPodsPort) {
  const PolicySnapshot s = Snapshot();
  const WorkloadDirectory dir = Directory();
  // web-1 connected to cart-admin's address, which the socket load balancer rewrote to cart-7.
  shunt_l4_event e = Event(SHUNT_L4_EV_OPENED, false, "10.0.1.7", 40000, 8080);
  e.flags |= SHUNT_L4_VIP;
  std::copy(ParseIpKey("10.96.0.11")->addr, ParseIpKey("10.96.0.11")->addr + 4, e.vip);
  e.vip_port = 80;
  L4Key k = L4KeyOf(e, &s, dir);
  EXPECT_FALSE(k.destination_reporter);
  EXPECT_EQ(k.source_namespace, "shop");
  EXPECT_EQ(k.source_workload, "web");
  EXPECT_EQ(k.source_pod, "web-1");
  EXPECT_EQ(k.destination_workload, "cart");
  EXPECT_EQ(k.destination_pod, "cart-7");
  EXPECT_EQ(k.service_name, "cart-admin");
  // Straight to the pod (or to an address policy does not know): the first Service of its port.
  e.flags &= ~SHUNT_L4_VIP;
  EXPECT_EQ(L4KeyOf(e, &s, dir).service_name, "cart");
  // By its IPv6 address: the same pod.
  shunt_l4_event v6 = Event(SHUNT_L4_EV_OPENED, false, "fd00::7", 40000, 8080);
  EXPECT_EQ(L4KeyOf(v6, &s, dir).destination_pod, "cart-7");
  // A port no Service has: none.
  EXPECT_EQ(L4KeyOf(Event(SHUNT_L4_EV_OPENED, false, "10.0.1.7", 40000, 22), &s, dir).service_name,
            "");
}

TEST(L4KeyOf, AServersSourceIsItsPeersIpAndTheServiceIsItsOwnPorts) {
  const PolicySnapshot s = Snapshot();
  const WorkloadDirectory dir = Directory();
  L4Key k = L4KeyOf(Event(SHUNT_L4_EV_OPENED, true, "10.0.1.7", 9090, 51000), &s, dir);
  EXPECT_TRUE(k.destination_reporter);
  EXPECT_EQ(k.source_workload, "cart");
  EXPECT_EQ(k.source_pod, "cart-7");
  EXPECT_EQ(k.destination_workload, "web");
  EXPECT_EQ(k.destination_pod, "web-1");
  EXPECT_EQ(k.service_name, "web");
  // A peer nobody knows (outside the cluster, a node's address): unknown, never its IP.
  k = L4KeyOf(Event(SHUNT_L4_EV_OPENED, true, "192.0.2.1", 9090, 51000), &s, dir);
  EXPECT_EQ(k.source_workload, "");
  EXPECT_EQ(k.destination_pod, "web-1");
  // An id the directory does not know (a late event of a pod that left), no policy yet.
  shunt_l4_event late = Event(SHUNT_L4_EV_CLOSED, false, "10.0.1.7", 40000, 8080);
  late.workload_id = 99;
  k = L4KeyOf(late, nullptr, dir);
  EXPECT_EQ(k.source_pod, "");
  EXPECT_EQ(k.destination_pod, "");
}

TEST(L4Metrics, CountsEachEndsViewBytesByDirectionHistogramsAndIstiosSourceView) {
  L4Metrics m(100, /*istio=*/true);
  const PolicySnapshot s = Snapshot();
  const WorkloadDirectory dir = Directory();
  // web-1 as the client of cart-7: 2 connections, one refused connect().
  shunt_l4_event open = Event(SHUNT_L4_EV_OPENED, false, "10.0.1.7", 40000, 8080);
  open.setup_us = 150;
  shunt_l4_event closed = open;
  closed.kind = SHUNT_L4_EV_CLOSED;
  closed.duration_ns = 2'500'000'000;  // 2.5 s
  closed.bytes_sent = 1000;
  closed.bytes_received = 50000;
  closed.srtt_us = 40;
  closed.retrans = 2;
  shunt_l4_event failed = open;
  failed.kind = SHUNT_L4_EV_FAILED;
  auto key_of = [&](const shunt_l4_event& x) { return L4KeyOf(x, &s, dir); };
  closed.cookie = 1;
  shunt_l4_event closed2 = closed;
  closed2.cookie = 2;
  failed.cookie = 3;
  for (const auto* e : {&open, &closed, &open, &closed2, &failed}) m.Record(*e, key_of);
  // web-1 as the server of cart-7: its view, bytes by direction the same way.
  shunt_l4_event served = Event(SHUNT_L4_EV_CLOSED, true, "10.0.1.7", 9090, 51000);
  served.bytes_received = 700;  // client to server
  served.bytes_sent = 9;
  served.duration_ns = 1'000'000;
  served.cookie = 4;
  m.Record(served, key_of);

  const auto fs = m.Collect();
  auto value = [&](const std::string& name, const std::string& reporter) {
    const auto* f = Find(fs, name);
    EXPECT_NE(f, nullptr) << name;
    double sum = 0;
    if (f == nullptr) return sum;
    for (const auto& x : f->metric) {
      if (LabelsOf(x)["reporter"] == reporter) sum += x.counter.value;
    }
    return sum;
  };
  EXPECT_EQ(value("shunt_connections_opened_total", "source"), 2);
  EXPECT_EQ(value("shunt_connections_closed_total", "source"), 2);
  EXPECT_EQ(value("shunt_connection_failures_total", "source"), 1);
  EXPECT_EQ(value("shunt_connection_received_bytes_total", "source"), 2000);   // to the server
  EXPECT_EQ(value("shunt_connection_sent_bytes_total", "source"), 100000);     // to the client
  EXPECT_EQ(value("shunt_connection_retransmitted_segments_total", "source"), 4);
  EXPECT_EQ(value("shunt_connection_received_bytes_total", "destination"), 700);
  EXPECT_EQ(value("shunt_connection_sent_bytes_total", "destination"), 9);
  const auto* duration = Find(fs, "shunt_connection_duration_seconds");
  ASSERT_NE(duration, nullptr);
  for (const auto& x : duration->metric) {
    auto l = LabelsOf(x);
    if (l["reporter"] != "source") continue;
    EXPECT_EQ(l["source_pod"], "web-1");
    EXPECT_EQ(l["destination_service_name"], "cart");
    EXPECT_EQ(l["request_protocol"], "tcp");
    EXPECT_EQ(x.histogram.sample_count, 2u);
    EXPECT_DOUBLE_EQ(x.histogram.sample_sum, 5.0);
    // 2.5 s: in the bucket up to 5 s, not in the one up to 1 s.
    for (const auto& b : x.histogram.bucket) {
      if (b.upper_bound == 1) {
        EXPECT_EQ(b.cumulative_count, 0u);
      }
      if (b.upper_bound == 5) {
        EXPECT_EQ(b.cumulative_count, 2u);
      }
    }
  }
  const auto* setup = Find(fs, "shunt_connection_setup_seconds");
  ASSERT_NE(setup, nullptr);
  for (const auto& x : setup->metric) {
    if (LabelsOf(x)["reporter"] == "source") {
      EXPECT_EQ(x.histogram.sample_count, 2u);
      EXPECT_NEAR(x.histogram.sample_sum, 0.0003, 1e-12);
    } else {
      EXPECT_EQ(x.histogram.sample_count, 0u);  // a server's end measures none
    }
  }
  // Istio's: the source's view only (the destination's is the relay's), no pod label.
  const auto* istio = Find(fs, "istio_tcp_sent_bytes_total");
  ASSERT_NE(istio, nullptr);
  ASSERT_EQ(istio->metric.size(), 1u);
  auto il = LabelsOf(istio->metric[0]);
  EXPECT_EQ(il["reporter"], "source");
  EXPECT_EQ(il["destination_service"], "cart.shop.svc.cluster.local");
  EXPECT_EQ(il.count("source_pod"), 0u);
  EXPECT_EQ(istio->metric[0].counter.value, 100000);
  // What Prometheus reads: one family per name.
  const std::string text = prometheus::TextSerializer().Serialize(fs);
  EXPECT_NE(text.find("# TYPE shunt_connection_rtt_seconds histogram"), std::string::npos);
}

TEST(L4Metrics, AConnectionKeepsTheLabelsItOpenedWith) {
  L4Metrics m(100, /*istio=*/false);
  PolicySnapshot s = Snapshot();
  const WorkloadDirectory dir = Directory();
  int resolved = 0;
  auto key_of = [&](const shunt_l4_event& x) {
    ++resolved;
    return L4KeyOf(x, &s, dir);
  };
  shunt_l4_event open = Event(SHUNT_L4_EV_OPENED, false, "10.0.1.7", 40000, 8080);
  open.cookie = 7;
  m.Record(open, key_of);
  EXPECT_EQ(m.open(), 1u);
  // The peer's pod left the workload table meanwhile: the end still counts where it opened.
  s.bundle.mutable_workloads()->RemoveLast();
  s.derived = {};
  shunt_l4_event closed = open;
  closed.kind = SHUNT_L4_EV_CLOSED;
  closed.bytes_sent = 6000;
  m.Record(closed, key_of);
  EXPECT_EQ(resolved, 1);
  EXPECT_EQ(m.open(), 0u);
  for (const auto& f : m.Collect()) {
    if (f.name != "shunt_connection_received_bytes_total") continue;
    ASSERT_EQ(f.metric.size(), 1u);
    EXPECT_EQ(LabelsOf(f.metric[0])["destination_pod"], "cart-7");
    EXPECT_EQ(f.metric[0].counter.value, 6000);
  }
  // The next connection to the same peer and port: its labels as made, while the policy and
  // directory are the same (generation); made again once they changed.
  open.cookie = 8;
  m.Record(open, key_of, /*generation=*/0);
  EXPECT_EQ(resolved, 1);
  open.cookie = 9;
  m.Record(open, key_of, /*generation=*/1);
  EXPECT_EQ(resolved, 2);
  std::set<std::string> pods;
  for (const auto& f : m.Collect()) {
    if (f.name != "shunt_connections_opened_total") continue;
    for (const auto& x : f.metric) pods.insert(LabelsOf(x)["destination_pod"]);
  }
  EXPECT_EQ(pods, (std::set<std::string>{"cart-7", "unknown"}));
}

TEST(L4Metrics, BeyondTheCapFoldsIntoOtherAndAPodThatLeftHasNoSeriesLeft) {
  L4Metrics m(2, /*istio=*/false);
  auto key = [](const std::string& pod) {
    L4Key k;
    k.source_namespace = "shop";
    k.source_workload = "web";
    k.source_pod = pod;
    return k;
  };
  shunt_l4_event e{};
  e.kind = SHUNT_L4_EV_OPENED;
  for (const char* pod : {"web-1", "web-2", "web-3", "web-4"}) {
    ++e.cookie;
    ++e.workload_id;  // each pod its own
    m.Record(e, [&](const shunt_l4_event&) { return key(pod); });
  }
  EXPECT_EQ(m.folded(), 2u);
  // Each event counts, not each label set: web-4's connection ends.
  shunt_l4_event end = e;
  end.kind = SHUNT_L4_EV_CLOSED;
  m.Record(end, [&](const shunt_l4_event&) { return key("web-4"); });
  EXPECT_EQ(m.folded(), 3u);
  auto pods = [&] {
    std::set<std::string> out;
    for (const auto& f : m.Collect()) {
      if (f.name != "shunt_connections_opened_total") continue;
      for (const auto& x : f.metric) out.insert(LabelsOf(x)["source_pod"]);
    }
    return out;
  };
  EXPECT_EQ(pods(), (std::set<std::string>{"web-1", "web-2", "other"}));
  m.Retain({{"shop", "web-2"}});
  EXPECT_EQ(pods(), (std::set<std::string>{"web-2", "other"}));
}

}  // namespace
}  // namespace shunt::agent::metrics
