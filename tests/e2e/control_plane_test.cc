// The control plane end to end: a real shunt-controller (manifests source) and real agents in the
// test bed, talking over the gRPC policy stream; the kernel fast path as the observable effect.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/test_util.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/files.h"
#include "tests/e2e/e2e_util.h"

namespace shunt::e2e {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testbed::Pod;

constexpr int kStreamPort = 15010;
constexpr int kControllerMetricsPort = 15014;

// Kernel tests wait longer, and poll the agents less often.
template <typename F>
bool Eventually(F f, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  return shunt::test::Eventually(f, timeout, std::chrono::milliseconds(50));
}

class ControlPlaneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testbed::Options opts;
    opts.nodes = 2;
    opts.pods_per_node = 2;
    auto bed = testbed::Testbed::Create(opts);
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = std::move(*bed);
    manifests_ = bed_->work_dir() + "/manifests";
    ASSERT_TRUE(MkdirAll(manifests_).ok());
    WriteNamespace(false);
    WritePods();
    StartController();
    for (int i = 0; i < 2; ++i) {
      agents_.push_back(NewAgent(i));
      ASSERT_TRUE(agents_.back()->Start().ok()) << agents_.back()->Stderr();
    }
  }

  void TearDown() override {
    for (auto& a : agents_) {
      if (a) a->Kill();
    }
    if (controller_) controller_->Stop(SIGKILL, 5s).IgnoreError();
    if (bed_) {
      for (const auto& n : bed_->nodes()) UninstallAgent(*bed_, n).IgnoreError();
      bed_->Teardown();
    }
  }

  std::unique_ptr<AgentProcess> NewAgent(int node) {
    return std::make_unique<AgentProcess>(
        *bed_, bed_->node(node), "",
        std::vector<std::string>{
            absl::StrCat("--controller=", bed_->node(0).ipv4, ":", kStreamPort),
            "--controller-plaintext", "--controller-max-backoff-ms=300",
            "--controller-keepalive-ms=1000"});
  }

  void StartController() {
    auto p = bed_->SpawnOnNode(bed_->node(0),
                               {ControllerBinary(), "--manifests=" + manifests_, "--plaintext",
                                "--keepalive-ms=1000",
                                absl::StrCat("--listen=0.0.0.0:", kStreamPort),
                                absl::StrCat("--metrics-addr=127.0.0.1:", kControllerMetricsPort),
                                "--admin-addr=127.0.0.1:15015", "--manifests-poll-ms=100"});
    ASSERT_TRUE(p.ok()) << p.status();
    controller_ = std::move(*p);
  }

  void Write(const std::string& file, const json& doc) {
    ASSERT_TRUE(WriteFileAtomic(manifests_ + "/" + file, doc.dump(2)).ok());
  }

  void WriteNamespace(bool meshed) {
    json ns = {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", "default"}}}};
    if (meshed) ns["metadata"]["labels"] = {{"shunt.dev/mesh", "enabled"}};
    Write("namespace.json", ns);
  }

  static json PodManifest(const Pod& pod, const std::string& node, const std::string& uid,
                          const std::string& name, const std::string& ipv4) {
    return {{"apiVersion", "v1"},
            {"kind", "Pod"},
            {"metadata", {{"namespace", "default"}, {"name", name}, {"uid", uid}}},
            {"spec", {{"nodeName", node}}},
            {"status",
             {{"phase", "Running"},
              {"podIP", ipv4},
              {"podIPs", {{{"ip", ipv4}}, {{"ip", pod.ipv6}}}}}}};
  }

  void WritePods() {
    json list = {{"apiVersion", "v1"}, {"kind", "List"}, {"items", json::array()}};
    for (const auto& node : bed_->nodes()) {
      for (const auto& pod : node.pods) {
        list["items"].push_back(PodManifest(pod, node.name, pod.uid, pod.name, pod.ipv4));
      }
    }
    Write("pods.json", list);
  }

  double AgentMetric(int node, const std::string& name) {
    auto m = agents_[node]->Scrape();
    return m.ok() ? SumSamples(*m, name) : -1;
  }

  double ControllerMetric(const std::string& name) {
    auto r = HttpGetInNetns(bed_->node(0).netns, "127.0.0.1", kControllerMetricsPort, "/metrics");
    if (!r.ok() || r->code != 200) return -1;
    return SumSamples(ParsePrometheusText(r->body), name);
  }

  // A checked transfer between the two pods of node 0; returns the bytes the agent redirected.
  double SplicedTransfer(int port) {
    const Pod& a = bed_->pod(0, 0);
    const Pod& b = bed_->pod(0, 1);
    auto before = agents_[0]->Scrape();
    const double base =
        before.ok() ? SumSamples(*before, "shunt_sockmap_redirected_bytes_total") : 0;
    auto server = StartTestpeerServer(
        *bed_, b, {absl::StrCat("--port=", port), "--mode=verify", "--conns=2"});
    EXPECT_TRUE(server.ok()) << server.status();
    // The first connection of a class may stay plain TCP (docs/fastpath.md, FIONREAD): it
    // teaches the fast path how these two programs read.
    auto t = RunTestpeer(*bed_, a, {"verify", absl::StrCat("--to=", b.ipv4, ":", port),
                                    "--bytes=64K", "--seed=5"});
    EXPECT_TRUE(t.ok() && t->value("ok", 0) == 1) << (t.ok() ? t->dump() : t.status().ToString());
    auto r = RunTestpeer(
        *bed_, a, {"verify", absl::StrCat("--to=", b.ipv4, ":", port), "--bytes=2M", "--seed=5"});
    EXPECT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r.ok() ? r->value("ok", 0) : 0, 1);
    auto after = agents_[0]->Scrape();
    return after.ok() ? SumSamples(*after, "shunt_sockmap_redirected_bytes_total") - base : -1;
  }

  static std::string ControllerBinary() { return SHUNT_CONTROLLER_BIN; }

  std::unique_ptr<testbed::Testbed> bed_;
  std::string manifests_;
  testbed::ProcessPtr controller_;
  std::vector<std::unique_ptr<AgentProcess>> agents_;
};

TEST_F(ControlPlaneTest, NamespaceLabelMeshesPodsThroughTheController) {
  EXPECT_EQ(AgentMetric(0, "shunt_policy_local_workloads"), 2);
  EXPECT_EQ(AgentMetric(0, "shunt_policy_meshed_local_workloads"), 0);
  EXPECT_EQ(SplicedTransfer(7100), 0) << "unmeshed: normal path";

  WriteNamespace(true);  // kubectl label namespace default shunt.dev/mesh=enabled
  ASSERT_TRUE(Eventually([&] {
    return AgentMetric(0, "shunt_policy_meshed_local_workloads") == 2 &&
           AgentMetric(1, "shunt_policy_meshed_local_workloads") == 2;
  }));
  ASSERT_TRUE(Eventually([&] { return AgentMetric(0, "shunt_agent_synced") == 1; }));
  EXPECT_GE(SplicedTransfer(7101), 2 << 20) << "meshed by the controller: spliced";
  EXPECT_GE(ControllerMetric("shunt_controller_connected_agents"), 2);
  EXPECT_GE(ControllerMetric("shunt_controller_acks_total"), 4);
  EXPECT_GE(ControllerMetric("shunt_controller_propagation_seconds_count"), 2);
  // Both endpoints as a Prometheus server sees them (issue 8 item 11).
  auto page = HttpGetInNetns(bed_->node(0).netns, "127.0.0.1", kControllerMetricsPort, "/metrics");
  ASSERT_TRUE(page.ok() && page->code == 200);
  EXPECT_EQ(MetricsProblems(page->body), "") << "controller";
  page = agents_[0]->Get("/metrics", kMetricsPort);
  ASSERT_TRUE(page.ok() && page->code == 200);
  EXPECT_EQ(MetricsProblems(page->body), "") << "agent";
}

TEST_F(ControlPlaneTest, InvalidResourceIsNackedAndTheAgentKeepsItsLastGoodState) {
  WriteNamespace(true);
  ASSERT_TRUE(Eventually([&] { return AgentMetric(0, "shunt_policy_meshed_local_workloads") == 2; }));
  // A pod whose name no API server would accept (manifests are not checked by one): the agents'
  // validation refuses the version that carries it.
  const Pod& a = bed_->pod(0, 0);
  Write("bad.json", PodManifest(a, bed_->node(0).name, "99999999-0000-4000-8000-000000000001",
                                "Not_A_DNS_Name", "198.18.0.200"));
  ASSERT_TRUE(Eventually([&] { return ControllerMetric("shunt_controller_nacks_total") >= 2; }))
      << "both agents NACK";
  auto ready = agents_[0]->Get("/readyz");
  ASSERT_TRUE(ready.ok());
  EXPECT_EQ(ready->code, 503);
  EXPECT_NE(ready->body.find("rejected"), std::string::npos) << ready->body;
  EXPECT_NE(agents_[0]->Stderr().find("Not_A_DNS_Name"), std::string::npos)
      << "the NACK names the resource";
  EXPECT_EQ(AgentMetric(0, "shunt_policy_meshed_local_workloads"), 2);
  EXPECT_GE(SplicedTransfer(7102), 2 << 20) << "the last good state is still enforced";
  // Fixing the manifests brings the agents back in sync.
  ASSERT_EQ(unlink((manifests_ + "/bad.json").c_str()), 0);
  ASSERT_TRUE(Eventually([&] {
    auto r = agents_[0]->Get("/readyz");
    return r.ok() && r->code == 200;
  }));
}

TEST_F(ControlPlaneTest, RecycledIpIsSettledByTheControllerNotRejected) {
  WriteNamespace(true);
  ASSERT_TRUE(Eventually([&] { return AgentMetric(0, "shunt_policy_meshed_local_workloads") == 2; }));
  // A terminating pod still shows pod a's IP: the controller gives the IP to the live pod.
  const Pod& a = bed_->pod(0, 0);
  json old = PodManifest(a, bed_->node(0).name, "99999999-0000-4000-8000-000000000002",
                         "terminating", a.ipv4);
  old["metadata"]["deletionTimestamp"] = "2026-11-25T10:00:00Z";
  Write("old.json", old);
  ASSERT_TRUE(Eventually([&] { return AgentMetric(0, "shunt_policy_local_workloads") == 3; }));
  EXPECT_EQ(ControllerMetric("shunt_controller_nacks_total"), 0);
  EXPECT_GE(SplicedTransfer(7105), 2 << 20) << "pod a keeps its identity and its fast path";
}

TEST_F(ControlPlaneTest, ControllerDownThenAgentRestartThenControllerBack) {
  WriteNamespace(true);
  ASSERT_TRUE(
      Eventually([&] { return AgentMetric(0, "shunt_policy_meshed_local_workloads") == 2; }));
  ASSERT_TRUE(Eventually([&] { return AgentMetric(0, "shunt_agent_synced") == 1; }));
  ASSERT_TRUE(Eventually([&] { return AgentMetric(0, "shunt_agent_policy_saved") == 1; }));

  ASSERT_TRUE(controller_->Stop(SIGKILL, 5s).ok());
  EXPECT_GE(SplicedTransfer(7103), 2 << 20) << "enforcement continues without the controller";
  ASSERT_TRUE(Eventually([&] {
    auto r = agents_[0]->Get("/readyz");
    return r.ok() && r->code == 503;
  })) << "the agent says it is out of sync";

  // An agent restarted while the controller is down enforces the saved policy.
  agents_[0]->Kill();
  agents_[0] = NewAgent(0);
  ASSERT_TRUE(agents_[0]->Start(20s, /*require_ready=*/false).ok()) << agents_[0]->Stderr();
  EXPECT_EQ(AgentMetric(0, "shunt_policy_meshed_local_workloads"), 2);
  EXPECT_GE(SplicedTransfer(7104), 2 << 20);

  // The controller comes back; the agents resync (and see a change made meanwhile).
  WriteNamespace(false);
  StartController();
  ASSERT_TRUE(Eventually(
      [&] {
        auto r = agents_[0]->Get("/readyz");
        return r.ok() && r->code == 200 &&
               AgentMetric(0, "shunt_policy_meshed_local_workloads") == 0;
      },
      30s))
      << agents_[0]->Stderr();
  ASSERT_TRUE(
      Eventually([&] { return AgentMetric(1, "shunt_policy_meshed_local_workloads") == 0; }));
}

// Issue 8 item 6: node 1's packets to and from the controller are dropped (nftables in node 1's
// network namespace): no FIN, no RST, a stream that looks open from both ends. Before keepalives the agent waited
// on it for good with /readyz 200, and the controller kept its stream. Now: the agent says it
// is out of sync within a few keepalive intervals, keeps enforcing what it had, the controller
// ends its stream, and once the path is back the agent reconnects and gets the change it missed.
TEST_F(ControlPlaneTest, PartitionedAgentTurnsUnreadyAndCatchesUpWhenThePathIsBack) {
  ASSERT_TRUE(Eventually([&] { return AgentMetric(1, "shunt_agent_synced") == 1; }));
  ASSERT_TRUE(Eventually([&] { return ControllerMetric("shunt_controller_connected_agents") == 2; }));
  EXPECT_EQ(ControllerMetric("shunt_controller_info"), 1);  // with its version (item 7)
  const testbed::Node& n1 = bed_->node(1);
  const std::string rules = absl::StrCat(
      "table inet shunt_partition {\n"
      "  chain out {\n"
      "    type filter hook output priority 0; policy accept;\n"
      "    ip daddr ", bed_->node(0).ipv4, " tcp dport ", kStreamPort, " drop\n"
      "  }\n"
      "  chain in {\n"
      "    type filter hook input priority 0; policy accept;\n"
      "    ip saddr ", bed_->node(0).ipv4, " tcp sport ", kStreamPort, " drop\n"
      "  }\n"
      "}\n");
  const std::string rules_file = bed_->work_dir() + "/partition.nft";
  ASSERT_TRUE(WriteFileAtomic(rules_file, rules).ok());
  auto add = bed_->RunOnNode(n1, {"nft", "-f", rules_file}, 10s);
  ASSERT_TRUE(add.ok() && add->exit_code == 0) << (add.ok() ? add->err : add.status().ToString());

  WriteNamespace(true);  // the change agent 1 misses
  ASSERT_TRUE(
      Eventually([&] { return AgentMetric(0, "shunt_policy_meshed_local_workloads") == 2; }));
  ASSERT_TRUE(Eventually([&] {
    auto r = agents_[1]->Get("/readyz");
    return r.ok() && r->code == 503;
  })) << "the partitioned agent still says it is ready";
  EXPECT_EQ(AgentMetric(1, "shunt_policy_meshed_local_workloads"), 0) << "it enforces what it had";
  ASSERT_TRUE(Eventually([&] { return ControllerMetric("shunt_controller_connected_agents") == 1; }))
      << "the controller kept the dead stream";

  auto del = bed_->RunOnNode(n1, {"nft", "delete", "table", "inet", "shunt_partition"}, 10s);
  ASSERT_TRUE(del.ok() && del->exit_code == 0) << (del.ok() ? del->err : del.status().ToString());
  ASSERT_TRUE(Eventually(
      [&] {
        auto r = agents_[1]->Get("/readyz");
        return r.ok() && r->code == 200 &&
               AgentMetric(1, "shunt_policy_meshed_local_workloads") == 2;
      },
      30s))
      << agents_[1]->Stderr();
  EXPECT_TRUE(Eventually([&] { return ControllerMetric("shunt_controller_connected_agents") == 2; }));
}

// Policy in the kernel, driven by CRs through the controller: pods 0 (app=front) and 3
// (app=other) are clients; pods 1 and 2 (app=api, version v1 / v2) serve "ident" on 8080.
class ControlPlanePolicyTest : public ::testing::Test {
 protected:
  static constexpr char kVip[] = "198.18.255.10";  // the test bed has no 198.18.255.0/24

  void SetUp() override {
    testbed::Options opts;
    opts.nodes = 1;
    opts.pods_per_node = 4;
    auto bed = testbed::Testbed::Create(opts);
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = std::move(*bed);
    dir_ = bed_->work_dir() + "/manifests";
    ASSERT_TRUE(MkdirAll(dir_).ok());
    WriteCluster();
    auto c = bed_->SpawnOnNode(bed_->node(0),
                               {SHUNT_CONTROLLER_BIN, "--manifests=" + dir_, "--plaintext",
                                absl::StrCat("--listen=0.0.0.0:", kStreamPort),
                                "--metrics-addr=127.0.0.1:15014", "--admin-addr=127.0.0.1:15015",
                                "--manifests-poll-ms=100"});
    ASSERT_TRUE(c.ok()) << c.status();
    controller_ = std::move(*c);
    agent_ = std::make_unique<AgentProcess>(
        *bed_, bed_->node(0), "",
        std::vector<std::string>{absl::StrCat("--controller=", bed_->node(0).ipv4, ":", kStreamPort),
                                 "--controller-plaintext", "--controller-max-backoff-ms=300"});
    ASSERT_TRUE(agent_->Start().ok()) << agent_->Stderr();
    for (int i : {1, 2}) {
      auto srv = StartTestpeerServer(*bed_, P(i),
                                     {"--port=8080", "--bind=::", "--mode=ident",
                                      absl::StrCat("--ident=", i == 1 ? "v1" : "v2")});
      ASSERT_TRUE(srv.ok()) << srv.status();
      servers_.push_back(std::move(*srv));
    }
  }

  void TearDown() override {
    servers_.clear();
    if (agent_) agent_->Kill();
    if (controller_) controller_->Stop(SIGKILL, 5s).IgnoreError();
    if (bed_) {
      UninstallAgent(*bed_, bed_->node(0)).IgnoreError();
      bed_->Teardown();
    }
  }

  const Pod& P(int i) const { return bed_->pod(0, i); }

  void Write(const std::string& file, const json& doc) {
    ASSERT_TRUE(WriteFileAtomic(dir_ + "/" + file, doc.dump(2)).ok());
  }

  void WriteCluster() {
    json items = json::array();
    items.push_back({{"apiVersion", "v1"}, {"kind", "Namespace"},
                     {"metadata", {{"name", "default"}, {"labels", {{"shunt.dev/mesh", "enabled"}}}}}});
    const char* app[] = {"front", "api", "api", "other"};
    for (int i = 0; i < 4; ++i) {
      json labels = {{"app", app[i]}};
      if (i == 1) labels["version"] = "v1";
      if (i == 2) labels["version"] = "v2";
      items.push_back({{"apiVersion", "v1"}, {"kind", "Pod"},
                       {"metadata", {{"namespace", "default"}, {"name", P(i).name}, {"uid", P(i).uid},
                                     {"labels", labels}}},
                       {"spec", {{"nodeName", bed_->node(0).name},
                                 {"serviceAccountName", i == 0 ? "front" : "default"}}},
                       {"status", {{"phase", "Running"}, {"podIP", P(i).ipv4},
                                   {"podIPs", {{{"ip", P(i).ipv4}}, {{"ip", P(i).ipv6}}}}}}});
    }
    items.push_back({{"apiVersion", "v1"}, {"kind", "Service"},
                     {"metadata", {{"namespace", "default"}, {"name", "api"}}},
                     {"spec", {{"clusterIP", kVip}, {"selector", {{"app", "api"}}},
                               {"ports", {{{"name", "http"}, {"port", 80}, {"targetPort", 8080}}}}}}});
    json eps = json::array();
    for (int i : {1, 2}) {
      eps.push_back({{"addresses", {P(i).ipv4}}, {"nodeName", bed_->node(0).name},
                     {"targetRef", {{"kind", "Pod"}, {"uid", P(i).uid}}}});
    }
    items.push_back({{"apiVersion", "discovery.k8s.io/v1"}, {"kind", "EndpointSlice"},
                     {"metadata", {{"namespace", "default"}, {"name", "api-1"},
                                   {"labels", {{"kubernetes.io/service-name", "api"}}}}},
                     {"addressType", "IPv4"},
                     {"ports", {{{"name", "http"}, {"port", 8080}}}},
                     {"endpoints", eps}});
    Write("cluster.json", {{"apiVersion", "v1"}, {"kind", "List"}, {"items", items}});
  }

  // kubectl apply: AccessPolicy default/deny-front, DENY from app=front to app=api.
  void WriteDenyFrontToApi() {
    Write("deny.yaml", {{"apiVersion", "policy.shunt.dev/v1alpha1"}, {"kind", "AccessPolicy"},
                        {"metadata", {{"namespace", "default"}, {"name", "deny-front"}}},
                        {"spec", {{"action", "DENY"},
                                  {"target", {{"matchLabels", {{"app", "api"}}}}},
                                  {"from", {{{"pods", {{"matchLabels", {{"app", "front"}}}}}}}}}}});
  }

  json Probe(const Pod& from, const std::string& to, int conns) {
    auto r = RunTestpeer(*bed_, from, {"probe", "--to=" + to, absl::StrCat("--conns=", conns)});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : json::object();
  }

  static uint64_t Count(const json& r, const std::string& field, const std::string& key) {
    if (!r.contains(field) || !r[field].contains(key)) return 0;
    return r[field][key].get<uint64_t>();
  }

  bool AwaitMapEntries(const std::string& map, double n) {
    return Eventually([&] {
      auto m = agent_->Scrape();
      return m.ok() && SumSamples(*m, "shunt_socklb_map_entries", {{"map", map}}) == n;
    });
  }

  std::unique_ptr<testbed::Testbed> bed_;
  std::string dir_;
  testbed::ProcessPtr controller_;
  std::unique_ptr<AgentProcess> agent_;
  std::vector<testbed::ProcessPtr> servers_;
};

TEST_F(ControlPlanePolicyTest, DenyAccessPolicyFailsConnectWithEpermUntilDeleted) {
  const std::string to = P(1).ipv4 + ":8080";
  ASSERT_EQ(Probe(P(0), to, 3).value("connected", -1), 3);
  WriteDenyFrontToApi();
  ASSERT_TRUE(AwaitMapEntries("policies", 1)) << agent_->Stderr();
  json r = Probe(P(0), to, 10);
  EXPECT_EQ(Count(r, "errors", "EPERM"), 10u) << r.dump();
  EXPECT_EQ(r.value("connected", -1), 0) << r.dump();
  auto m = agent_->Scrape();
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(SumSamples(*m, "shunt_access_denied_connections_total",
                       {{"source_pod", P(0).name}, {"policy", "default/deny-front"}}),
            10);
  EXPECT_EQ(Probe(P(3), to, 3).value("connected", -1), 3) << "other sources are not affected";
  // kubectl delete accesspolicy deny-front
  ASSERT_EQ(unlink((dir_ + "/deny.yaml").c_str()), 0);
  ASSERT_TRUE(AwaitMapEntries("policies", 0));
  EXPECT_EQ(Probe(P(0), to, 5).value("connected", -1), 5);
}

// A hostNetwork pod keeps its node's IP as its pod IP. A policy that targets it must not target
// the node: host services (and NodePorts) of the node stay reachable. Fails without the
// exclusion: the node's IP lands in the destinations map and the probe gets EPERM.
TEST_F(ControlPlanePolicyTest, PolicyTargetingAHostNetworkPodLeavesTheNodeAlone) {
  const testbed::Node& node = bed_->node(0);
  const std::string ready = bed_->work_dir() + "/host-server-ready";
  auto host_srv = bed_->SpawnOnNode(
      node, {TestpeerBinary(), "server", "--port=8090", "--bind=0.0.0.0", "--mode=ident",
             "--ident=host", "--ready-file=" + ready});
  ASSERT_TRUE(host_srv.ok()) << host_srv.status();
  ASSERT_TRUE(Eventually([&] { return access(ready.c_str(), F_OK) == 0; }));
  const std::string to_node = node.ipv4 + ":8090";
  ASSERT_EQ(Probe(P(0), to_node, 3).value("connected", -1), 3);
  Write("host-pod.json",
        {{"apiVersion", "v1"}, {"kind", "Pod"},
         {"metadata", {{"namespace", "default"}, {"name", "node-exporter"},
                       {"uid", "5f0c1a2b-0000-4000-8000-00000000beef"},
                       {"labels", {{"app", "api"}}}}},
         {"spec", {{"nodeName", node.name}, {"hostNetwork", true}}},
         {"status", {{"phase", "Running"}, {"podIP", node.ipv4},
                     {"podIPs", {{{"ip", node.ipv4}}}}}}});
  WriteDenyFrontToApi();
  ASSERT_TRUE(AwaitMapEntries("policies", 1)) << agent_->Stderr();
  ASSERT_TRUE(Eventually([&] {
    auto m = agent_->Scrape();
    return m.ok() && SumSamples(*m, "shunt_policy_local_workloads") == 5;
  }))
      << "the hostNetwork pod reached the agent";
  EXPECT_EQ(Count(Probe(P(0), P(1).ipv4 + ":8080", 3), "errors", "EPERM"), 3u)
      << "the policy is enforced on the pods it targets";
  json r = Probe(P(0), to_node, 3);
  EXPECT_EQ(r.value("connected", -1), 3) << "the node's own service is no target: " << r.dump();
}

// ACK means enforced (issue 8 item 8): 64 DENY policies whose source (pod 0) runs on this node,
// one over the node's cap of 63. The agent ACKs, and says which one it does not enforce: /readyz
// 503 naming it, shunt_agent_policy_not_enforced, shunt_agent_synced 0, and the controller counts
// it. With one policy fewer everything is enforced again. Fails without the report: /readyz
// stayed 200 and synced 1 while deny-63 let its traffic through.
TEST_F(ControlPlanePolicyTest, APolicyOverTheNodesCapIsReportedAsNotEnforced) {
  auto write_policies = [&](int first, int last) {
    json items = json::array();
    for (int i = first; i <= last; ++i) {
      items.push_back(
          {{"apiVersion", "policy.shunt.dev/v1alpha1"}, {"kind", "AccessPolicy"},
           {"metadata", {{"namespace", "default"}, {"name", absl::StrFormat("deny-%02d", i)}}},
           {"spec", {{"action", "DENY"},
                     {"target", {{"matchLabels", {{"app", "api"}}}}},
                     {"from", {{{"pods", {{"matchLabels", {{"app", "front"}}}}}}}}}}});
    }
    Write("policies.json", {{"apiVersion", "v1"}, {"kind", "List"}, {"items", items}});
  };
  auto readyz = [&] {
    auto r = agent_->Get("/readyz");
    return r.ok() ? std::make_pair(r->code, r->body) : std::make_pair(-1, std::string());
  };
  auto controller_metric = [&](const std::string& name) {
    auto r = HttpGetInNetns(bed_->node(0).netns, "127.0.0.1", 15014, "/metrics");
    return r.ok() && r->code == 200 ? SumSamples(ParsePrometheusText(r->body), name) : -1;
  };
  write_policies(0, 63);
  ASSERT_TRUE(Eventually([&] {
    auto [code, body] = readyz();
    return code == 503 && body.find("default/deny-63") != std::string::npos;
  }))
      << readyz().second << agent_->Stderr();
  EXPECT_NE(readyz().second.find("over the cap of 63"), std::string::npos) << readyz().second;
  EXPECT_EQ(readyz().second.find("default/deny-62"), std::string::npos) << "62 has a bit";
  auto m = agent_->Scrape();
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(SumSamples(*m, "shunt_agent_policy_not_enforced", {{"policy", "default/deny-63"}}), 1);
  EXPECT_EQ(SumSamples(*m, "shunt_agent_policy_not_enforced"), 1);
  EXPECT_EQ(SumSamples(*m, "shunt_agent_synced"), 0);
  EXPECT_TRUE(Eventually([&] { return controller_metric("shunt_controller_policies_not_enforced") == 1; }));
  EXPECT_EQ(controller_metric("shunt_controller_nodes_not_enforcing"), 1);
  EXPECT_EQ(Count(Probe(P(0), P(1).ipv4 + ":8080", 3), "errors", "EPERM"), 3u)
      << "the 63 with a bit are enforced";

  write_policies(1, 63);  // 63: all of them fit
  EXPECT_TRUE(Eventually([&] { return readyz().first == 200; })) << readyz().second;
  m = agent_->Scrape();
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(SumSamples(*m, "shunt_agent_policy_not_enforced"), 0);
  EXPECT_EQ(SumSamples(*m, "shunt_agent_synced"), 1);
  EXPECT_TRUE(Eventually([&] { return controller_metric("shunt_controller_policies_not_enforced") == 0; }));
  EXPECT_EQ(controller_metric("shunt_controller_nodes_not_enforcing"), 0);
}

TEST_F(ControlPlanePolicyTest, TrafficRouteSplitsEightyTwentyAndGetpeernameShowsTheVip) {
  Write("route.yaml",
        {{"apiVersion", "policy.shunt.dev/v1alpha1"}, {"kind", "TrafficRoute"},
         {"metadata", {{"namespace", "default"}, {"name", "api-split"}}},
         {"spec", {{"service", "api"},
                   {"rules", {{{"backends",
                                {{{"subset", {{"matchLabels", {{"version", "v1"}}}}}, {"weight", 80}},
                                 {{"subset", {{"matchLabels", {{"version", "v2"}}}}}, {"weight", 20}}}}}}}}}});
  ASSERT_TRUE(AwaitMapEntries("slots", 5)) << agent_->Stderr();  // 80:20 reduced to 4:1
  constexpr int kConns = 2000;
  const std::string vip = absl::StrCat(kVip, ":80");
  json r = Probe(P(0), vip, kConns);
  ASSERT_EQ(r.value("connected", -1), kConns) << r.dump();
  const double v1 = Count(r, "idents", "v1"), v2 = Count(r, "idents", "v2");
  EXPECT_EQ(v1 + v2, kConns);
  // Binomial(2000, 0.8): within 5 standard deviations (a false failure ~ 1 in 1.7 million).
  const double mean = kConns * 0.8, sigma = std::sqrt(kConns * 0.8 * 0.2);
  EXPECT_NEAR(v1, mean, 5 * sigma) << r.dump();
  EXPECT_EQ(Count(r, "peers", vip), static_cast<uint64_t>(kConns)) << "getpeername shows the VIP";
}

}  // namespace
}  // namespace shunt::e2e
