// The in-pod capture's nftables script, without a namespace (the kernel side is
// tests/e2e/capture_test.cc).
#include "agent/capture/pod_capture.h"

#include <gtest/gtest.h>

namespace shunt::agent {
namespace {

TEST(CaptureRuleset, ReplacesItsOwnTableOnlyAndCapturesBothFamilies) {
  CaptureOptions o;
  o.skip_sources = {"198.18.0.1", "10.0.0.0/8", "fd5a:1::1"};
  auto s = CaptureRuleset(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->rfind("table inet shunt_capture\ndelete table inet shunt_capture\n", 0), 0u)
      << "replaced as a whole, in one transaction";
  EXPECT_EQ(s->find("flush ruleset"), std::string::npos);
  EXPECT_NE(s->find("tproxy ip to :15008"), std::string::npos) << *s;
  // Without a listener (a crashed agent) tproxy lets a SYN on: dropped after it instead.
  EXPECT_GT(s->find("tcp flags & (fin | syn | rst | ack) == syn fib daddr type local drop"),
            s->find("tproxy ip6 to :15008"))
      << *s;
  EXPECT_NE(s->find("tproxy ip6 to :15008"), std::string::npos) << *s;
  EXPECT_NE(s->find("elements = { 198.18.0.1, 10.0.0.0/8 }"), std::string::npos) << *s;
  EXPECT_NE(s->find("elements = { fd5a:1::1 }"), std::string::npos) << *s;
  EXPECT_NE(s->find("tcp flags & (fin | syn | rst | ack) == syn"), std::string::npos)
      << "new connections only";
  EXPECT_NE(s->find("tcp dport 15008 return"), std::string::npos) << "never to itself";
  // Releasing keeps the replies' routing for open connections: the output chain, no capture.
  auto draining = CaptureRuleset(o, /*capture=*/false);
  ASSERT_TRUE(draining.ok());
  EXPECT_EQ(draining->find("tproxy"), std::string::npos);
  EXPECT_NE(draining->find("chain output"), std::string::npos);
}

// The node's meshed pods are the fast path's: their new connections return before the tproxy
// rule, in sets of their own (not the node's, which stay skipped whatever the port).
TEST(CaptureRuleset, TheNodesMeshedPodsAreLeftToTheFastPath) {
  CaptureOptions o;
  o.mesh_sources = {"10.1.0.5", "fd5a:2::5", "not-an-ip"};
  EXPECT_EQ(CaptureRuleset(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.mesh_sources = {"10.1.0.5", "fd5a:2::5", "10.1.0.6"};
  auto s = CaptureRuleset(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_NE(s->find("set mesh4 { type ipv4_addr; flags interval; auto-merge; elements = { "
                    "10.1.0.5, 10.1.0.6 } }"),
            std::string::npos)
      << *s;
  EXPECT_NE(s->find("elements = { fd5a:2::5 }"), std::string::npos) << *s;
  const size_t v4 = s->find("ip saddr @mesh4 return"), v6 = s->find("ip6 saddr @mesh6 return");
  ASSERT_NE(v4, std::string::npos) << *s;
  ASSERT_NE(v6, std::string::npos) << *s;
  EXPECT_LT(v4, s->find("tproxy ip to")) << "before the capture";
  EXPECT_LT(v6, s->find("tproxy ip to"));
  o.mesh_sources.clear();
  s = CaptureRuleset(o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->find("mesh4"), std::string::npos) << "no empty set";
}

// Ports that need L7 are captured from the node's meshed pods too: only the proxy decides
// requests.
TEST(CaptureRuleset, PortsThatNeedLSevenAreCapturedFromMeshedPodsToo) {
  CaptureOptions o;
  o.mesh_sources = {"10.1.0.5", "fd5a:2::5"};
  o.l7_ports = {"8081", "9000-9010"};
  auto s = CaptureRuleset(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_NE(s->find("ip saddr @mesh4 tcp dport != { 8081, 9000-9010 } return"), std::string::npos)
      << *s;
  EXPECT_NE(s->find("ip6 saddr @mesh6 tcp dport != { 8081, 9000-9010 } return"), std::string::npos);
  o.l7_ports = {"*"};
  s = CaptureRuleset(o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->find("@mesh4"), std::string::npos) << "every port: nothing left to the fast path";
  for (const char* bad : {"80; drop", "-1", "1-", "", "1--2", "123456789012"}) {
    o.l7_ports = {bad};
    EXPECT_EQ(CaptureRuleset(o).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(CaptureRuleset, AnAddressListedTwiceIsOneElement) {
  CaptureOptions o;
  o.skip_sources = {"198.18.0.1", "198.18.0.1"};
  auto s = CaptureRuleset(o);
  ASSERT_TRUE(s.ok());
  EXPECT_NE(s->find("elements = { 198.18.0.1 }"), std::string::npos) << *s;
}

TEST(CaptureRuleset, BadOptionsAreRefused) {
  CaptureOptions o;
  o.skip_sources = {"not-an-ip"};
  EXPECT_EQ(CaptureRuleset(o).status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* bad : {"10.0.0.1; flush ruleset", "10.0.0.0/8; flush ruleset", "10.0.0.0/33",
                          "10.0.0.0/", "fd00::/129", "10.0.0.0/+8"}) {
    o.skip_sources = {bad};
    EXPECT_EQ(CaptureRuleset(o).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  o = {};
  o.agent_mark = o.route_mark;
  EXPECT_FALSE(CaptureRuleset(o).ok());
  o = {};
  o.route_mark = 0x1000;  // outside the mask
  EXPECT_FALSE(CaptureRuleset(o).ok());
}

}  // namespace
}  // namespace shunt::agent
