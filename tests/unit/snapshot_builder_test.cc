// Kubernetes objects -> policy resources, without a cluster.
#include "controller/snapshot_builder.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/resources.h"
#include "shunt/socklb_abi.h"

namespace shunt::controller {
static_assert(shunt::controller::kAccessPolicyMaxPortRanges == SHUNT_AP_MAX_PORT_RANGES,
              "the controller accepts what the agents check");

namespace {

using nlohmann::json;

class Objects {
 public:
  Objects& Add(json o) {
    auto key = KeyOf(o);
    EXPECT_TRUE(key.ok()) << key.status() << o.dump();
    if (key.ok()) map_[*key] = StoredObject{"test", std::make_shared<const json>(std::move(o))};
    return *this;
  }
  const ObjectMap& map() const { return map_; }

 private:
  ObjectMap map_;
};

json Namespace(const std::string& name, bool meshed) {
  json ns = {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", name}}}};
  if (meshed) ns["metadata"]["labels"] = {{"shunt.dev/mesh", "enabled"}};
  return ns;
}

json Pod(const std::string& ns, const std::string& name, const std::string& uid,
         const std::string& ip, json extra_meta = json::object()) {
  json p = {{"apiVersion", "v1"},
            {"kind", "Pod"},
            {"metadata", {{"namespace", ns}, {"name", name}, {"uid", uid}}},
            {"spec", {{"nodeName", "node-a"}, {"serviceAccountName", "sa-" + name}}},
            {"status", {{"phase", "Running"}, {"podIP", ip}, {"podIPs", {{{"ip", ip}}}}}}};
  for (auto& [k, v] : extra_meta.items()) p["metadata"][k] = v;
  return p;
}

const shunt::v1::Workload* FindWorkload(const Snapshot& s, const std::string& uid) {
  for (const auto& [k, rp] : s.resources) {
    const shunt::v1::Resource& r = *rp;
    if (r.has_workload() && r.workload().uid() == uid) return &r.workload();
  }
  return nullptr;
}

const PolicyStatus* FindStatus(const Snapshot& s, const std::string& name) {
  for (const auto& st : s.statuses) {
    if (st.key.name == name) return &st;
  }
  return nullptr;
}

TEST(BuildSnapshot, MeshMembershipByNamespaceLabelAndPodAnnotation) {
  Objects o;
  o.Add(Namespace("mesh", true)).Add(Namespace("plain", false));
  o.Add(Pod("mesh", "a", "uid-a", "198.18.0.2"));
  o.Add(
      Pod("mesh", "b", "uid-b", "198.18.0.3", {{"annotations", {{"shunt.dev/mesh", "disabled"}}}}));
  o.Add(Pod("plain", "c", "uid-c", "198.18.0.4"));
  o.Add(
      Pod("plain", "d", "uid-d", "198.18.0.5", {{"annotations", {{"shunt.dev/mesh", "enabled"}}}}));
  Snapshot s = BuildSnapshot(o.map());
  ASSERT_NE(FindWorkload(s, "uid-a"), nullptr);
  EXPECT_TRUE(FindWorkload(s, "uid-a")->meshed());
  EXPECT_FALSE(FindWorkload(s, "uid-b")->meshed());
  EXPECT_FALSE(FindWorkload(s, "uid-c")->meshed());
  EXPECT_TRUE(FindWorkload(s, "uid-d")->meshed());
  const auto* a = FindWorkload(s, "uid-a");
  EXPECT_EQ(a->namespace_(), "mesh");
  EXPECT_EQ(a->node(), "node-a");
  EXPECT_EQ(a->service_account(), "sa-a");
  ASSERT_EQ(a->ips_size(), 1);
  EXPECT_EQ(a->ips(0), "198.18.0.2");
}

TEST(BuildSnapshot, FinishedUnscheduledAndHostNetworkPods) {
  Objects o;
  o.Add(Namespace("mesh", true));
  json done = Pod("mesh", "done", "uid-done", "198.18.0.2");
  done["status"]["phase"] = "Succeeded";
  json pending = Pod("mesh", "pending", "uid-pending", "");
  pending["spec"].erase("nodeName");
  json host = Pod("mesh", "host", "uid-host", "198.19.0.1");
  host["spec"]["hostNetwork"] = true;
  o.Add(done).Add(pending).Add(host);
  Snapshot s = BuildSnapshot(o.map());
  EXPECT_EQ(FindWorkload(s, "uid-done"), nullptr) << "its IP may already be someone else's";
  EXPECT_EQ(FindWorkload(s, "uid-pending"), nullptr);
  ASSERT_NE(FindWorkload(s, "uid-host"), nullptr);
  EXPECT_FALSE(FindWorkload(s, "uid-host")->meshed());
  EXPECT_TRUE(FindWorkload(s, "uid-host")->host_network());
  EXPECT_EQ(FindWorkload(s, "uid-host")->ips_size(), 0) << "its IP is the node's";
  EXPECT_FALSE(FindWorkload(s, "uid-done") && FindWorkload(s, "uid-done")->host_network());
}

TEST(BuildSnapshot, ARecycledIpStaysWithThePodThatIsNotBeingDeleted) {
  Objects o;
  o.Add(Pod("default", "old", "u-old", "198.18.0.2",
            {{"deletionTimestamp", "2026-11-25T10:00:05Z"},
             {"creationTimestamp", "2026-11-25T09:00:00Z"}}));
  o.Add(Pod("default", "new", "u-new", "198.18.0.2",
            {{"creationTimestamp", "2026-11-25T10:00:04Z"}}));
  o.Add(Pod("default", "a", "u-a", "198.18.0.3", {{"creationTimestamp", "2026-11-25T08:00:00Z"}}));
  o.Add(Pod("default", "b", "u-b", "198.18.0.3", {{"creationTimestamp", "2026-11-25T08:00:01Z"}}));
  Snapshot s = BuildSnapshot(o.map());
  ASSERT_EQ(FindWorkload(s, "u-new")->ips_size(), 1);
  EXPECT_EQ(FindWorkload(s, "u-old")->ips_size(), 0) << "the terminating pod loses it";
  EXPECT_EQ(FindWorkload(s, "u-b")->ips_size(), 1) << "else the newer pod keeps it";
  EXPECT_EQ(FindWorkload(s, "u-a")->ips_size(), 0);
  EXPECT_EQ(s.warnings.size(), 2u);
  for (const auto& [k, r] : s.resources) EXPECT_EQ(r->version(), ResourceVersion(*r));
}

TEST(BuildSnapshot, AnIpListedTwiceByOnePodIsKeptOnce) {
  Objects o;
  nlohmann::json pod = Pod("default", "twice", "u-twice", "198.18.0.2");
  pod["status"]["podIPs"] = {{{"ip", "198.18.0.2"}}, {{"ip", "198.18.0.2"}}, {{"ip", "fd00::2"}}};
  o.Add(pod);
  Snapshot s = BuildSnapshot(o.map());
  ASSERT_NE(FindWorkload(s, "u-twice"), nullptr);
  EXPECT_THAT(FindWorkload(s, "u-twice")->ips(), ::testing::ElementsAre("198.18.0.2", "fd00::2"));
  EXPECT_TRUE(s.warnings.empty());
}

// Two spellings of one address are one address (the agent compares bytes and would refuse the
// bundle for a duplicate): every IP is sent in one spelling, v4-mapped IPv6 as IPv4.
TEST(BuildSnapshot, IpsAreSentInOneSpelling) {
  Objects o;
  nlohmann::json pod = Pod("default", "p", "u-p", "FD00:0:0::0002");
  pod["status"]["podIPs"] = {{{"ip", "FD00:0:0::0002"}}, {{"ip", "fd00::2"}},
                             {{"ip", "::ffff:198.18.0.2"}}, {{"ip", "198.18.0.2"}}};
  o.Add(pod);
  o.Add(Pod("default", "q", "u-q", "::FFFF:198.18.0.2"));  // the same IPv4, spelt as IPv6
  Snapshot s = BuildSnapshot(o.map());
  ASSERT_NE(FindWorkload(s, "u-p"), nullptr);
  EXPECT_THAT(FindWorkload(s, "u-p")->ips(), ::testing::ElementsAre("fd00::2", "198.18.0.2"));
  // Pod q claims p's IPv4 in another spelling: seen as the duplicate it is (one keeps it).
  ASSERT_NE(FindWorkload(s, "u-q"), nullptr);
  EXPECT_EQ(FindWorkload(s, "u-p")->ips_size() + FindWorkload(s, "u-q")->ips_size(), 2);
  EXPECT_EQ(s.warnings.size(), 1u);
}

TEST(BuildSnapshot, OwnerIsTheDeploymentBehindAReplicaSet) {
  Objects o;
  o.Add(Pod("default", "web-7d9f8-x2", "u1", "198.18.0.2",
            {{"labels", {{"pod-template-hash", "7d9f8"}, {"app", "web"}}},
             {"ownerReferences",
              {{{"kind", "ReplicaSet"}, {"name", "web-7d9f8"}, {"controller", true}}}}}));
  o.Add(Pod(
      "default", "db-0", "u2", "198.18.0.3",
      {{"ownerReferences", {{{"kind", "StatefulSet"}, {"name", "db"}, {"controller", true}}}}}));
  o.Add(Pod("default", "lonely", "u3", "198.18.0.4"));
  Snapshot s = BuildSnapshot(o.map());
  EXPECT_EQ(FindWorkload(s, "u1")->owner(), "web");
  EXPECT_EQ(FindWorkload(s, "u1")->labels().at("app"), "web");
  EXPECT_EQ(FindWorkload(s, "u2")->owner(), "db");
  EXPECT_EQ(FindWorkload(s, "u3")->owner(), "lonely");
}

TEST(BuildSnapshot, ServiceWithEndpointSlices) {
  Objects o;
  o.Add({{"apiVersion", "v1"},
         {"kind", "Service"},
         {"metadata", {{"namespace", "default"}, {"name", "web"}}},
         {"spec",
          {{"clusterIPs", {"10.96.0.10", "fd00::10"}},
           {"selector", {{"app", "web"}}},
           {"ports",
            {{{"name", "http"}, {"port", 80}, {"targetPort", 8080}, {"appProtocol", "http"}}}}}}});
  o.Add({{"apiVersion", "discovery.k8s.io/v1"},
         {"kind", "EndpointSlice"},
         {"metadata",
          {{"namespace", "default"},
           {"name", "web-abc"},
           {"labels", {{"kubernetes.io/service-name", "web"}}}}},
         {"addressType", "IPv4"},
         {"ports", {{{"name", "http"}, {"port", 8080}}}},
         {"endpoints",
          {{{"addresses", {"198.18.0.2"}},
            {"nodeName", "node-a"},
            {"targetRef", {{"kind", "Pod"}, {"uid", "u1"}}}},
           {{"addresses", {"198.18.0.3"}}, {"conditions", {{"ready", false}}}}}}});
  Snapshot s = BuildSnapshot(o.map());
  const shunt::v1::Service* svc = nullptr;
  for (const auto& [k, rp] : s.resources) {
    const shunt::v1::Resource& r = *rp;
    if (r.has_service()) svc = &r.service();
  }
  ASSERT_NE(svc, nullptr);
  ASSERT_EQ(svc->vips_size(), 2);
  ASSERT_EQ(svc->ports_size(), 1);
  EXPECT_EQ(svc->ports(0).target_port(), 8080u);
  EXPECT_EQ(svc->ports(0).app_protocol(), "http");
  EXPECT_EQ(svc->ports(0).protocol(), "TCP");
  ASSERT_EQ(svc->endpoints_size(), 2);
  EXPECT_TRUE(svc->endpoints(0).ready());
  EXPECT_EQ(svc->endpoints(0).workload_uid(), "u1");
  EXPECT_EQ(svc->endpoints(0).ports(0).port(), 8080u);
  EXPECT_FALSE(svc->endpoints(1).ready());
}

TEST(BuildSnapshot, HeadlessAndExternalNameServices) {
  Objects o;
  o.Add({{"apiVersion", "v1"},
         {"kind", "Service"},
         {"metadata", {{"namespace", "default"}, {"name", "headless"}}},
         {"spec", {{"clusterIP", "None"}}}});
  o.Add({{"apiVersion", "v1"},
         {"kind", "Service"},
         {"metadata", {{"namespace", "default"}, {"name", "ext"}}},
         {"spec", {{"type", "ExternalName"}, {"externalName", "example.org"}}}});
  Snapshot s = BuildSnapshot(o.map());
  ASSERT_EQ(s.resources.size(), 1u);
  EXPECT_EQ(s.resources.begin()->second->service().vips_size(), 0);
}

json Cr(const std::string& kind, const std::string& name, json spec, int generation = 3) {
  return {{"apiVersion", "policy.shunt.dev/v1alpha1"},
          {"kind", kind},
          {"metadata", {{"namespace", "default"}, {"name", name}, {"generation", generation}}},
          {"spec", spec}};
}

TEST(BuildSnapshot, PolicyCrsAreAcceptedOrRejectedWithAReason) {
  Objects o;
  o.Add({{"apiVersion", "v1"},
         {"kind", "Service"},
         {"metadata", {{"namespace", "default"}, {"name", "web"}}}});
  o.Add(Cr("TrafficRoute", "split",
           {{"service", "web"},
            {"rules",
             {{{"backends",
                {{{"subset", {{"matchLabels", {{"v", "1"}}}}}, {"weight", 80}},
                 {{"subset", {{"matchLabels", {{"v", "2"}}}}}, {"weight", 20}}}}}}}}));
  o.Add(
      Cr("TrafficRoute", "orphan",
         {{"service", "nope"}, {"rules", {{{"backends", {{{"service", "x"}, {"weight", 1}}}}}}}}));
  o.Add(Cr("TrafficRoute", "zero",
           {{"service", "web"}, {"rules", {{{"backends", {{{"service", "x"}, {"weight", 0}}}}}}}}));
  o.Add(Cr("AccessPolicy", "deny", {{"action", "DENY"}, {"from", {{{"namespaces", {"evil"}}}}}}));
  o.Add(Cr("AccessPolicy", "noaction", {{"from", {{{"namespaces", {"x"}}}}}}));
  o.Add(Cr("AccessPolicy", "badcidr",
           {{"action", "ALLOW"}, {"from", {{{"ipBlocks", {"10.0.0.0/33"}}}}}}));
  o.Add(Cr("AccessPolicy", "typo", {{"action", "ALLOW"}, {"form", json::array()}}));
  // More port ranges than an agent checks at connect(): never enforceable, so never sent (an
  // agent would ACK it unenforced).
  json ranges = json::array();
  for (int i = 0; i < kAccessPolicyMaxPortRanges + 1; ++i) ranges.push_back({{"from", 1000 + i}});
  o.Add(Cr("AccessPolicy", "manyports", {{"action", "DENY"}, {"ports", ranges}}));
  ranges.erase(ranges.end() - 1);
  o.Add(Cr("AccessPolicy", "eightports", {{"action", "DENY"}, {"ports", ranges}}));
  o.Add(Cr("ApiCostPolicy", "price",
           {{"service", "web"},
            {"currency", "USD"},
            {"models", {{{"model", "gpt-x"}, {"perMillionInput", "0.15"}}}}}));
  o.Add(Cr("ApiCostPolicy", "badprice",
           {{"service", "web"},
            {"currency", "USD"},
            {"routes", {{{"name", "r"}, {"perRequest", "1,5"}}}}}));
  Snapshot s = BuildSnapshot(o.map());
  auto accepted = [&](const std::string& name) {
    const PolicyStatus* st = FindStatus(s, name);
    EXPECT_NE(st, nullptr) << name;
    return st && st->accepted;
  };
  EXPECT_TRUE(accepted("split"));
  EXPECT_EQ(FindStatus(s, "split")->observed_generation, 3);
  EXPECT_FALSE(accepted("orphan"));
  EXPECT_EQ(FindStatus(s, "orphan")->reason, "ServiceNotFound");
  EXPECT_FALSE(accepted("zero"));
  EXPECT_NE(FindStatus(s, "zero")->message.find("add up to 0"), std::string::npos);
  EXPECT_TRUE(accepted("deny"));
  EXPECT_FALSE(accepted("noaction"));
  EXPECT_FALSE(accepted("badcidr"));
  EXPECT_NE(FindStatus(s, "badcidr")->message.find("10.0.0.0/33"), std::string::npos);
  EXPECT_FALSE(accepted("typo")) << "unknown spec fields are errors, not ignored";
  EXPECT_FALSE(accepted("manyports"));
  EXPECT_EQ(FindStatus(s, "manyports")->reason, "InvalidSpec");
  EXPECT_NE(FindStatus(s, "manyports")->message.find("at most 8"), std::string::npos);
  EXPECT_TRUE(accepted("eightports"));
  EXPECT_TRUE(accepted("price"));
  EXPECT_FALSE(accepted("badprice"));
  // Only accepted ones are sent to the agents.
  int routes = 0, access = 0, cost = 0;
  for (const auto& [k, rp] : s.resources) {
    const shunt::v1::Resource& r = *rp;
    routes += r.has_traffic_route();
    access += r.has_access_policy();
    cost += r.has_api_cost_policy();
  }
  EXPECT_EQ(routes, 1);
  EXPECT_EQ(access, 2);
  EXPECT_EQ(cost, 1);
}

TEST(BuildSnapshot, VersionsAreContentHashesStableAcrossBuilds) {
  Objects o;
  o.Add(Namespace("mesh", true)).Add(Pod("mesh", "a", "uid-a", "198.18.0.2"));
  Snapshot s1 = BuildSnapshot(o.map());
  Snapshot s2 = BuildSnapshot(o.map());
  ASSERT_EQ(s1.resources.size(), 1u);
  const auto& r1 = *s1.resources.begin()->second;
  EXPECT_EQ(r1.version(), s2.resources.begin()->second->version());
  EXPECT_EQ(r1.version(), ResourceVersion(r1));
  o.Add(Pod("mesh", "a", "uid-a", "198.18.0.9"));
  Snapshot s3 = BuildSnapshot(o.map());
  EXPECT_NE(s3.resources.begin()->second->version(), r1.version());
}

// The cached builder must give exactly what a fresh build gives, whatever changed.
TEST(SnapshotBuilder, CachedBuildsEqualFreshBuilds) {
  auto same = [](const Snapshot& a, const Snapshot& b) {
    if (a.resources.size() != b.resources.size()) return false;
    for (const auto& [k, r] : a.resources) {
      auto it = b.resources.find(k);
      if (it == b.resources.end() || it->second->SerializeAsString() != r->SerializeAsString()) {
        return false;
      }
    }
    return true;
  };
  json svc = {{"apiVersion", "v1"}, {"kind", "Service"},
              {"metadata", {{"namespace", "mesh"}, {"name", "web"}}},
              {"spec", {{"clusterIP", "10.96.0.10"}, {"ports", {{{"port", 80}}}}}}};
  auto slice = [](const std::string& ip) {
    return json{{"apiVersion", "discovery.k8s.io/v1"}, {"kind", "EndpointSlice"},
                {"metadata", {{"namespace", "mesh"}, {"name", "web-1"},
                              {"labels", {{"kubernetes.io/service-name", "web"}}}}},
                {"endpoints", {{{"addresses", {ip}}}}}};
  };
  Objects o;
  o.Add(Namespace("mesh", false)).Add(Pod("mesh", "a", "ua", "198.18.0.2"));
  o.Add(Pod("mesh", "b", "ub", "198.18.0.3")).Add(svc).Add(slice("198.18.0.2"));
  SnapshotBuilder builder;
  EXPECT_TRUE(same(builder.Build(o.map()), BuildSnapshot(o.map())));
  EXPECT_TRUE(same(builder.Build(o.map()), BuildSnapshot(o.map()))) << "nothing changed";
  o.Add(Namespace("mesh", true));  // every pod's membership changes
  Snapshot meshed = builder.Build(o.map());
  EXPECT_TRUE(same(meshed, BuildSnapshot(o.map())));
  EXPECT_TRUE(FindWorkload(meshed, "ua")->meshed());
  o.Add(slice("198.18.0.3"));  // only the slice changes
  Snapshot moved = builder.Build(o.map());
  EXPECT_TRUE(same(moved, BuildSnapshot(o.map())));
  o.Add(Pod("mesh", "a", "ua", "198.18.0.9"));  // one pod changes
  EXPECT_TRUE(same(builder.Build(o.map()), BuildSnapshot(o.map())));
}

}  // namespace
}  // namespace shunt::controller
