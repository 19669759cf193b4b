// The control plane end to end: a real shunt-controller (manifests source) and real agents in the
// test bed, talking over the gRPC policy stream; the kernel fast path as the observable effect.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "tests/e2e/e2e_util.h"

namespace shunt::e2e {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testbed::Pod;

constexpr int kStreamPort = 15010;
constexpr int kControllerMetricsPort = 15014;

template <typename F>
bool Eventually(F f, std::chrono::milliseconds timeout = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (f()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return f();
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
            "--controller-plaintext", "--controller-max-backoff-ms=300"});
  }

  void StartController() {
    auto p = bed_->SpawnOnNode(bed_->node(0),
                               {ControllerBinary(), "--manifests=" + manifests_, "--plaintext",
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
        *bed_, b, {absl::StrCat("--port=", port), "--mode=verify", "--conns=1"});
    EXPECT_TRUE(server.ok()) << server.status();
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
}

TEST_F(ControlPlaneTest, InvalidResourceIsNackedAndTheAgentKeepsItsLastGoodState) {
  WriteNamespace(true);
  ASSERT_TRUE(
      Eventually([&] { return AgentMetric(0, "shunt_policy_meshed_local_workloads") == 2; }));
  const Pod& a = bed_->pod(0, 0);
  // A second pod claiming pod a's IP (a recycled IP seen too early): the agents refuse it.
  Write("dup.json", PodManifest(a, bed_->node(0).name, "99999999-0000-4000-8000-000000000001",
                                "impostor", a.ipv4));
  ASSERT_TRUE(Eventually([&] { return ControllerMetric("shunt_controller_nacks_total") >= 2; }))
      << "both agents NACK";
  auto ready = agents_[0]->Get("/readyz");
  ASSERT_TRUE(ready.ok());
  EXPECT_EQ(ready->code, 503);
  EXPECT_NE(ready->body.find("rejected"), std::string::npos) << ready->body;
  EXPECT_NE(agents_[0]->Stderr().find(a.ipv4), std::string::npos) << "the NACK names the IP";
  EXPECT_EQ(AgentMetric(0, "shunt_policy_meshed_local_workloads"), 2);
  EXPECT_GE(SplicedTransfer(7102), 2 << 20) << "the last good state is still enforced";
  // Fixing the manifests brings the agents back in sync.
  ASSERT_EQ(unlink((manifests_ + "/dup.json").c_str()), 0);
  ASSERT_TRUE(Eventually([&] {
    auto r = agents_[0]->Get("/readyz");
    return r.ok() && r->code == 200;
  }));
}

TEST_F(ControlPlaneTest, ControllerDownThenAgentRestartThenControllerBack) {
  WriteNamespace(true);
  ASSERT_TRUE(
      Eventually([&] { return AgentMetric(0, "shunt_policy_meshed_local_workloads") == 2; }));
  ASSERT_TRUE(Eventually([&] { return AgentMetric(0, "shunt_agent_synced") == 1; }));

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

}  // namespace
}  // namespace shunt::e2e
