// Services, routes and access policies -> socklb map entries, without root: CompileServicePolicy
// is pure and ApplyServicePolicy talks to a ServicePolicyWriter, faked here in memory.
#include "agent/dataplane/service_policy.h"
#include "agent/dataplane/local_dataplane.h"

#include <arpa/inet.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/cgroup.h"

namespace shunt::agent {
namespace {

constexpr char kNode[] = "n1";

// Pods: a (client, meshed, local, sa "front", app=front), b (app=api, v1), c (app=api, v2),
// d (other namespace "ops", sa "robot"), e (local but unmeshed).
constexpr char kWorkloads[] = R"(
  {"uid": "a", "namespace": "default", "name": "a", "node": "n1", "meshed": true,
   "serviceAccount": "front", "labels": {"app": "front"}, "ips": ["10.0.0.1", "fd00::1"]},
  {"uid": "b", "namespace": "default", "name": "b", "node": "n1", "meshed": true,
   "labels": {"app": "api", "version": "v1"}, "ips": ["10.0.0.2", "fd00::2"]},
  {"uid": "c", "namespace": "default", "name": "c", "node": "n2", "meshed": true,
   "labels": {"app": "api", "version": "v2"}, "ips": ["10.0.1.3"]},
  {"uid": "d", "namespace": "ops", "name": "d", "node": "n1", "meshed": true,
   "serviceAccount": "robot", "labels": {"app": "front"}, "ips": ["10.0.0.4"]},
  {"uid": "e", "namespace": "default", "name": "e", "node": "n1", "meshed": false,
   "ips": ["10.0.0.5"]},
  {"uid": "h", "namespace": "default", "name": "h", "node": "n1", "meshed": false,
   "hostNetwork": true, "labels": {"app": "api"}, "ips": ["192.0.2.1"]}
)";

constexpr char kApiService[] = R"(
  {"namespace": "default", "name": "api", "vips": ["10.96.0.10", "fd96::10"],
   "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
   "endpoints": [
     {"ips": ["10.0.0.2", "fd00::2"], "workloadUid": "b", "ready": true,
      "ports": [{"name": "http", "port": 8080}]},
     {"ips": ["10.0.1.3"], "workloadUid": "c", "ready": true,
      "ports": [{"name": "http", "port": 8080}]}]}
)";

const std::map<std::string, uint64_t> kCgroups = {{"a", 101}, {"b", 102}, {"d", 104}, {"e", 105}};

PolicySnapshot Bundle(const std::string& services, const std::string& routes = "",
                      const std::string& policies = "") {
  PolicySnapshot s;
  const std::string json = "{\"workloads\": [" + std::string(kWorkloads) + "], \"services\": [" +
                           services + "], \"trafficRoutes\": [" + routes +
                           "], \"accessPolicies\": [" + policies + "]}";
  auto st = google::protobuf::util::JsonStringToMessage(json, &s.bundle);
  EXPECT_TRUE(st.ok()) << st.ToString() << "\n" << json;
  return s;
}

IpKey Ip(const std::string& s) { return *ParseIpKey(s); }
LbKey Vip(const std::string& s, uint16_t port) { return LbKey{Ip(s), port}; }

DesiredServicePolicy Compile(const PolicySnapshot& s, ServicePolicyLimits limits = {}) {
  ServicePolicyIds ids;
  return CompileServicePolicy(s, kNode, kCgroups, limits, ids);
}

std::map<std::string, int> Count(const std::vector<LbBackend>& table) {
  std::map<std::string, int> out;
  for (const auto& b : table) {
    char buf[INET6_ADDRSTRLEN];
    if (b.ip.addr[2] == htonl(0xffff) && b.ip.addr[0] == 0) {
      inet_ntop(AF_INET, &b.ip.addr[3], buf, sizeof(buf));
    } else {
      inet_ntop(AF_INET6, b.ip.addr, buf, sizeof(buf));
    }
    out[std::string(buf) + ":" + std::to_string(b.port)]++;
  }
  return out;
}

// --- weights and slots ---------------------------------------------------------------------------

TEST(WeightsToSlots, ReducedByGcd) {
  EXPECT_EQ(WeightsToSlots({80, 20}, 1024), (std::vector<uint32_t>{4, 1}));
  EXPECT_EQ(WeightsToSlots({50, 50, 0}, 1024), (std::vector<uint32_t>{1, 1, 0}));
  EXPECT_EQ(WeightsToSlots({0, 0}, 1024), (std::vector<uint32_t>{0, 0}));
}

TEST(WeightsToSlots, ScaledDownToTheCapWithLargestRemainder) {
  auto s = WeightsToSlots({997, 3, 1}, 100);  // 1001 reduced slots > 100
  EXPECT_EQ(s[0] + s[1] + s[2], 100u);
  EXPECT_EQ(s[0], 100u * 997 / 1001 + 1);  // 99.6 -> 99 floor, +1 as the largest remainder
}

// --- services ------------------------------------------------------------------------------------

TEST(ServicePolicy, ServiceWithoutRouteSpreadsOverReadyEndpointsEqually) {
  auto d = Compile(Bundle(kApiService));
  ASSERT_EQ(d.service_ids.size(), 2u);  // v4 and v6 VIP
  auto v4 = Count(d.slots.at(Vip("10.96.0.10", 80)));
  EXPECT_EQ(v4, (std::map<std::string, int>{{"10.0.0.2:8080", 1}, {"10.0.1.3:8080", 1}}));
  // The v6 VIP only goes to v6 backends.
  EXPECT_EQ(Count(d.slots.at(Vip("fd96::10", 80))),
            (std::map<std::string, int>{{"fd00::2:8080", 1}}));
  EXPECT_EQ(d.service_names.begin()->second, "default/api");
}

TEST(ServicePolicy, NotReadyEndpointsAndUdpPortsAreLeftOut) {
  auto d = Compile(Bundle(R"({"namespace": "default", "name": "s", "vips": ["10.96.0.11"],
      "ports": [{"port": 53, "protocol": "UDP"}, {"port": 81}],
      "endpoints": [{"ips": ["10.0.0.2"], "ready": true}, {"ips": ["10.0.1.3"], "ready": false}]})"));
  ASSERT_EQ(d.service_ids.size(), 1u);
  EXPECT_EQ(Count(d.slots.at(Vip("10.96.0.11", 81))),
            (std::map<std::string, int>{{"10.0.0.2:81", 1}}));
}

TEST(ServicePolicy, RouteSplitsBySubsetWeights) {
  auto d = Compile(Bundle(kApiService, R"({"namespace": "default", "name": "r", "service": "api",
      "rules": [{"name": "l7", "matches": [{"pathPrefix": "/x"}], "backends": [{"weight": 1}]},
                {"backends": [{"subset": {"matchLabels": {"version": "v1"}}, "weight": 80},
                              {"subset": {"matchLabels": {"version": "v2"}}, "weight": 20}]}]})"));
  EXPECT_EQ(Count(d.slots.at(Vip("10.96.0.10", 80))),
            (std::map<std::string, int>{{"10.0.0.2:8080", 4}, {"10.0.1.3:8080", 1}}));
  // v6: only the v1 subset has an IPv6 endpoint.
  EXPECT_EQ(Count(d.slots.at(Vip("fd96::10", 80))),
            (std::map<std::string, int>{{"fd00::2:8080", 1}}));
}

TEST(ServicePolicy, GroupWeightIsSharedAmongItsEndpoints) {
  // 50 to {b, c} (two endpoints), 50 to the other service (one endpoint d): 1:1:2.
  auto d = Compile(Bundle(std::string(kApiService) + R"(,
      {"namespace": "default", "name": "api-canary", "vips": ["10.96.0.12"],
       "ports": [{"port": 9000}], "endpoints": [{"ips": ["10.0.0.4"], "ready": true}]})",
                          R"({"namespace": "default", "name": "r", "service": "api",
      "rules": [{"backends": [{"subset": {"matchLabels": {"app": "api"}}, "weight": 50},
                              {"service": "api-canary", "port": 9000, "weight": 50}]}]})"));
  EXPECT_EQ(Count(d.slots.at(Vip("10.96.0.10", 80))),
            (std::map<std::string, int>{
                {"10.0.0.2:8080", 1}, {"10.0.1.3:8080", 1}, {"10.0.0.4:9000", 2}}));
}

TEST(ServicePolicy, ServicesMapFullIsCountedNotFailed) {
  ServicePolicyLimits limits;
  limits.services = 1;
  auto d = Compile(Bundle(kApiService), limits);
  EXPECT_EQ(d.service_ids.size(), 1u);
  EXPECT_EQ(d.overflow.at(kLbMapServices), 1u);
  EXPECT_TRUE(d.errors.empty());
  // Not a failed pass, but not what the policy says either: reported (issue 8 item 8).
  ASSERT_EQ(d.not_enforced.size(), 1u);
  EXPECT_EQ(d.not_enforced[0].policy, "");
  EXPECT_NE(d.not_enforced[0].reason.find("services map is full"), std::string::npos);
  limits.services = 10;
  limits.slots = 2;  // the v4 table (2 slots) fits, the v6 one (1) does not
  d = Compile(Bundle(kApiService), limits);
  EXPECT_EQ(d.service_ids.size(), 1u);
  EXPECT_EQ(d.overflow.at(kLbMapSlots), 1u);
}

// --- access policies -----------------------------------------------------------------------------

std::string Policy(const std::string& name, const std::string& action, const std::string& target,
                   const std::string& from, const std::string& ports = "[]") {
  return R"({"namespace": "default", "name": ")" + name + R"(", "action": ")" + action +
         R"(", "target": {"matchLabels": )" + target + R"(}, "from": )" + from + R"(, "ports": )" +
         ports + "}";
}

// A policy with L7 rules, as JSON: Policy() with its "l7" field.
std::string L7Policy(const std::string& name, const std::string& action, const std::string& from,
                     const std::string& l7) {
  std::string p = Policy(name, action, R"({"app": "api"})", from);
  p.insert(p.size() - 1, R"(, "l7": )" + l7);
  return p;
}

TEST(ServicePolicy, DenyPolicyMarksSourcesAndDestinations) {
  auto d = Compile(Bundle("", "",
                          Policy("deny-front", "DENY", R"({"app": "api"})",
                                 R"([{"pods": {"matchLabels": {"app": "front"}}}])")));
  ASSERT_EQ(d.policy_names.size(), 1u);
  const uint64_t bit = 1ull << d.policy_names.begin()->first;
  // Source a (default, app=front) matches; d is app=front but in "ops" (pod selector without
  // namespaces is the policy's namespace); e is unmeshed (never a source).
  EXPECT_EQ(d.policy_sources, (std::map<uint64_t, uint64_t>{{101, bit}}));
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.0.2")).deny, bit);
  EXPECT_EQ(d.policy_dests.at(Ip("fd00::2")).deny, bit);
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.1.3")).deny, bit);  // remote pods are destinations too
  EXPECT_EQ(d.policy_dests.count(Ip("10.0.0.1")), 0u);
  EXPECT_EQ(d.policy_ports[d.policy_names.begin()->first].count, 0u);  // every port
}

// A hostNetwork pod's IP is its node's: a policy selecting it must not put the node's IP in the
// destinations map (that would block or open every host service and NodePort of the node).
TEST(ServicePolicy, HostNetworkPodsAreNeverPolicyTargets) {
  for (const char* action : {"DENY", "ALLOW"}) {
    auto d = Compile(Bundle("", "",
                            Policy("p", action, R"({"app": "api"})",
                                   R"([{"pods": {"matchLabels": {"app": "front"}}}])")));
    EXPECT_EQ(d.policy_dests.count(Ip("192.0.2.1")), 0u) << action;
    EXPECT_EQ(d.policy_dests.count(Ip("10.0.0.2")), 1u) << action << ": the other targets stay";
  }
}

TEST(ServicePolicy, DenyPoliciesGetBitsFirstAndAllowOnlyTargetsSelectedPods) {
  auto d = Compile(Bundle(
      "", "",
      Policy("a-allow", "ALLOW", R"({"version": "v1"})",
             R"([{"serviceAccounts": ["ops/robot"]}])") +
          "," + Policy("z-deny", "DENY", R"({"app": "api"})", R"([{"namespaces": ["ops"]}])")));
  ASSERT_EQ(d.policy_names.size(), 2u);
  EXPECT_EQ(d.policy_names.at(0), "default/z-deny");
  EXPECT_EQ(d.policy_names.at(1), "default/a-allow");
  EXPECT_EQ(d.policy_sources, (std::map<uint64_t, uint64_t>{{104, 0b11}}));
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.0.2")).allow, 0b10u);  // v1 selected by the allow
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.1.3")).allow, 0u);     // v2 not: open to all
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.1.3")).deny, 0b01u);
}

TEST(ServicePolicy, EmptyFromMatchesEveryMeshedLocalSource) {
  auto d = Compile(Bundle("", "", Policy("all", "DENY", "{}", "[]")));
  EXPECT_EQ(d.policy_sources,
            (std::map<uint64_t, uint64_t>{{101, 1}, {102, 1}, {104, 1}}));  // not e (unmeshed)
  // Target {} is every pod of the policy's namespace (not "ops").
  EXPECT_EQ(d.policy_dests.count(Ip("10.0.0.4")), 0u);
  EXPECT_EQ(d.policy_dests.count(Ip("10.0.0.5")), 1u);
}

TEST(ServicePolicy, IpBlocksMatchTheSourcePodsOwnIps) {
  auto d =
      Compile(Bundle("", "",
                     Policy("blocks", "ALLOW", R"({"app": "api"})",
                            R"([{"ipBlocks": ["10.0.0.0/30"]}, {"ipBlocks": ["fd00::2/128"]}])")));
  // a = 10.0.0.1 (in /30), b = fd00::2, d = 10.0.0.4 (outside /30).
  EXPECT_EQ(d.policy_sources, (std::map<uint64_t, uint64_t>{{101, 1}, {102, 1}}));
}

TEST(ServicePolicy, AllFieldsOfOneSourceMustMatch) {
  auto d = Compile(Bundle("", "",
                          Policy("and", "ALLOW", "{}",
                                 R"([{"namespaces": ["ops"], "serviceAccounts": ["ops/robot"],
                                      "pods": {"matchLabels": {"app": "front"}}}])")));
  EXPECT_EQ(d.policy_sources, (std::map<uint64_t, uint64_t>{{104, 1}}));
}

TEST(ServicePolicy, PortRanges) {
  auto d = Compile(Bundle(
      "", "", Policy("p", "DENY", "{}", "[]", R"([{"from": 80}, {"from": 8000, "to": 8999}])")));
  const auto& p = d.policy_ports[0];
  ASSERT_EQ(p.count, 2u);
  EXPECT_EQ(p.from[0], 80);
  EXPECT_EQ(p.to[0], 80);
  EXPECT_EQ(p.from[1], 8000);
  EXPECT_EQ(p.to[1], 8999);
  d = Compile(Bundle("", "", Policy("bad", "DENY", "{}", "[]", R"([{"from": 90, "to": 80}])")));
  EXPECT_TRUE(d.policy_names.empty());
  EXPECT_EQ(d.errors.size(), 1u);
  std::string nine = "[";
  for (int i = 1; i <= 9; ++i)
    nine += (i > 1 ? "," : "") + ("{\"from\": " + std::to_string(i) + "}");
  d = Compile(Bundle("", "", Policy("many", "DENY", "{}", "[]", nine + "]")));
  EXPECT_TRUE(d.policy_names.empty());
  EXPECT_EQ(d.errors.size(), 1u);
}

// Per-request rules are not enforced anywhere yet (no HTTP proxy): the policy says so, in each
// direction it errs, instead of acting on whole connections silently.
TEST(ServicePolicy, LSevenRulesAreReportedAsNotEnforcedAsWritten) {
  const std::string front = R"([{"pods": {"matchLabels": {"app": "front"}}}])";
  const std::string allow =
      L7Policy("allow-get", "ALLOW", front, R"([{"methods": ["GET"], "paths": ["/v1/*"]}])");
  const std::string deny = L7Policy("deny-post", "DENY", front, R"([{"methods": ["POST"]}])");
  auto d = Compile(Bundle("", "", allow + "," + deny));
  ASSERT_EQ(d.not_enforced.size(), 2u);
  EXPECT_EQ(d.not_enforced[0].policy, "default/allow-get");
  EXPECT_NE(d.not_enforced[0].reason.find("any request"), std::string::npos)
      << d.not_enforced[0].reason;
  EXPECT_EQ(d.not_enforced[1].policy, "default/deny-post");
  EXPECT_NE(d.not_enforced[1].reason.find("stricter than written"), std::string::npos)
      << d.not_enforced[1].reason;
  EXPECT_EQ(d.policy_names.size(), 2u) << "both still enforced on whole connections";
}

// With the proxy (--capture) the L7 rules at meshed targets are its to decide per request: no
// report, and a DENY of some requests refuses no connection at connect().
TEST(ServicePolicy, WithTheProxyLSevenRulesAtMeshedTargetsAreLeftToIt) {
  const std::string front = R"([{"pods": {"matchLabels": {"app": "front"}}}])";
  const std::string allow =
      L7Policy("allow-get", "ALLOW", front, R"([{"methods": ["GET"], "paths": ["/v1/*"]}])");
  const std::string deny = L7Policy("deny-post", "DENY", front, R"([{"methods": ["POST"]}])");
  ServicePolicyLimits limits;
  limits.l7_proxy = true;
  auto d = Compile(Bundle("", "", allow + "," + deny), limits);
  EXPECT_TRUE(d.not_enforced.empty()) << d.not_enforced[0].reason;
  ASSERT_EQ(d.policy_names.size(), 1u) << "the ALLOW admits its sources' connections";
  EXPECT_EQ(d.policy_names.begin()->second, "default/allow-get");
  for (const auto& [ip, dest] : d.policy_dests) EXPECT_EQ(dest.deny, 0u);
  // At a target outside the mesh no proxy reads its requests: whole connections, said.
  std::string unmeshed = Policy("deny-e", "DENY", R"({})", "[]");
  unmeshed.insert(unmeshed.size() - 1, R"(, "l7": [{"paths": ["/x"]}])");
  d = Compile(Bundle("", "", unmeshed), limits);
  ASSERT_EQ(d.not_enforced.size(), 1u);
  EXPECT_NE(d.not_enforced[0].reason.find("outside the mesh"), std::string::npos);
  EXPECT_NE(d.policy_dests.at(Ip("10.0.0.5")).deny, 0u) << "e: denied whole";
  EXPECT_EQ(d.policy_dests.count(Ip("10.0.0.2")), 0u) << "b: its proxy decides";
}

// A meshed pod of this node whose capture is not in place (not yet, or failed) has no proxy to
// decide its requests: an L7 DENY there refuses whole connections at connect(), said, instead of
// being left to a proxy that is not there (enforced nowhere).
TEST(ServicePolicy, WithTheProxyAnUncapturedTargetsLSevenDenyIsEnforcedOnWholeConnections) {
  const std::string front = R"([{"pods": {"matchLabels": {"app": "front"}}}])";
  const std::string deny = L7Policy("deny-post", "DENY", front, R"([{"methods": ["POST"]}])");
  ServicePolicyLimits limits;
  limits.l7_proxy = true;
  limits.uncaptured = {"b"};
  auto d = Compile(Bundle("", "", deny), limits);
  ASSERT_EQ(d.not_enforced.size(), 1u);
  EXPECT_NE(d.not_enforced[0].reason.find("not captured"), std::string::npos)
      << d.not_enforced[0].reason;
  ASSERT_EQ(d.policy_dests.count(Ip("10.0.0.2")), 1u);
  EXPECT_NE(d.policy_dests.at(Ip("10.0.0.2")).deny, 0u) << "b: denied whole until captured";
}

TEST(ServicePolicy, MoreThanSixtyThreePoliciesWithSourcesHereIsAnErrorAndCounted) {
  std::string ps;
  for (int i = 0; i < 66; ++i) {
    ps += (i ? "," : "") + Policy("p" + std::to_string(100 + i), "DENY", "{}", "[]");
  }
  auto d = Compile(Bundle("", "", ps));
  EXPECT_EQ(d.policy_names.size(), 63u);
  EXPECT_EQ(d.overflow.at(kLbMapPolicies), 3u);
  EXPECT_EQ(d.errors.size(), 1u);
  EXPECT_EQ(d.not_enforced.size(), 3u);
  EXPECT_TRUE(d.not_enforced.empty() || d.not_enforced[0].policy == "default/p163");
}

// The cap is per node: a policy takes a bit only where one of its sources runs. 65 DENY and 65
// ALLOW policies whose sources all run on another node (pod c, n2), next to two that match a
// source here: none is dropped; the ALLOW ones still allow-list their targets, with one bit.
TEST(ServicePolicy, PoliciesWithoutASourceOnThisNodeTakeNoBitOfTheirOwn) {
  std::string ps;
  auto name = [](const char* kind, int i) {
    return absl::StrFormat("%s-%03d", kind, i);
  };
  for (int i = 0; i < 65; ++i) {
    ps += Policy(name("deny-elsewhere", i), "DENY", R"({"app": "front"})",
                 R"([{"pods": {"matchLabels": {"version": "v2"}}}])") + ",";
    ps += Policy(name("allow-elsewhere", i), "ALLOW", R"({"app": "api"})",
                 R"([{"pods": {"matchLabels": {"version": "v2"}}}])") + ",";
  }
  ps += Policy("deny-here-1", "DENY", R"({"version": "v2"})",
               R"([{"pods": {"matchLabels": {"app": "front"}}}])") + ",";
  ps += Policy("deny-here-2", "DENY", R"({"version": "v1"})", "[]");
  auto d = Compile(Bundle("", "", ps));
  EXPECT_TRUE(d.errors.empty()) << d.errors[0];
  EXPECT_EQ(d.overflow.count(kLbMapPolicies), 0u);
  EXPECT_EQ(d.policy_names,
            (std::map<uint32_t, std::string>{
                {0, "default/deny-here-1"},
                {1, "default/deny-here-2"},
                {kSharedAllowBit, "default/allow-elsewhere-000 (+64 allow policies)"}}));
  // A DENY whose sources are elsewhere has no effect here: pod a's IPs are no destination.
  EXPECT_EQ(d.policy_dests.count(Ip("10.0.0.1")), 0u);
  // The ALLOW ones: b and c are allow-listed (no source here matches them: all are refused).
  const uint64_t shared = 1ull << kSharedAllowBit;
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.0.2")).allow, shared);
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.1.3")).allow, shared);
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.1.3")).deny, 0b01u);  // deny-here-1
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.0.2")).deny, 0b10u);  // deny-here-2
  for (const auto& [cg, mask] : d.policy_sources) EXPECT_EQ(mask & shared, 0u) << cg;
  EXPECT_EQ(d.policy_sources.at(101), 0b11u);  // a: both
  EXPECT_EQ(d.policy_sources.at(102), 0b10u);  // b: deny-here-2 (every source)
}

// At the real limit, 63 policies with a source here: a DENY over it is not enforced (fails open,
// counted, reported); an ALLOW over it fails closed: its targets stay allow-listed, its sources
// are refused.
TEST(ServicePolicy, OverTheCapDenyFailsOpenAndAllowFailsClosed) {
  std::string ps;
  for (int i = 0; i < 64; ++i) {
    ps += Policy(absl::StrFormat("deny-%03d", i), "DENY", R"({"app": "api"})", "[]") + ",";
  }
  ps += Policy("allow-front", "ALLOW", R"({"version": "v1"})",
               R"([{"pods": {"matchLabels": {"app": "front"}}}])");
  auto d = Compile(Bundle("", "", ps));
  EXPECT_EQ(d.overflow.at(kLbMapPolicies), 2u);
  ASSERT_EQ(d.errors.size(), 1u);
  EXPECT_NE(d.errors[0].find("DENY ones are not enforced"), std::string::npos) << d.errors[0];
  EXPECT_EQ(d.policy_names.size(), 64u);  // 63 DENY + the shared ALLOW bit
  EXPECT_EQ(d.policy_names.at(62), "default/deny-062");
  EXPECT_EQ(d.policy_names.at(kSharedAllowBit), "default/allow-front");
  const uint64_t shared = 1ull << kSharedAllowBit;
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.0.2")).allow, shared);  // b stays allow-listed
  EXPECT_EQ(d.policy_sources.at(101) & shared, 0u);             // a is not let through
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.0.2")).deny, (1ull << 63) - 1);  // deny-063 is not there
  // ACK means enforced (issue 8 item 8): each policy over the cap is reported by name, with
  // which way it fails.
  ASSERT_EQ(d.not_enforced.size(), 2u);
  EXPECT_EQ(d.not_enforced[0].policy, "default/allow-front");
  EXPECT_NE(d.not_enforced[0].reason.find("enforced closed"), std::string::npos);
  EXPECT_EQ(d.not_enforced[1].policy, "default/deny-063");
  EXPECT_NE(d.not_enforced[1].reason.find("not enforced (what it denies is let through)"),
            std::string::npos);
}

// The same at the cap reached over two passes: 63 ALLOW policies hold every bit, then a DENY
// comes. It takes the last ALLOW's bit (that ALLOW fails closed), rather than failing open.
TEST(ServicePolicy, ADenyAddedAtTheCapTakesAnAllowsBitRatherThanFailOpen) {
  ServicePolicyIds ids;
  std::string ps;
  for (int i = 0; i < 63; ++i) {
    ps += (i ? "," : "") + Policy(absl::StrFormat("allow-%03d", i), "ALLOW", R"({"app": "api"})",
                                  R"([{"pods": {"matchLabels": {"app": "front"}}}])");
  }
  auto d = CompileServicePolicy(Bundle("", "", ps), kNode, kCgroups, {}, ids);
  ASSERT_TRUE(d.errors.empty());
  EXPECT_EQ(d.policy_names.size(), 63u);
  ps += "," + Policy("deny-front", "DENY", R"({"app": "api"})",
                     R"([{"pods": {"matchLabels": {"app": "front"}}}])");
  d = CompileServicePolicy(Bundle("", "", ps), kNode, kCgroups, {}, ids);
  EXPECT_EQ(d.overflow.at(kLbMapPolicies), 1u);
  ASSERT_EQ(d.policy_dests.count(Ip("10.0.0.2")), 1u);
  EXPECT_NE(d.policy_dests.at(Ip("10.0.0.2")).deny & d.policy_sources.at(101), 0u)
      << "the DENY is enforced";
  EXPECT_EQ(d.policy_names.at(kSharedAllowBit), "default/allow-062") << "the last ALLOW fails closed";
}

// A pod of this node that policy knows but whose cgroup kubelet has not made yet is a source all
// the same: the policy has its bit, the pod's mask is pending under its uid (copied to its cgroup
// at mkdir), and its first connect() is denied.
TEST(ServicePolicy, PodsWithoutACgroupYetArePendingSources) {
  ServicePolicyIds ids;
  const std::string deny = Policy("p", "DENY", R"({"app": "api"})", "[]");
  auto d = CompileServicePolicy(Bundle("", "", deny), kNode, {}, {}, ids);
  EXPECT_EQ(d.policy_names, (std::map<uint32_t, std::string>{{0, "default/p"}}));
  EXPECT_TRUE(d.policy_sources.empty());
  EXPECT_EQ(d.pending_sources.at("a"), 1u);
  EXPECT_EQ(d.pending_sources.count("e"), 0u) << "unmeshed: no source";
  // With cgroups: the same masks, under the cgroup ids and still pending by uid.
  d = CompileServicePolicy(Bundle("", "", deny), kNode, kCgroups, {}, ids);
  EXPECT_EQ(d.policy_sources.at(101), 1u);
  EXPECT_EQ(d.pending_sources.at("a"), 1u);
  auto enc = EncodeServicePolicy(d);
  EXPECT_EQ(enc.at(SockLbMap::kPolicyPending).size(), d.pending_sources.size());
}

// A policy that stops matching any source here gives its bit back.
TEST(ServicePolicy, APolicyWhoseSourcesLeaveTheNodeGivesItsBitBack) {
  ServicePolicyIds ids;
  const std::string here = Policy("p", "DENY", R"({"app": "api"})", "[]");
  auto d = CompileServicePolicy(Bundle("", "", here), kNode, kCgroups, {}, ids);
  EXPECT_EQ(d.policy_names, (std::map<uint32_t, std::string>{{0, "default/p"}}));
  d = CompileServicePolicy(Bundle("", "", here), "n9", kCgroups, {}, ids);  // no pod of n9
  EXPECT_TRUE(d.policy_names.empty());
  d = CompileServicePolicy(Bundle("", "", Policy("q", "DENY", R"({"app": "api"})", "[]")), kNode,
                           kCgroups, {}, ids);
  EXPECT_EQ(d.policy_names, (std::map<uint32_t, std::string>{{0, "default/q"}}));
}

TEST(ServicePolicy, PolicyBitsAreStableWhenOthersComeAndGo) {
  ServicePolicyIds ids;
  auto d = CompileServicePolicy(
      Bundle("", "", Policy("x", "DENY", "{}", "[]") + "," + Policy("y", "DENY", "{}", "[]")),
      kNode, kCgroups, {}, ids);
  EXPECT_EQ(d.policy_names.at(1), "default/y");
  d = CompileServicePolicy(Bundle("", "", Policy("y", "DENY", "{}", "[]")), kNode, kCgroups, {},
                           ids);
  EXPECT_EQ(d.policy_names, (std::map<uint32_t, std::string>{{1, "default/y"}}));
}

TEST(ServicePolicy, ServiceIdsRecoveredAfterARestartAreKept) {
  ServicePolicyIds ids;
  ids.recovered_service_ids[Vip("10.96.0.10", 80)] = 42;
  auto d = CompileServicePolicy(Bundle(kApiService), kNode, kCgroups, {}, ids);
  EXPECT_EQ(d.service_ids.at(Vip("10.96.0.10", 80)), 42u);
  EXPECT_EQ(d.service_ids.at(Vip("fd96::10", 80)), 42u);  // same service port, same id
  EXPECT_EQ(d.service_names.at(42), "default/api");
}

// After a restart (the policy names map survives in bpffs) policies keep their bits: y and z got
// 0 and 1, x came later (2) and w was deleted while the agent was down. A fresh start would hand
// out bits in name order (x 0, y 1, z 2), so every policy's counters would change hands.
TEST(ServicePolicy, PolicyBitsRecoveredAfterARestartAreKept) {
  auto deny = [](const char* n) { return Policy(n, "DENY", "{}", "[]"); };
  ServicePolicyIds before;
  CompileServicePolicy(Bundle("", "", deny("y") + "," + deny("z")), kNode, kCgroups, {}, before);
  auto d = CompileServicePolicy(
      Bundle("", "", deny("w") + "," + deny("x") + "," + deny("y") + "," + deny("z")), kNode,
      kCgroups, {}, before);
  ASSERT_EQ(d.policy_names,
            (std::map<uint32_t, std::string>{
                {0, "default/y"}, {1, "default/z"}, {2, "default/w"}, {3, "default/x"}}));
  const auto names = EncodePolicyNames(d.policy_names);
  EXPECT_EQ(names.size(), static_cast<size_t>(SHUNT_AP_MAX_POLICIES));

  ServicePolicyIds after;
  std::map<uint32_t, std::string> known;
  RecoverPolicyBits(names, after, &known);
  EXPECT_EQ(known, d.policy_names);
  const auto bundle = Bundle("", "", deny("x") + "," + deny("y") + "," + deny("z"));
  d = CompileServicePolicy(bundle, kNode, kCgroups, {}, after);
  EXPECT_EQ(d.policy_names, (std::map<uint32_t, std::string>{
                                {0, "default/y"}, {1, "default/z"}, {3, "default/x"}}));
  ServicePolicyIds fresh;
  d = CompileServicePolicy(bundle, kNode, kCgroups, {}, fresh);
  EXPECT_EQ(d.policy_names.at(0), "default/x") << "without the names every bit changes hands";
}

TEST(ServicePolicy, DestinationsMapFullIsCounted) {
  ServicePolicyLimits limits;
  limits.policy_dests = 2;
  auto d = Compile(Bundle("", "", Policy("all", "DENY", "{}", "[]")), limits);
  EXPECT_EQ(d.policy_dests.size(), 2u);
  EXPECT_EQ(d.overflow.at(kLbMapPolicyDests), 4u);  // a(2 IPs) b(2) c(1) e(1) = 6 - 2
  // The map, and the policy whose entries were dropped, are reported.
  ASSERT_EQ(d.not_enforced.size(), 2u);
  EXPECT_EQ(d.not_enforced[0].policy, "");
  EXPECT_NE(d.not_enforced[0].reason.find("policy_destinations map is full"), std::string::npos)
      << d.not_enforced[0].reason;
  EXPECT_EQ(d.not_enforced[1].policy, "default/all");
}

// Version skew (issue 8 item 7): what this agent cannot read in a policy fails closed, and says so.
TEST(ServicePolicy, PoliciesWithUnknownPartsFailClosed) {
  // A DENY with a field from a newer controller (here: field 99 of its target selector, say a
  // new selector form): it denies what its known fields select.
  auto s = Bundle("", "",
                  Policy("deny-front", "DENY", R"({"app": "api"})",
                         R"([{"pods": {"matchLabels": {"app": "front"}}}])"));
  s.bundle.mutable_access_policies(0)->mutable_target()->GetReflection()
      ->MutableUnknownFields(s.bundle.mutable_access_policies(0)->mutable_target())
      ->AddVarint(99, 1);
  auto d = Compile(s);
  ASSERT_EQ(d.policy_names.size(), 1u);
  const uint64_t bit = 1ull << d.policy_names.begin()->first;
  EXPECT_EQ(d.policy_sources, (std::map<uint64_t, uint64_t>{{101, bit}}));
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.0.2")).deny, bit);
  EXPECT_EQ(d.not_understood, 1u);
  ASSERT_EQ(d.errors.size(), 1u);
  EXPECT_NE(d.errors[0].find("unknown to this agent"), std::string::npos) << d.errors[0];

  // An ALLOW with such a field admits none of its sources; its targets stay allow-listed.
  s = Bundle("", "",
             Policy("allow-front", "ALLOW", R"({"app": "api"})",
                    R"([{"pods": {"matchLabels": {"app": "front"}}}])"));
  s.bundle.mutable_access_policies(0)->GetReflection()
      ->MutableUnknownFields(s.bundle.mutable_access_policies(0))
      ->AddLengthDelimited(42, "newer");
  d = Compile(s);
  EXPECT_TRUE(d.policy_sources.empty());
  EXPECT_NE(d.policy_dests.at(Ip("10.0.0.2")).allow, 0u);
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.0.2")).deny, 0u);
  EXPECT_EQ(d.not_understood, 1u);

  // An action this agent does not know is a DENY, not the ALLOW a default reading gives.
  s = Bundle("", "",
             Policy("what", "ALLOW", R"({"app": "api"})",
                    R"([{"pods": {"matchLabels": {"app": "front"}}}])"));
  s.bundle.mutable_access_policies(0)->set_action(static_cast<shunt::v1::AccessPolicy::Action>(7));
  d = Compile(s);
  ASSERT_EQ(d.policy_names.size(), 1u);
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.0.2")).deny, 1ull << d.policy_names.begin()->first);
  EXPECT_EQ(d.policy_dests.at(Ip("10.0.0.2")).allow, 0u);
  EXPECT_EQ(d.not_understood, 1u);

  // Nothing unknown: nothing reported.
  EXPECT_EQ(Compile(Bundle("", "",
                           Policy("deny-front", "DENY", R"({"app": "api"})",
                                  R"([{"pods": {"matchLabels": {"app": "front"}}}])")))
                .not_understood,
            0u);
}

TEST(Cidr, Parse) {
  auto c = ParseCidr("10.1.0.0/16");
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(CidrContains(*c, Ip("10.1.200.3")));
  EXPECT_FALSE(CidrContains(*c, Ip("10.2.0.1")));
  EXPECT_FALSE(CidrContains(*c, Ip("fd00::1")));
  EXPECT_TRUE(CidrContains(*ParseCidr("0.0.0.0/0"), Ip("1.2.3.4")));
  EXPECT_TRUE(CidrContains(*ParseCidr("::/0"), Ip("fd00::1")));
  EXPECT_FALSE(ParseCidr("10.0.0.0/33").ok());
  EXPECT_FALSE(ParseCidr("nope/8").ok());
}

// --- apply ---------------------------------------------------------------------------------------

class FakeWriter : public ServicePolicyWriter {
 public:
  absl::StatusOr<std::map<Bytes, Bytes>> List(SockLbMap map) const override {
    auto it = maps.find(map);
    return it == maps.end() ? std::map<Bytes, Bytes>{} : it->second;
  }
  absl::Status Upsert(SockLbMap map, const Bytes& k, const Bytes& v) override {
    log.push_back("+" + std::to_string(static_cast<int>(map)));
    maps[map][k] = v;
    return absl::OkStatus();
  }
  absl::Status Delete(SockLbMap map, const Bytes& k) override {
    log.push_back("-" + std::to_string(static_cast<int>(map)));
    maps[map].erase(k);
    return absl::OkStatus();
  }
  absl::Status DeleteStatsOf(uint32_t) override { return absl::OkStatus(); }
  absl::Status DeleteServiceStats(const std::set<uint32_t>&) override { return absl::OkStatus(); }
  absl::Status DeletePolicyStats(const std::set<uint32_t>&) override { return absl::OkStatus(); }
  std::map<SockLbMap, std::map<Bytes, Bytes>> maps;
  std::vector<std::string> log;
};

TEST(ApplyServicePolicy, WritesSlotsBeforeServicesAndConverges) {
  FakeWriter w;
  auto d = Compile(Bundle(kApiService));
  ASSERT_TRUE(ApplyServicePolicy(d, w).ok());
  EXPECT_EQ(w.maps[SockLbMap::kServices].size(), 2u);
  EXPECT_EQ(w.maps[SockLbMap::kSlots].size(), 3u);
  // The first slot is written before the first service.
  auto first = [&](SockLbMap m) {
    return std::find(w.log.begin(), w.log.end(), "+" + std::to_string(static_cast<int>(m))) -
           w.log.begin();
  };
  EXPECT_LT(first(SockLbMap::kSlots), first(SockLbMap::kServices));
  w.log.clear();
  ASSERT_TRUE(ApplyServicePolicy(d, w).ok());
  EXPECT_TRUE(w.log.empty()) << "a second pass with no change writes nothing";
  ASSERT_TRUE(ApplyServicePolicy(Compile(Bundle("")), w).ok());
  EXPECT_TRUE(w.maps[SockLbMap::kServices].empty());
  EXPECT_TRUE(w.maps[SockLbMap::kSlots].empty());
  // The service entry goes before its slots.
  EXPECT_EQ(w.log.front(), "-" + std::to_string(static_cast<int>(SockLbMap::kServices)));
}

TEST(ApplyServicePolicy, DiffsAgainstTheLastAppliedStateWithoutListing) {
  FakeWriter w;
  EncodedServicePolicy applied;
  ASSERT_TRUE(ApplyServicePolicy(Compile(Bundle(kApiService)), w, nullptr, &applied).ok());
  w.maps.clear();  // the fake's maps are not consulted when `known` is given
  w.log.clear();
  ASSERT_TRUE(ApplyServicePolicy(Compile(Bundle(kApiService)), w, &applied, &applied).ok());
  EXPECT_TRUE(w.log.empty());
  ASSERT_TRUE(ApplyServicePolicy(Compile(Bundle("")), w, &applied, &applied).ok());
  EXPECT_EQ(std::count(w.log.begin(), w.log.end(),
                       "-" + std::to_string(static_cast<int>(SockLbMap::kServices))),
            2);
  EXPECT_TRUE(applied[SockLbMap::kServices].empty());
}

// The reconciler lists the maps before it scans the cgroups: an entry the cgroup_mkdir program
// writes in between belongs to a cgroup the scan then sees. Listed after the scan, the entry of a
// pod cgroup created between the two looked stale and was deleted (the pod's DENY lifted until
// the next round).
template <typename T>
std::string Raw(const T& v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof(v));
}

class MkdirDuringListWriter : public FakeWriter {
 public:
  absl::StatusOr<std::map<Bytes, Bytes>> List(SockLbMap map) const override {
    if (map == SockLbMap::kPolicySources && on_list) {
      auto hook = std::move(on_list);
      on_list = nullptr;
      hook(const_cast<MkdirDuringListWriter&>(*this));
    }
    return FakeWriter::List(map);
  }
  absl::Status Delete(SockLbMap map, const Bytes& k) override {
    if (map == SockLbMap::kPolicySources) deleted_sources.insert(k);
    return FakeWriter::Delete(map, k);
  }
  mutable std::function<void(MkdirDuringListWriter&)> on_list;
  std::set<Bytes> deleted_sources;
};

// Policy for the reconciler tests: meshed pods labelled app=front on n1 (`fronts`: their uids,
// addresses 10.0.0.10 and up), pod b (app=api, 10.0.0.2) on `b_node`, and deny-front
// (front -> api).
void ApplyDenyFront(PolicyStore& store, const std::vector<std::string>& fronts,
                    const std::string& b_node) {
  std::string workloads;
  for (size_t i = 0; i < fronts.size(); ++i) {
    workloads += absl::StrFormat(
        R"({"uid": "%s", "namespace": "default", "name": "p%d", "node": "n1", "meshed": true,
            "labels": {"app": "front"}, "ips": ["10.0.0.%d"]},)",
        fronts[i], i + 1, 10 + i);
  }
  const std::string json =
      "{\"workloads\": [" + workloads +
      absl::StrFormat(R"({"uid": "b", "namespace": "default", "name": "b", "node": "%s",
                          "meshed": true, "labels": {"app": "api"}, "ips": ["10.0.0.2"]}],)",
                      b_node) +
      "\"accessPolicies\": [" +
      Policy("deny-front", "DENY", R"({"app": "api"})",
             R"([{"pods": {"matchLabels": {"app": "front"}}}])") +
      "]}";
  shunt::v1::PolicyBundle bundle;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &bundle).ok()) << json;
  store.Apply("test", bundle);
}

// A directory standing for a pod cgroup. Its id is its file handle, like a cgroup's; on tmpfs
// that holds a random generation number, while kernfs ids are counters far below bit 63 (the
// bit the policy stages reserve for pending keys): made again until it is clear of it.
void MakePodDir(const std::string& dir) {
  for (int i = 0; i < 64; ++i) {
    ASSERT_EQ(mkdir(dir.c_str(), 0755), 0) << dir;
    auto id = CgroupId(dir);
    ASSERT_TRUE(id.ok()) << id.status();
    if (!(*id >> 63)) return;
    rmdir(dir.c_str());
  }
  FAIL() << "no file handle below bit 63 for " << dir;
}

TEST(ServicePolicyReconciler, KeepsASourceEntryWrittenAtMkdirWhileItListsTheMaps) {
  char tmpl[] = "/tmp/shunt-sp-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string root = tmpl;
  const std::string u1 = "11111111-2222-3333-4444-555555555555";
  const std::string u2 = "66666666-7777-8888-9999-000000000000";
  MakePodDir(root + "/pod" + u1);
  PolicyStore store;
  ApplyDenyFront(store, {u1, u2}, "n1");
  MkdirDuringListWriter w;
  std::string u2_key;
  // What the cgroup_mkdir program does for p2 (pending, with its DENY bit), while the maps are
  // being listed.
  w.on_list = [&](MkdirDuringListWriter& self) {
    const std::string dir = root + "/pod" + u2;
    MakePodDir(dir);
    auto id = CgroupId(dir);
    ASSERT_TRUE(id.ok()) << id.status();
    u2_key = Raw(*id);
    const auto& pend = self.maps[SockLbMap::kPolicyPending];
    ASSERT_EQ(pend.size(), 2u);  // written by an earlier pass, before either cgroup
    auto uid_key = PodUidKey(u2);
    ASSERT_TRUE(uid_key.has_value());
    self.maps[SockLbMap::kPolicySources][u2_key] = pend.at(Raw(*uid_key));
  };
  // An earlier pass (the agent before a restart): pending entries for both pods, no cgroup of p2.
  {
    ServicePolicyIds ids;
    auto cg1 = CgroupId(root + "/pod" + u1);
    ASSERT_TRUE(cg1.ok());
    auto earlier = CompileServicePolicy(*store.Current(), kNode, {{u1, *cg1}}, {}, ids);
    auto hook = std::move(w.on_list);
    ASSERT_TRUE(ApplyServicePolicy(earlier, w).ok());
    w.on_list = std::move(hook);
  }
  ServicePolicyReconciler::Options opts;
  opts.node_name = kNode;
  opts.cgroup_root = root;
  ServicePolicyReconciler r(opts, store, w);
  EXPECT_TRUE(r.ReconcileOnce().ok());
  ASSERT_FALSE(u2_key.empty()) << "the maps were never listed";
  EXPECT_EQ(w.deleted_sources.count(u2_key), 0u) << "p2's entry was deleted at some point";
  ASSERT_EQ(w.maps[SockLbMap::kPolicySources].count(u2_key), 1u);
  uint64_t mask = 0;
  std::memcpy(&mask, w.maps[SockLbMap::kPolicySources][u2_key].data(), sizeof(mask));
  EXPECT_NE(mask, 0u);
  rmdir((root + "/pod" + u2).c_str());
  rmdir((root + "/pod" + u1).c_str());
  rmdir(root.c_str());
}

// The capture is asked about the L7 ports the pass's policy wants at each meshed pod of the node:
// until the pod's table sends a new one to the proxy (the capture's next pass, or a refresh that
// failed), the DENY stays a whole-connection one at connect(), said; once it does, the proxy
// decides each request.
TEST(ServicePolicyReconciler, AnLSevenPortThePodsTableDoesNotHaveYetKeepsTheDenyAtConnect) {
  char tmpl[] = "/tmp/shunt-sp-l7-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string root = tmpl;
  const std::string u1 = "11111111-2222-3333-4444-555555555555";
  MakePodDir(root + "/pod" + u1);
  const std::string json =
      absl::StrFormat(R"({"workloads": [
          {"uid": "%s", "namespace": "default", "name": "p1", "node": "n1", "meshed": true,
           "labels": {"app": "front"}, "ips": ["10.0.0.10"]},
          {"uid": "b", "namespace": "default", "name": "b", "node": "n1", "meshed": true,
           "labels": {"app": "api"}, "ips": ["10.0.0.2"]}],
          "accessPolicies": [)",
                      u1) +
      [] {
        std::string p = Policy("deny-admin", "DENY", R"({"app": "api"})",
                               R"([{"pods": {"matchLabels": {"app": "front"}}}])",
                               R"([{"from": 8081}])");
        p.insert(p.size() - 1, R"(, "l7": [{"paths": ["/admin*"]}])");
        return p;
      }() +
      "]}";
  shunt::v1::PolicyBundle bundle;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &bundle).ok()) << json;
  PolicyStore store;
  store.Apply("test", bundle);
  std::set<std::string> table = {"80"};  // what b's table sends to the proxy
  std::map<std::string, std::vector<std::string>> asked;
  ServicePolicyReconciler::Options opts;
  opts.node_name = kNode;
  opts.cgroup_root = root;
  opts.limits.l7_proxy = true;
  opts.captured = [&](const std::string& uid, const std::vector<std::string>& ports) {
    asked[uid] = ports;
    for (const std::string& p : ports) {
      if (!table.count(p)) return false;
    }
    return true;
  };
  FakeWriter w;
  ServicePolicyReconciler r(opts, store, w);
  absl::Status pass = r.ReconcileOnce();  // applied, with a part not as written
  EXPECT_EQ(pass.code(), absl::StatusCode::kFailedPrecondition) << pass;
  EXPECT_EQ(asked["b"], std::vector<std::string>{"8081"});
  auto st = r.status();
  ASSERT_EQ(st->not_enforced.size(), 1u);
  EXPECT_NE(st->not_enforced[0].reason.find("not captured (yet)"), std::string::npos)
      << st->not_enforced[0].reason;
  EXPECT_EQ(st->policy_names.size(), 1u) << "the DENY holds a bit: enforced at connect()";
  table.insert("8081");  // the capture applied it
  pass = r.ReconcileOnce();
  EXPECT_TRUE(pass.ok()) << pass;
  st = r.status();
  EXPECT_TRUE(st->not_enforced.empty()) << st->not_enforced[0].reason;
  EXPECT_TRUE(st->policy_names.empty()) << "left to the proxy at b";
  rmdir((root + "/pod" + u1).c_str());
  rmdir(root.c_str());
}

// The agent's wiring (agent.cc): the policy pass as the fast path's hook. When the fast path
// writes a pod's pending pods map entry, that pod's pending policy mask is there already.
class CheckingPendingPods : public MapWriter {
 public:
  explicit CheckingPendingPods(const FakeWriter& policy) : policy_(policy) {}
  absl::Status UpsertPod(uint64_t, const shunt_pod&) override { return absl::OkStatus(); }
  absl::Status DeletePod(uint64_t) override { return absl::OkStatus(); }
  absl::StatusOr<std::map<uint64_t, shunt_pod>> ListPods() const override {
    return std::map<uint64_t, shunt_pod>{};
  }
  absl::Status UpsertEndpoint(const IpKey&, uint32_t) override { return absl::OkStatus(); }
  absl::Status DeleteEndpoint(const IpKey&) override { return absl::OkStatus(); }
  absl::StatusOr<std::map<IpKey, uint32_t>> ListEndpoints() const override {
    return std::map<IpKey, uint32_t>{};
  }
  absl::Status DeleteStatsOf(uint32_t) override { return absl::OkStatus(); }
  absl::Status UpsertPendingPod(const std::string& uid, const shunt_pod& pod) override {
    auto key = PodUidKey(uid);
    auto it = policy_.maps.find(SockLbMap::kPolicyPending);
    const bool has_mask = key && it != policy_.maps.end() && it->second.count(Raw(*key));
    if (!has_mask) without_mask.push_back(uid);
    pending[uid] = pod;
    return absl::OkStatus();
  }
  absl::Status DeletePendingPod(const std::string& uid) override {
    pending.erase(uid);
    return absl::OkStatus();
  }
  absl::StatusOr<std::map<std::string, shunt_pod>> ListPendingPods() const override {
    return pending;
  }
  std::map<std::string, shunt_pod> pending;
  std::vector<std::string> without_mask;

 private:
  const FakeWriter& policy_;
};

TEST(ServicePolicyReconciler, AsTheFastPathsHookWritesMasksBeforePendingPods) {
  char tmpl[] = "/tmp/shunt-sp-hook-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string uid = "11111111-2222-3333-4444-555555555555";
  PolicyStore store;
  ApplyDenyFront(store, {uid}, "n2");
  FakeWriter lb;
  CheckingPendingPods fp(lb);
  ServicePolicyReconciler policy({.node_name = kNode, .cgroup_root = tmpl}, store, lb);
  Reconciler fast({.node_name = kNode, .cgroup_root = tmpl}, store, fp);
  fast.SetBeforePendingPods([&](const PolicySnapshotPtr& snapshot) {
    bool applied = false;
    policy.ReconcileOnce(snapshot, &applied).IgnoreError();
    return applied;
  });
  EXPECT_TRUE(fast.ReconcileOnce().ok());
  EXPECT_EQ(fp.pending.count(uid), 1u);
  EXPECT_TRUE(fp.without_mask.empty()) << fp.without_mask[0];
  rmdir(tmpl);
}

TEST(ApplyServicePolicy, EncodesTheAbiLayout) {
  auto enc = EncodeServicePolicy(Compile(Bundle(kApiService)));
  shunt_svc_key k{};
  std::memcpy(k.addr, Ip("10.96.0.10").addr, 16);
  k.port = 80;
  const std::string key(reinterpret_cast<const char*>(&k), sizeof(k));
  ASSERT_EQ(enc[SockLbMap::kServices].count(key), 1u);
  shunt_svc v;
  std::memcpy(&v, enc[SockLbMap::kServices][key].data(), sizeof(v));
  EXPECT_EQ(v.slots, 2u);
  EXPECT_NE(v.service_id, 0u);
  EXPECT_EQ(enc[SockLbMap::kPolicyPorts].size(), 64u);
}

}  // namespace
}  // namespace shunt::agent

namespace shunt::agent {
namespace {

// Access policy where a captured connection arrives (issue 9): the source by its IP.
TEST(DecideArrival, DenyAllowPortsAndSourcesKnownOnlyByTheirAddress) {
  const IpKey a = Ip("10.0.0.1"), d = Ip("10.0.0.4"), stranger = Ip("203.0.113.9");
  EXPECT_TRUE(DecideArrival(Bundle(""), "b", a, 8080).allowed) << "no policy";
  auto deny = Bundle("", "", Policy("deny", "DENY", R"({"app": "api"})",
                                    R"([{"pods": {"matchLabels": {"app": "front"}}}])"));
  ArrivalDecision r = DecideArrival(deny, "b", a, 8080);
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.policy, "default/deny");
  EXPECT_EQ(r.source_workload, "a");
  EXPECT_TRUE(DecideArrival(deny, "b", d, 8080).allowed) << "another namespace's app=front";
  EXPECT_TRUE(DecideArrival(deny, "b", stranger, 8080).allowed) << "no labels to match";
  EXPECT_TRUE(DecideArrival(deny, "a", a, 8080).allowed) << "not a target";
  auto blocks = Bundle("", "", Policy("deny-net", "DENY", R"({"app": "api"})",
                                      R"([{"ipBlocks": ["203.0.113.0/24"]}])"));
  EXPECT_FALSE(DecideArrival(blocks, "b", stranger, 8080).allowed) << "by its address";
  EXPECT_TRUE(DecideArrival(blocks, "b", a, 8080).allowed);
  auto ports = Bundle("", "", Policy("deny-9000", "DENY", R"({"app": "api"})", "[]",
                                     R"([{"from": 9000, "to": 9010}])"));
  EXPECT_TRUE(DecideArrival(ports, "b", a, 8080).allowed);
  EXPECT_FALSE(DecideArrival(ports, "b", a, 9005).allowed);
  auto allow = Bundle("", "", Policy("allow-front", "ALLOW", R"({"app": "api"})",
                                     R"([{"pods": {"matchLabels": {"app": "front"}}}])"));
  EXPECT_TRUE(DecideArrival(allow, "b", a, 8080).allowed);
  r = DecideArrival(allow, "b", stranger, 8080);
  EXPECT_FALSE(r.allowed) << "ALLOW policies target it: only their sources";
  EXPECT_EQ(r.policy, "default/allow-front");
  auto both = Bundle("", "", Policy("allow-front", "ALLOW", R"({"app": "api"})",
                                    R"([{"pods": {"matchLabels": {"app": "front"}}}])") + "," +
                                 Policy("deny-all", "DENY", R"({"app": "api"})", "[]"));
  r = DecideArrival(both, "b", a, 8080);
  EXPECT_FALSE(r.allowed) << "a DENY wins, whatever the order";
  EXPECT_EQ(r.policy, "default/deny-all");
}

// The lookups behind these decisions (workloads by IP and uid, ipBlocks, appProtocols) are built
// once per snapshot; a snapshot given another bundle decides by the new one, not by its old index.
TEST(DecideArrival, ASnapshotGivenAnotherBundleDecidesByIt) {
  const IpKey a = Ip("10.0.0.1");
  PolicySnapshot s = Bundle("");
  EXPECT_TRUE(DecideArrival(s, "b", a, 8080).allowed);
  s = Bundle("", "", Policy("deny", "DENY", R"({"app": "api"})",
                            R"([{"pods": {"matchLabels": {"app": "front"}}}])"));
  const ArrivalDecision r = DecideArrival(s, "b", a, 8080);
  EXPECT_FALSE(r.allowed) << "decided by the first bundle's index";
  EXPECT_EQ(r.source_workload, "a");
  PolicySnapshot copy = s;
  EXPECT_FALSE(DecideArrival(copy, "b", a, 8080).allowed) << "a copy indexes its own bundle";
}

// L7 rules decide requests on HTTP; on opaque bytes they fail closed.
TEST(DecideRequest, LSevenRulesDecideRequestsAndFailClosedOnOpaqueBytes) {
  const IpKey a = Ip("10.0.0.1"), stranger = Ip("203.0.113.9");
  const std::string front = R"([{"pods": {"matchLabels": {"app": "front"}}}])";
  auto deny = Bundle("", "", L7Policy("no-admin", "DENY", front, R"([{"paths": ["/admin/*"]}])"));
  ArrivalDecision r = DecideArrival(deny, "b", a, 8080, ArrivalView::kHttp);
  EXPECT_TRUE(r.allowed) << "on HTTP the connection is admitted; its requests are decided";
  EXPECT_TRUE(r.l7);
  EXPECT_FALSE(DecideArrival(deny, "b", a, 8080, ArrivalView::kOpaque).allowed)
      << "opaque: the DENY refuses the whole connection";
  EXPECT_TRUE(DecideArrival(deny, "b", stranger, 8080, ArrivalView::kOpaque).allowed)
      << "not its source";
  EXPECT_TRUE(DecideRequest(deny, "b", a, 8080, "GET", "/api/x").allowed);
  r = DecideRequest(deny, "b", a, 8080, "GET", "/admin/users");
  EXPECT_FALSE(r.allowed);
  EXPECT_EQ(r.policy, "default/no-admin");
  for (const char* around : {"/%61dmin/users", "//admin/users", "/x/../admin/users",
                             "/api/..%2Fadmin/u", "/./admin/u", "\\admin\\u", "/api/%2e%2e/admin/u"}) {
    EXPECT_FALSE(DecideRequest(deny, "b", a, 8080, "GET", around).allowed) << around;
  }
  EXPECT_TRUE(DecideRequest(deny, "b", stranger, 8080, "GET", "/admin/users").allowed);

  auto allow = Bundle("", "", L7Policy("read-only", "ALLOW", front,
                                        R"([{"methods": ["GET", "HEAD"], "paths": ["/api/*", "/health"]}])"));
  EXPECT_TRUE(DecideArrival(allow, "b", a, 8080, ArrivalView::kHttp).allowed);
  EXPECT_FALSE(DecideArrival(allow, "b", stranger, 8080, ArrivalView::kHttp).allowed);
  EXPECT_FALSE(DecideArrival(allow, "b", a, 8080, ArrivalView::kOpaque).allowed)
      << "opaque: an ALLOW with L7 rules admits none of it";
  EXPECT_TRUE(DecideRequest(allow, "b", a, 8080, "GET", "/api/v1").allowed);
  EXPECT_TRUE(DecideRequest(allow, "b", a, 8080, "HEAD", "/health").allowed);
  EXPECT_FALSE(DecideRequest(allow, "b", a, 8080, "POST", "/api/v1").allowed) << "method";
  EXPECT_FALSE(DecideRequest(allow, "b", a, 8080, "GET", "/health/x").allowed) << "exact path";
  EXPECT_FALSE(DecideRequest(allow, "b", a, 8080, "GET", "/api/../secret").allowed);
  EXPECT_FALSE(DecideRequest(allow, "b", a, 8080, "get", "/api/v1").allowed)
      << "methods are case-sensitive";
  // Another ALLOW without L7 rules for the same source admits every request.
  auto wider = Bundle("", "", L7Policy("read-only", "ALLOW", front, R"([{"methods": ["GET"]}])") +
                                  "," + Policy("all", "ALLOW", R"({"app": "api"})", front));
  EXPECT_TRUE(DecideRequest(wider, "b", a, 8080, "DELETE", "/x").allowed);
  EXPECT_TRUE(DecideArrival(wider, "b", a, 8080, ArrivalView::kOpaque).allowed);
}

// Every reading of a path a server may make is checked: a DENY cannot be gone around with a
// path a server resolves differently from the normalised one (Tomcat's "..;"), and an ALLOW
// admits a path only when every reading of it is admitted.
TEST(DecideRequest, EveryReadingOfThePathIsChecked) {
  const IpKey a = Ip("10.0.0.1");
  const std::string front = R"([{"pods": {"matchLabels": {"app": "front"}}}])";
  auto deny = Bundle("", "", L7Policy("no-admin", "DENY", front, R"([{"paths": ["/admin*"]}])"));
  for (const char* around : {"/x/..;/admin", "/x/..;jsessionid=1/admin/u", "/x/%2e%2e;/admin",
                             "/x/..%3B/admin", "/admin;x"}) {
    EXPECT_FALSE(DecideRequest(deny, "b", a, 8080, "GET", around).allowed) << around;
  }
  EXPECT_TRUE(DecideRequest(deny, "b", a, 8080, "GET", "/x/a;b/c").allowed);
  auto allow = Bundle("", "", L7Policy("api", "ALLOW", front, R"([{"paths": ["/api/*"]}])"));
  EXPECT_TRUE(DecideRequest(allow, "b", a, 8080, "GET", "/api/v1").allowed);
  EXPECT_TRUE(DecideRequest(allow, "b", a, 8080, "GET", "/api/v1;jsessionid=1").allowed);
  for (const char* out_of_it : {"/api/..;/admin", "/api/%2e%2e/admin", "/api//../admin",
                                "/%61pi/v1"}) {
    EXPECT_FALSE(DecideRequest(allow, "b", a, 8080, "GET", out_of_it).allowed) << out_of_it;
  }
  // A DENY whatever the case and a trailing "/" (of the request or of the rule); an ALLOW as
  // written.
  auto exact = Bundle("", "", L7Policy("no-admin", "DENY", front,
                                       R"([{"paths": ["/admin", "/Metrics/", "/Debug/*"]}])"));
  for (const char* around : {"/admin", "/admin/", "/Admin", "/ADMIN//", "/x/../Admin/", "/metrics",
                             "/Metrics", "/metrics/", "/debug/pprof", "/DEBUG/x"}) {
    EXPECT_FALSE(DecideRequest(exact, "b", a, 8080, "GET", around).allowed) << around;
  }
  for (const char* other : {"/admins", "/admin/x", "/", "/debug", "/metricsx"}) {
    EXPECT_TRUE(DecideRequest(exact, "b", a, 8080, "GET", other).allowed) << other;
  }
  EXPECT_FALSE(DecideRequest(allow, "b", a, 8080, "GET", "/API/v1").allowed) << "ALLOW: as written";
  EXPECT_EQ(PathViewsForPolicy("/api/v1"), std::vector<std::string>{"/api/v1"});
  EXPECT_EQ(PathViewsForPolicy("/x/..;/admin"),
            (std::vector<std::string>{"/admin", "/x/..;/admin"}));
}

TEST(AppProtocolOf, IsTheServicePortsOfThePodsEndpointPort) {
  std::string svc = kApiService;
  svc.replace(svc.find(R"("targetPort": 8080})"), 19,
              R"("targetPort": 8080, "appProtocol": "kubernetes.io/h2c"})");
  auto s = Bundle(svc);
  EXPECT_EQ(AppProtocolOf(s, "b", 8080), "kubernetes.io/h2c");
  EXPECT_EQ(AppProtocolOf(s, "c", 8080), "kubernetes.io/h2c");
  EXPECT_EQ(AppProtocolOf(s, "b", 9090), "") << "another port";
  EXPECT_EQ(AppProtocolOf(s, "a", 8080), "") << "not an endpoint";
  EXPECT_EQ(AppProtocolOf(Bundle(kApiService), "b", 8080), "") << "none declared";
  // A second Service of the same pod port: saying the same (whatever the case) it agrees; saying
  // something else, neither is believed.
  auto second = [&](const std::string& app) {
    std::string other = svc;
    other.replace(other.find(R"("name": "api")"), 13, R"("name": "api2")");
    other.replace(other.find("kubernetes.io/h2c"), 17, app);
    return Bundle(svc + "," + other);
  };
  EXPECT_EQ(AppProtocolOf(second("Kubernetes.io/H2C"), "b", 8080), "kubernetes.io/h2c");
  EXPECT_EQ(AppProtocolOf(second("tcp"), "b", 8080), "") << "two Services disagree";
}

TEST(NormalizePathForPolicy, DecodesMergesAndResolvesDotSegments) {
  EXPECT_EQ(NormalizePathForPolicy("/a/b"), "/a/b");
  EXPECT_EQ(NormalizePathForPolicy("/a/b/"), "/a/b/");
  EXPECT_EQ(NormalizePathForPolicy("//a///b"), "/a/b");
  EXPECT_EQ(NormalizePathForPolicy("/a/./b/../c"), "/a/c");
  EXPECT_EQ(NormalizePathForPolicy("/../../a"), "/a");
  EXPECT_EQ(NormalizePathForPolicy("/%41%2fb%5Cc"), "/A/b/c");
  EXPECT_EQ(NormalizePathForPolicy("/a/%zz/%4"), "/a/%zz/%4");
  EXPECT_EQ(NormalizePathForPolicy("/a/.."), "/");
  EXPECT_EQ(NormalizePathForPolicy(""), "/");
  EXPECT_EQ(NormalizePathForPolicy("*"), "*");
}

}  // namespace
}  // namespace shunt::agent

namespace shunt::agent {
namespace {

// A Service an ApiCostPolicy prices (issue 10): its pods' ports are read at L7 (captured, also
// from the node's own meshed pods) and the calling pod is named for the bill.
// What an agent reports of the ApiCostPolicies on its node (their CR's Enforced condition).
TEST(CostPoliciesNotEnforced, WherePodsOfThePricedServiceAreNotReadAndWhatCannotApply) {
  PolicySnapshot s = Bundle(kApiService);
  for (const char* json :
       {R"({"namespace": "default", "name": "prices", "service": "api", "currency": "EUR",
            "routes": [{"name": "all", "perRequest": "0.5"}]})",
        R"({"namespace": "default", "name": "prices-too", "service": "api", "currency": "EUR"})",
        R"({"namespace": "default", "name": "nowhere", "service": "absent", "currency": "EUR"})"}) {
    ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, s.bundle.add_api_cost_policies())
                    .ok());
  }
  std::vector<std::string> asked;
  auto captured = [&](bool yes) {
    return [&asked, yes](const std::string& uid, const std::vector<std::string>& ports) {
      asked.push_back(uid + ":" + absl::StrJoin(ports, ","));
      return yes;
    };
  };
  auto describe = [](const std::vector<NotEnforcedPart>& parts) {
    std::vector<std::string> out;
    for (const auto& p : parts) {
      EXPECT_TRUE(p.cost);
      out.push_back(p.policy + ": " + p.reason);
    }
    return out;
  };
  // Captured with the priced port: in force; the shadowed one never is; pod c is on n2.
  auto parts = describe(CostPoliciesNotEnforced(s, kNode, true, captured(true)));
  ASSERT_EQ(parts.size(), 1u) << absl::StrJoin(parts, "\n");
  EXPECT_NE(parts[0].find("default/prices-too: ApiCostPolicy default/prices prices the same"),
            std::string::npos)
      << parts[0];
  EXPECT_EQ(asked, (std::vector<std::string>{"b:8080"})) << "b, with its priced port";
  // Not captured (yet), or no capture at all: named.
  parts = describe(CostPoliciesNotEnforced(s, kNode, true, captured(false)));
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0], "default/prices: not captured yet (calls not read, nobody charged): pod b");
  parts = describe(CostPoliciesNotEnforced(s, kNode, false, captured(true)));
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_NE(parts[0].find("default/prices: the agent runs without --capture"), std::string::npos);
  // Node n2 (pod c) does not capture either; a node with no pod of it has nothing to do.
  EXPECT_EQ(CostPoliciesNotEnforced(s, "n2", false, nullptr).size(), 2u);
  EXPECT_EQ(CostPoliciesNotEnforced(s, "n3", false, nullptr).size(), 1u) << "only the shadowed";
  // Prices this agent cannot read: nowhere in force.
  s.bundle.mutable_api_cost_policies(0)->mutable_routes(0)->set_per_request("0.5.5");
  s.derived = {};
  parts = describe(CostPoliciesNotEnforced(s, "n3", false, nullptr));
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_NE(parts[0].find("default/prices: does not compile on this agent"), std::string::npos)
      << parts[0];
}

TEST(CostPolicyOf, APricedServicesPortsAreReadAtLSevenAndThePayerNamed) {
  PolicySnapshot s = Bundle(kApiService);
  auto priced = google::protobuf::util::JsonStringToMessage(
      R"({"namespace": "default", "name": "prices", "service": "api", "currency": "EUR",
          "routes": [{"name": "all", "perRequest": "0.5"}]})",
      s.bundle.add_api_cost_policies());
  ASSERT_TRUE(priced.ok());
  const IpKey a = Ip("10.0.0.1"), stranger = Ip("203.0.113.9");
  ArrivalDecision r = DecideArrival(s, "b", a, 8080);
  EXPECT_TRUE(r.allowed);
  EXPECT_TRUE(r.l7) << "the priced Service's port";
  EXPECT_EQ(r.source_pod, "a");
  EXPECT_FALSE(DecideArrival(s, "b", a, 9090).l7) << "another port of the pod";
  EXPECT_EQ(DecideArrival(s, "b", stranger, 8080).source_pod, "") << "an address only";
  EXPECT_FALSE(DecideArrival(Bundle(kApiService), "b", a, 8080).l7) << "not priced";
  auto policy = CostPolicyOf(s, "default", "api");
  ASSERT_NE(policy, nullptr);
  EXPECT_EQ(policy->currency(), "EUR");
  EXPECT_EQ(CostPolicyOf(s, "default", "other"), nullptr);
  const auto& b = s.bundle.workloads(1);
  ASSERT_EQ(b.uid(), "b");
  EXPECT_EQ(L7PortsOf(s.bundle, b), std::vector<std::string>{"8080"});
  EXPECT_TRUE(L7PortsOf(s.bundle, s.bundle.workloads(0)).empty()) << "a serves no priced Service";
}

}  // namespace
}  // namespace shunt::agent
