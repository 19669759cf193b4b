// The whole control plane in one process, through real protocols: a fake Kubernetes API server
// (list/watch over HTTP), the controller's Kubernetes source, the snapshot builder and the gRPC
// policy stream, down to an agent's policy store. Every event type of every kind must reach the
// agent; every CR gets its status written back.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/test_util.h"
#include "absl/strings/str_format.h"
#include "agent/dataplane/enforcement.h"
#include "agent/dataplane/service_policy.h"
#include "agent/policy/controller_source.h"
#include "agent/policy/policy_store.h"
#include "controller/cluster_state.h"
#include "controller/controller.h"
#include "controller/kube/kube_client.h"
#include "controller/kube/kube_source.h"
#include "controller/policy_server.h"
#include "grpcpp/grpcpp.h"
#include "tests/fake_kube/fake_kube_server.h"

namespace shunt::controller {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

using shunt::test::Eventually;

class KubeToAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(kube_.Start().ok());
    KubeConfig config;
    config.server = kube_.url();
    auto watch_client = KubeClient::Create(config);
    auto status_client = KubeClient::Create(config);
    ASSERT_TRUE(watch_client.ok() && status_client.ok());
    KubernetesSourceOptions o;
    o.initial_backoff = absl::Milliseconds(5);
    o.max_backoff = absl::Milliseconds(50);
    source_ = std::make_unique<KubernetesSource>(std::move(*watch_client), o);
    status_writer_ = std::make_unique<KubernetesStatusWriter>(std::move(*status_client));
    controller_ = std::make_unique<Controller>(Controller::Options{}, state_, server_,
                                               status_writer_.get());
    controller_->Start();
    ASSERT_TRUE(source_->Start(state_).ok());

    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&server_);
    controller::PolicyServer::ConfigureServer(b);
    grpc_ = b.BuildAndStart();
    agent::ControllerSourceOptions ao;
    ao.address = "127.0.0.1:" + std::to_string(port);
    agent_address_ = ao.address;
    ao.node = "node-a";
    ao.credentials = grpc::InsecureChannelCredentials();
    ao.min_backoff = absl::Milliseconds(20);
    ao.max_backoff = absl::Milliseconds(200);
    // What the agent reports it does not enforce: the real compiler's verdict on its policy for
    // node-a (the kernel side of it is ControlPlanePolicyTest's), under limits the test sets.
    ao.enforcement = [this](absl::Duration) {
      agent::Enforcement e;
      if (auto snapshot = store_.Current()) {
        agent::ServicePolicyLimits limits;
        limits.policy_dests = dests_limit_.load();
        agent::ServicePolicyIds ids;
        e.applied = true;
        e.not_enforced =
            agent::CompileServicePolicy(*snapshot, "node-a", {}, limits, ids).not_enforced;
        if (maps_not_written_) {
          e.not_enforced.push_back({"", "the access policy maps were not written: test", true});
        }
        // And what of the API cost policies is not in force here, as the agent says it.
        for (auto& part : agent::CostPoliciesNotEnforced(
                 *snapshot, "node-a", capture_,
                 [](const std::string&, const std::vector<std::string>&) { return true; })) {
          e.not_enforced.push_back(std::move(part));
        }
      }
      return agent::ToReport(e);
    };
    ao.report_interval = absl::Milliseconds(20);
    agent_ = std::make_unique<agent::ControllerPolicySource>(ao);
    ASSERT_TRUE(agent_
                    ->Start([this](absl::StatusOr<shunt::v1::PolicyBundle> u) {
                      store_.Apply("controller", std::move(u));
                    })
                    .ok());
  }

  void TearDown() override {
    agent_->Stop();
    grpc_->Shutdown(std::chrono::system_clock::now() + 1s);
    source_->Stop();
    controller_->Stop();
    kube_.Stop();
  }

  // The agent's current view.
  shunt::v1::PolicyBundle Bundle() {
    auto s = store_.Current();
    return s ? s->bundle : shunt::v1::PolicyBundle();
  }
  template <typename Pred>
  void Expect(Pred pred, const std::string& what) {
    EXPECT_TRUE(Eventually([&] { return pred(Bundle()); })) << what << "\n"
                                                             << Bundle().DebugString();
  }
  // status.conditions[type].status (or another field) of a CR in the fake API server.
  std::string Condition(Kind kind, const std::string& name, const std::string& type,
                        const std::string& field = "status") {
    auto o = kube_.Get(ObjectKey{kind, "default", name});
    if (!o.ok()) return "";
    const json& conds = (*o)["status"]["conditions"];
    if (!conds.is_array()) return "";
    for (const auto& c : conds) {
      if (c.value("type", "") == type) return c.value(field, "");
    }
    return "";
  }
  std::string Accepted(Kind kind, const std::string& name) {
    return Condition(kind, name, "Accepted");
  }

  static json Obj(const std::string& api_version, const std::string& kind, const std::string& name,
                  json rest = json::object()) {
    json o = {{"apiVersion", api_version}, {"kind", kind},
              {"metadata", {{"name", name}, {"namespace", "default"}}}};
    for (auto& [k, v] : rest.items()) o[k] = v;
    return o;
  }
  static json Cr(const std::string& kind, const std::string& name, json spec) {
    return Obj("policy.shunt.dev/v1alpha1", kind, name, {{"spec", spec}});
  }

  shunt::testing::FakeKubeServer kube_;
  ClusterState state_;
  PolicyServer server_{nullptr};
  std::unique_ptr<KubernetesSource> source_;
  std::unique_ptr<KubernetesStatusWriter> status_writer_;
  std::unique_ptr<Controller> controller_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<agent::ControllerPolicySource> agent_;
  agent::PolicyStore store_;
  std::atomic<uint32_t> dests_limit_{1u << 20};
  std::atomic<bool> maps_not_written_{false};
  std::atomic<bool> capture_{true};  // the agent of node-a runs --capture
  std::string agent_address_;
};

TEST_F(KubeToAgentTest, EveryEventOfEveryKindReachesTheAgent) {
  // Namespace + Pod.
  json ns = {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", "default"}}}};
  ASSERT_TRUE(kube_.Create(ns).ok());
  auto pod = kube_.Create(Obj("v1", "Pod", "web-0",
                              {{"spec", {{"nodeName", "node-a"}}},
                               {"status", {{"phase", "Running"}, {"podIP", "198.18.0.2"}}}}));
  ASSERT_TRUE(pod.ok());
  Expect([](const auto& b) { return b.workloads_size() == 1 && !b.workloads(0).meshed(); },
         "pod added");
  ns["metadata"]["labels"] = {{"shunt.dev/mesh", "enabled"}};
  ASSERT_TRUE(kube_.Update(ns).ok());
  Expect([](const auto& b) { return b.workloads_size() == 1 && b.workloads(0).meshed(); },
         "namespace modified: pod meshed");
  json p = *pod;
  p["status"]["podIP"] = "198.18.0.9";
  ASSERT_TRUE(kube_.Update(p).ok());
  Expect([](const auto& b) { return b.workloads_size() == 1 && b.workloads(0).ips(0) == "198.18.0.9"; },
         "pod modified");
  ASSERT_TRUE(kube_.Delete(ObjectKey{Kind::kNamespace, "", "default"}).ok());
  Expect([](const auto& b) { return b.workloads_size() == 1 && !b.workloads(0).meshed(); },
         "namespace deleted: pod no longer meshed");
  ASSERT_TRUE(kube_.Delete(ObjectKey{Kind::kPod, "default", "web-0"}).ok());
  Expect([](const auto& b) { return b.workloads_size() == 0; }, "pod deleted");

  // Service + EndpointSlice.
  json svc = Obj("v1", "Service", "web",
                 {{"spec", {{"clusterIP", "198.18.255.10"}, {"ports", {{{"port", 80}}}}}}});
  ASSERT_TRUE(kube_.Create(svc).ok());
  Expect([](const auto& b) { return b.services_size() == 1 && b.services(0).ports(0).port() == 80; },
         "service added");
  svc["spec"]["ports"][0]["port"] = 81;
  ASSERT_TRUE(kube_.Update(svc).ok());
  Expect([](const auto& b) { return b.services_size() == 1 && b.services(0).ports(0).port() == 81; },
         "service modified");
  json slice = Obj("discovery.k8s.io/v1", "EndpointSlice", "web-1",
                   {{"addressType", "IPv4"}, {"endpoints", {{{"addresses", {"198.18.0.2"}}}}}});
  slice["metadata"]["labels"] = {{"kubernetes.io/service-name", "web"}};
  ASSERT_TRUE(kube_.Create(slice).ok());
  Expect([](const auto& b) {
    return b.services_size() == 1 && b.services(0).endpoints_size() == 1 &&
           b.services(0).endpoints(0).ips(0) == "198.18.0.2";
  }, "endpointslice added");
  slice["endpoints"][0]["addresses"][0] = "198.18.0.3";
  ASSERT_TRUE(kube_.Update(slice).ok());
  Expect([](const auto& b) {
    return b.services_size() == 1 && b.services(0).endpoints_size() == 1 &&
           b.services(0).endpoints(0).ips(0) == "198.18.0.3";
  }, "endpointslice modified");
  ASSERT_TRUE(kube_.Delete(ObjectKey{Kind::kEndpointSlice, "default", "web-1"}).ok());
  Expect([](const auto& b) { return b.services_size() == 1 && b.services(0).endpoints_size() == 0; },
         "endpointslice deleted");

  // The three CRs: add (status Accepted=True), modify, delete.
  json route = Cr("TrafficRoute", "split",
                  {{"service", "web"}, {"rules", {{{"backends", {{{"service", "web"}, {"weight", 1}}}}}}}});
  ASSERT_TRUE(kube_.Create(route).ok());
  Expect([](const auto& b) { return b.traffic_routes_size() == 1; }, "route added");
  EXPECT_TRUE(Eventually([&] { return Accepted(Kind::kTrafficRoute, "split") == "True"; }));
  route["spec"]["rules"][0]["backends"][0]["weight"] = 7;
  ASSERT_TRUE(kube_.Update(route).ok());
  Expect([](const auto& b) {
    return b.traffic_routes_size() == 1 && b.traffic_routes(0).rules(0).backends(0).weight() == 7;
  }, "route modified");

  json deny = Cr("AccessPolicy", "deny", {{"action", "DENY"}, {"from", {{{"namespaces", {"x"}}}}}});
  ASSERT_TRUE(kube_.Create(deny).ok());
  Expect([](const auto& b) { return b.access_policies_size() == 1; }, "access policy added");
  EXPECT_TRUE(Eventually([&] { return Accepted(Kind::kAccessPolicy, "deny") == "True"; }));
  deny["spec"]["action"] = "ALLOW";
  ASSERT_TRUE(kube_.Update(deny).ok());
  Expect([](const auto& b) {
    return b.access_policies_size() == 1 &&
           b.access_policies(0).action() == shunt::v1::AccessPolicy::ALLOW;
  }, "access policy modified");

  json cost = Cr("ApiCostPolicy", "price", {{"service", "web"}, {"currency", "USD"}});
  ASSERT_TRUE(kube_.Create(cost).ok());
  Expect([](const auto& b) { return b.api_cost_policies_size() == 1; }, "cost policy added");
  EXPECT_TRUE(Eventually([&] { return Accepted(Kind::kApiCostPolicy, "price") == "True"; }));
  cost["spec"]["currency"] = "EUR";
  ASSERT_TRUE(kube_.Update(cost).ok());
  Expect([](const auto& b) {
    return b.api_cost_policies_size() == 1 && b.api_cost_policies(0).currency() == "EUR";
  }, "cost policy modified");

  // An invalid CR: not sent, status says why.
  ASSERT_TRUE(kube_.Create(Cr("TrafficRoute", "orphan",
                              {{"service", "nope"}, {"rules", {{{"backends", {{{"service", "x"}, {"weight", 1}}}}}}}}))
                  .ok());
  EXPECT_TRUE(Eventually([&] { return Accepted(Kind::kTrafficRoute, "orphan") == "False"; }));
  EXPECT_EQ(Bundle().traffic_routes_size(), 1);

  for (auto [kind, name] : {std::pair{Kind::kTrafficRoute, "split"},
                            std::pair{Kind::kAccessPolicy, "deny"},
                            std::pair{Kind::kApiCostPolicy, "price"},
                            std::pair{Kind::kService, "web"}}) {
    ASSERT_TRUE(kube_.Delete(ObjectKey{kind, "default", name}).ok());
  }
  Expect([](const auto& b) {
    return b.traffic_routes_size() == 0 && b.access_policies_size() == 0 &&
           b.api_cost_policies_size() == 0 && b.services_size() == 0;
  }, "CRs and service deleted");
  EXPECT_TRUE(agent_->InSync().ok());
}

// ACK means enforced (issue 8 item 8), as a user sees it: `kubectl get accesspolicy` shows
// Enforced=False, with the node and why, for the policy an agent reports it does not enforce,
// and True again once it does. 64 DENY policies from a meshed pod of node-a: deny-63 is over
// that node's cap (reported with the ACK). Then node-a's destinations map is full (reported
// alone, no new version): every policy is not enforced there; then it has room again.
TEST_F(KubeToAgentTest, WhatAnAgentDoesNotEnforceIsInThePolicysStatus) {
  ASSERT_TRUE(kube_.Create(Obj("v1", "Namespace", "default",
                               {{"metadata", {{"name", "default"},
                                              {"labels", {{"shunt.dev/mesh", "enabled"}}}}}}))
                  .ok());
  for (const auto& [name, app] : {std::pair{"client", "front"}, {"server", "api"}}) {
    ASSERT_TRUE(kube_.Create(Obj("v1", "Pod", name,
                                 {{"metadata", {{"name", name}, {"namespace", "default"},
                                                {"uid", std::string("uid-") + name},
                                                {"labels", {{"app", app}}}}},
                                  {"spec", {{"nodeName", "node-a"}}},
                                  {"status", {{"phase", "Running"},
                                              {"podIP", app == std::string("api") ? "198.18.0.3"
                                                                                  : "198.18.0.2"}}}}))
                    .ok());
  }
  for (int i = 0; i < 64; ++i) {
    ASSERT_TRUE(kube_.Create(Cr("AccessPolicy", absl::StrFormat("deny-%02d", i),
                                {{"action", "DENY"},
                                 {"target", {{"matchLabels", {{"app", "api"}}}}},
                                 {"from", {{{"pods", {{"matchLabels", {{"app", "front"}}}}}}}}}))
                    .ok());
  }
  ASSERT_TRUE(Eventually([&] { return Condition(Kind::kAccessPolicy, "deny-63", "Enforced") == "False"; }, 20s));
  const std::string why = Condition(Kind::kAccessPolicy, "deny-63", "Enforced", "message");
  EXPECT_NE(why.find("node-a: over the cap of 63"), std::string::npos) << why;
  EXPECT_EQ(Condition(Kind::kAccessPolicy, "deny-63", "Enforced", "reason"), "NotEnforced");
  EXPECT_EQ(Accepted(Kind::kAccessPolicy, "deny-63"), "True");
  EXPECT_TRUE(Eventually([&] { return Condition(Kind::kAccessPolicy, "deny-62", "Enforced") == "True"; }));
  EXPECT_TRUE(agent_->InSync().ok()) << "ACKed: not enforced is not NACKed";

  dests_limit_ = 0;  // no new version: the agent reports it alone
  // Statuses are written in name order: once the last is, the pass is done.
  EXPECT_TRUE(Eventually([&] { return Condition(Kind::kAccessPolicy, "deny-62", "Enforced") == "False"; }));
  EXPECT_EQ(Condition(Kind::kAccessPolicy, "deny-00", "Enforced"), "False");
  EXPECT_NE(Condition(Kind::kAccessPolicy, "deny-00", "Enforced", "message").find("map of this node is full"),
            std::string::npos);
  dests_limit_ = 1u << 20;
  // Written in name order: the last one that fits is written last.
  EXPECT_TRUE(Eventually([&] { return Condition(Kind::kAccessPolicy, "deny-62", "Enforced") == "True"; }));
  EXPECT_EQ(Condition(Kind::kAccessPolicy, "deny-00", "Enforced"), "True");

  // A node-wide part that leaves every access policy of node-a unenforced (its maps not
  // written): every policy says so.
  maps_not_written_ = true;
  EXPECT_TRUE(Eventually([&] { return Condition(Kind::kAccessPolicy, "deny-62", "Enforced") == "False"; }));
  EXPECT_NE(Condition(Kind::kAccessPolicy, "deny-10", "Enforced", "message").find("node-a: the access policy maps were not written"),
            std::string::npos)
      << Condition(Kind::kAccessPolicy, "deny-10", "Enforced", "message");
  maps_not_written_ = false;
  EXPECT_TRUE(Eventually([&] { return Condition(Kind::kAccessPolicy, "deny-62", "Enforced") == "True"; }));
  EXPECT_EQ(Condition(Kind::kAccessPolicy, "deny-10", "Enforced"), "True");

  ASSERT_TRUE(kube_.Delete(ObjectKey{Kind::kAccessPolicy, "default", "deny-00"}).ok());
  EXPECT_TRUE(Eventually([&] { return Condition(Kind::kAccessPolicy, "deny-63", "Enforced") == "True"; }));
}

// An ApiCostPolicy's Enforced condition: False, naming the node, while the agent of a node with
// pods of its Service runs without --capture (their calls are not read); True once it does, and
// for a Service with no pod on the reporting node.
TEST_F(KubeToAgentTest, AnApiCostPolicyIsNotInForceWhereItsPodsAreNotCaptured) {
  capture_ = false;
  ASSERT_TRUE(kube_.Create(Obj("v1", "Namespace", "default",
                               {{"metadata", {{"name", "default"},
                                              {"labels", {{"shunt.dev/mesh", "enabled"}}}}}}))
                  .ok());
  auto pod = kube_.Create(Obj("v1", "Pod", "llm-0",
                              {{"spec", {{"nodeName", "node-a"}}},
                               {"status", {{"phase", "Running"}, {"podIP", "198.18.0.5"}}}}));
  ASSERT_TRUE(pod.ok());
  const std::string uid = (*pod)["metadata"]["uid"];  // the API server's
  for (const char* name : {"llm", "elsewhere"}) {
    ASSERT_TRUE(kube_.Create(Obj("v1", "Service", name,
                                 {{"spec", {{"clusterIP", std::string(name) == "llm"
                                                              ? "198.18.255.20"
                                                              : "198.18.255.21"},
                                            {"ports", {{{"port", 80}}}}}}}))
                    .ok());
  }
  json slice = Obj("discovery.k8s.io/v1", "EndpointSlice", "llm-1",
                   {{"addressType", "IPv4"},
                    {"endpoints", {{{"addresses", {"198.18.0.5"}},
                                    {"targetRef", {{"kind", "Pod"}, {"name", "llm-0"},
                                                   {"uid", uid}}}}}}});
  slice["metadata"]["labels"] = {{"kubernetes.io/service-name", "llm"}};
  ASSERT_TRUE(kube_.Create(slice).ok());
  for (const auto& [name, service] : {std::pair{"price", "llm"}, {"price-elsewhere", "elsewhere"}}) {
    ASSERT_TRUE(kube_.Create(Cr("ApiCostPolicy", name,
                                {{"service", service},
                                 {"currency", "USD"},
                                 {"routes", {{{"name", "all"}, {"perRequest", "0.01"}}}}}))
                    .ok());
  }
  ASSERT_TRUE(Eventually([&] { return Condition(Kind::kApiCostPolicy, "price", "Enforced") == "False"; }, 20s))
      << Accepted(Kind::kApiCostPolicy, "price") << " "
      << Condition(Kind::kApiCostPolicy, "price", "Accepted", "message") << " "
      << Condition(Kind::kApiCostPolicy, "price", "Enforced") << "\n"
      << Bundle().DebugString();
  const std::string why = Condition(Kind::kApiCostPolicy, "price", "Enforced", "message");
  EXPECT_NE(why.find("node-a: the agent runs without --capture"), std::string::npos) << why;
  EXPECT_EQ(Condition(Kind::kApiCostPolicy, "price", "Enforced", "reason"), "NotEnforced");
  EXPECT_EQ(Accepted(Kind::kApiCostPolicy, "price"), "True");
  // Its Service has no pod on node-a: nothing to do there.
  EXPECT_TRUE(Eventually([&] { return Condition(Kind::kApiCostPolicy, "price-elsewhere", "Enforced") == "True"; }));
  // The agent captures now (no new version: its report alone).
  capture_ = true;
  EXPECT_TRUE(Eventually([&] { return Condition(Kind::kApiCostPolicy, "price", "Enforced") == "True"; }));
  EXPECT_TRUE(agent_->InSync().ok());
}

// A generation no report covers yet is Enforced Unknown, not True because nobody said otherwise:
// a second agent (node-b) that reports, then takes its time to apply the version with a new
// policy (its ACK waits for its kernel), holds the policy at Unknown until it ACKs.
TEST_F(KubeToAgentTest, APolicyIsEnforcedUnknownUntilEveryReportingAgentAppliedIt) {
  absl::Mutex mu;
  bool hold = false;
  agent::PolicyStore store_b;
  agent::ControllerSourceOptions bo;
  bo.address = agent_address_;
  bo.node = "node-b";
  bo.credentials = grpc::InsecureChannelCredentials();
  bo.enforcement_wait = absl::Seconds(30);
  bo.enforcement = [&](absl::Duration) {
    absl::MutexLock l(&mu);
    auto released = [&] { return !hold; };
    mu.Await(absl::Condition(&released));
    return shunt::v1::EnforcementReport();  // all of it enforced
  };
  agent::ControllerPolicySource agent_b(bo);
  ASSERT_TRUE(agent_b.Start([&](absl::StatusOr<shunt::v1::PolicyBundle> u) {
                       store_b.Apply("controller", std::move(u));
                     }).ok());
  ASSERT_TRUE(Eventually([&] { return agent_b.InSync().ok(); }));
  {
    absl::MutexLock l(&mu);
    hold = true;
  }
  ASSERT_TRUE(kube_.Create(Cr("AccessPolicy", "fresh",
                              {{"action", "DENY"}, {"from", {{{"namespaces", {"x"}}}}}}))
                  .ok());
  EXPECT_TRUE(Eventually([&] { return Condition(Kind::kAccessPolicy, "fresh", "Enforced") == "Unknown"; }));
  EXPECT_EQ(Condition(Kind::kAccessPolicy, "fresh", "Enforced", "reason"), "Pending");
  EXPECT_EQ(Accepted(Kind::kAccessPolicy, "fresh"), "True");
  {
    absl::MutexLock l(&mu);
    hold = false;
  }
  EXPECT_TRUE(Eventually([&] { return Condition(Kind::kAccessPolicy, "fresh", "Enforced") == "True"; }));
  agent_b.Stop();
}

}  // namespace
}  // namespace shunt::controller
