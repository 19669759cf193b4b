// The policy stream over a real gRPC channel: the controller's PolicyServer and the agent's
// ControllerPolicySource, in one process, on 127.0.0.1.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>

#include <google/protobuf/unknown_field_set.h>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/test_util.h"
#include "tests/unit/policy_stream_util.h"
#include "agent/policy/controller_source.h"
#include "agent/policy/policy_store.h"
#include "common/resources.h"
#include "controller/policy_server.h"
#include "grpcpp/grpcpp.h"

namespace shunt {
namespace {

using namespace std::chrono_literals;
using shunt::v1::PolicyRequest;
using shunt::v1::PolicyResponse;
using shunt::v1::Resource;
using shunt::v1::ResourceKey;

using shunt::test::Eventually;

Resource Pod(const std::string& uid, const std::string& ip, bool meshed = true) {
  return shunt::test::PodResource(uid, ip, meshed);
}
std::map<std::string, Resource> Set(std::vector<Resource> rs) {
  return shunt::test::ResourceSetOf(std::move(rs));
}

// The controller of these tests: plaintext.
struct ControllerProcess : shunt::test::TestController {
  explicit ControllerProcess(int port = 0, int max_pushes = 64,
                             size_t max_push_bytes = size_t{128} << 20,
                             absl::Duration push_timeout = absl::Seconds(60),
                             int max_streams = 20000)
      : TestController(grpc::InsecureServerCredentials(), port, max_pushes, max_push_bytes,
                       push_timeout, max_streams) {}
};
struct Agent : shunt::test::TestAgent {
  explicit Agent(const std::string& address, const std::string& state_dir = "")
      : TestAgent(Options(address, state_dir)) {}
  static agent::ControllerSourceOptions Options(const std::string& address,
                                                const std::string& state_dir) {
    agent::ControllerSourceOptions o;
    o.address = address;
    o.credentials = grpc::InsecureChannelCredentials();
    o.state_dir = state_dir;
    return o;
  }
};

// A bare stream to the controller, without an agent behind it: the test says what it sends.
struct RawStream {
  explicit RawStream(const std::string& address)
      : stub(shunt::v1::PolicyDiscovery::NewStub(
            grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))),
        stream(stub->Stream(&ctx)) {}
  ~RawStream() {
    if (finished) return;
    ctx.TryCancel();
    (void)stream->Finish();
  }
  bool Write(const PolicyRequest& r) { return stream->Write(r); }
  bool Read(PolicyResponse* r) { return stream->Read(r); }
  grpc::Status Finish() {
    finished = true;
    return stream->Finish();
  }
  std::unique_ptr<shunt::v1::PolicyDiscovery::Stub> stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<PolicyRequest, PolicyResponse>> stream;
  bool finished = false;
};

TEST(PolicyStream, FullStateThenDeltasReachTheAgent) {
  ControllerProcess c;
  c.service.Publish(Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.3")}), absl::Now());
  Agent agent(c.address());
  ASSERT_TRUE(Eventually([&] { return agent.Workloads() == 2; }));
  ASSERT_TRUE(Eventually([&] { return agent.source->InSync().ok(); }));

  // b changes, c appears, a goes.
  c.service.Publish(Set({Pod("b", "198.18.0.3", false), Pod("c", "198.18.0.4")}), absl::Now());
  ASSERT_TRUE(Eventually([&] {
    auto s = agent.store.Current();
    if (!s || s->bundle.workloads_size() != 2) return false;
    for (const auto& w : s->bundle.workloads()) {
      if (w.uid() == "a" || (w.uid() == "b" && w.meshed())) return false;
    }
    return true;
  }));
  EXPECT_EQ(agent.source->version(), c.service.current_version());
  ASSERT_TRUE(Eventually([&] {
    auto agents = c.service.Agents();
    return agents.size() == 1 && agents[0].in_sync && agents[0].node == "node-a";
  }));
}

// gRPC's default limit for a received message is 4 MiB. A large cluster's full state (here
// 100000 workloads, ~9 MiB) must reach the agent, and an agent that restarts holding all of them
// sends the controller their versions in one request (~5 MiB).
TEST(PolicyStream, FullStateOverFourMebibytesBothWays) {
  ControllerProcess c;
  std::map<std::string, Resource> all;
  for (int i = 0; i < 100000; ++i) {
    Resource r = Pod(absl::StrCat("uid-", i),  // unique addresses in 198.18.0.0/15
                     absl::StrCat("198.", 18 + i / (254 * 256), ".", i / 254 % 256, ".",
                                  1 + i % 254));
    all[ResourceKeyString(r.key())] = std::move(r);
  }
  c.service.Publish(all, absl::Now());
  shunt::test::TempDir state;
  {
    Agent agent(c.address(), state.path());
    ASSERT_TRUE(Eventually([&] { return agent.Workloads() == 100000; }, 60s))
        << agent.source->InSync();
    ASSERT_TRUE(Eventually([&] { return agent.source->InSync().ok(); }));
  }
  Agent again(c.address(), state.path());  // starts from the saved state, then subscribes
  ASSERT_TRUE(Eventually([&] { return again.source->InSync().ok(); }, 60s))
      << again.source->InSync();
  EXPECT_EQ(again.Workloads(), 100000u);
  EXPECT_EQ(c.service.nacks_total(), 0u);
}

TEST(PolicyStream, ResponsesCarryOnlyChangesAndAreAckedByNonce) {
  ControllerProcess c;
  c.service.Publish(Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.3")}), absl::Now());
  RawStream raw(c.address());
  auto* stream = &raw;
  PolicyRequest req;
  req.set_node("raw");
  ASSERT_TRUE(stream->Write(req));
  PolicyResponse first;
  ASSERT_TRUE(stream->Read(&first));
  EXPECT_TRUE(first.full_state());
  EXPECT_EQ(first.resources_size(), 2);
  EXPECT_FALSE(first.nonce().empty());

  // No next response before this one is answered, even if the snapshot moves on.
  c.service.Publish(Set({Pod("a", "198.18.0.2"), Pod("c", "198.18.0.4")}), absl::Now());
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(c.service.pushes_total(), 1u);

  PolicyRequest stale;
  stale.set_response_nonce("not-a-nonce");
  ASSERT_TRUE(stream->Write(stale));  // ignored
  PolicyRequest ack;
  ack.set_response_nonce(first.nonce());
  ack.set_version_info(first.system_version_info());
  ASSERT_TRUE(stream->Write(ack));
  PolicyResponse delta;
  ASSERT_TRUE(stream->Read(&delta));
  EXPECT_FALSE(delta.full_state());
  ASSERT_EQ(delta.resources_size(), 1);
  EXPECT_EQ(delta.resources(0).workload().uid(), "c");
  ASSERT_EQ(delta.removed_size(), 1);
  EXPECT_EQ(delta.removed(0).name(), "b");
  EXPECT_NE(delta.nonce(), first.nonce());
}

TEST(PolicyStream, InitialResourceVersionsLimitTheFirstResponseToTheDifference) {
  ControllerProcess c;
  Resource a = Pod("a", "198.18.0.2"), b = Pod("b", "198.18.0.3"), d = Pod("d", "198.18.0.5");
  c.service.Publish(Set({a, b, Pod("c", "198.18.0.4")}), absl::Now());
  RawStream raw(c.address());
  auto* stream = &raw;
  PolicyRequest req;
  req.set_node("restarted");
  // Holds a and b as they are, an outdated version of c's neighbour d that no longer exists.
  (*req.mutable_initial_resource_versions())[ResourceKeyString(a.key())] = a.version();
  (*req.mutable_initial_resource_versions())[ResourceKeyString(b.key())] = b.version();
  (*req.mutable_initial_resource_versions())[ResourceKeyString(d.key())] = d.version();
  ASSERT_TRUE(stream->Write(req));
  PolicyResponse first;
  ASSERT_TRUE(stream->Read(&first));
  EXPECT_TRUE(first.full_state());
  ASSERT_EQ(first.resources_size(), 1);
  EXPECT_EQ(first.resources(0).workload().uid(), "c");
  ASSERT_EQ(first.removed_size(), 1);
  EXPECT_EQ(first.removed(0).name(), "d");
  EXPECT_EQ(first.removed(0).kind(), ResourceKey::WORKLOAD);
}

TEST(PolicyStream, ManyAgentsShareAFewWriteSlotsAndAllSync) {
  ControllerProcess c(0, /*max_pushes=*/2);
  c.service.Publish(Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.3")}), absl::Now());
  std::vector<std::unique_ptr<Agent>> agents;
  for (int i = 0; i < 20; ++i) agents.push_back(std::make_unique<Agent>(c.address()));
  ASSERT_TRUE(Eventually([&] {
    for (auto& a : agents) {
      if (!a->source->InSync().ok()) return false;
    }
    return true;
  }));
  c.service.Publish(Set({Pod("a", "198.18.0.2")}), absl::Now());
  ASSERT_TRUE(Eventually([&] {
    for (auto& a : agents) {
      if (a->Workloads() != 1 || !a->source->InSync().ok()) return false;
    }
    return true;
  }));
  EXPECT_EQ(c.service.pushes_total(), 40u);
  EXPECT_LE(c.service.peak_full_pushes(), 2);
}

// The byte budget: with room for less than one full state, they go out one at a time (the
// first always goes), and every agent still syncs.
TEST(PolicyStream, FullStatesOverTheByteBudgetGoOneAtATime) {
  ControllerProcess c(0, /*max_pushes=*/64, /*max_push_bytes=*/1);
  c.service.Publish(Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.3")}), absl::Now());
  std::vector<std::unique_ptr<Agent>> agents;
  for (int i = 0; i < 20; ++i) agents.push_back(std::make_unique<Agent>(c.address()));
  ASSERT_TRUE(Eventually([&] {
    for (auto& a : agents) {
      if (!a->source->InSync().ok() || a->Workloads() != 2) return false;
    }
    return true;
  }));
  EXPECT_EQ(c.service.peak_full_pushes(), 1);
  EXPECT_EQ(c.service.pushes_total(), 20u);
}

// A stream that subscribes and then never reads its full state holds a write slot only until the
// push timeout: then it is ended and the agent behind it gets the slot. Without the timeout it
// held the only slot for good, and the agent never synced.
TEST(PolicyStream, AStreamThatStopsReadingLosesItsWriteSlotAtThePushTimeout) {
  ControllerProcess c(0, /*max_pushes=*/1, size_t{128} << 20, absl::Seconds(1));
  std::map<std::string, Resource> all;
  for (int i = 0; i < 100000; ++i) {  // far more than HTTP/2 and TCP buffer for a reader
    Resource r = Pod(absl::StrCat("uid-", i),
                     absl::StrCat("198.", 18 + i / (254 * 256), ".", i / 254 % 256, ".",
                                  1 + i % 254));
    all[ResourceKeyString(r.key())] = std::move(r);
  }
  c.service.Publish(all, absl::Now());
  RawStream stuck_stream(c.address());
  auto* stuck = &stuck_stream;
  PolicyRequest hello;
  hello.set_node("node-stuck");
  ASSERT_TRUE(stuck->Write(hello));  // and never a Read
  ASSERT_TRUE(Eventually([&] { return c.service.full_pushes_in_flight() == 1; }));
  Agent agent(c.address());
  ASSERT_TRUE(Eventually([&] { return agent.source->InSync().ok(); }, 60s))
      << agent.source->InSync();
  EXPECT_EQ(agent.Workloads(), 100000u);
  EXPECT_GE(c.service.push_timeouts_total(), 1u);
}

// Issue 8 item 10: streams are bounded; one over the bound is refused with a clear status (and
// counted), and a place that frees is taken by the next agent.
TEST(PolicyStream, StreamsOverTheBoundAreRefusedUntilOneCloses) {
  ControllerProcess c(0, 64, size_t{128} << 20, absl::Seconds(60), /*max_streams=*/2);
  c.service.Publish(Set({Pod("a", "198.18.0.2")}), absl::Now());
  auto first = std::make_unique<Agent>(c.address());
  Agent second(c.address());
  ASSERT_TRUE(Eventually([&] { return first->source->InSync().ok() && second.source->InSync().ok(); }));
  RawStream raw(c.address());
  auto* third = &raw;
  PolicyRequest hello;
  hello.set_node("node-c");
  third->Write(hello);
  PolicyResponse r;
  EXPECT_FALSE(third->Read(&r));
  grpc::Status st = third->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_EQ(c.service.refused_streams_total(), 1u);
  first.reset();  // its stream closes; the next agent gets the place
  Agent late(c.address());
  ASSERT_TRUE(Eventually([&] { return late.source->InSync().ok(); }, 20s)) << late.source->InSync();
}

// Version skew (issue 8 item 7): a newer controller sends a resource of a kind this agent does
// not know (a body field it has no name for). Before, the whole response was NACKed and the
// agent stalled on its old version; now it is ignored, counted, and the rest applies.
TEST(PolicyStream, ResourcesOfUnknownKindsAreIgnoredAndCounted) {
  ControllerProcess c;
  Resource future;
  future.mutable_key()->set_kind(static_cast<ResourceKey::Kind>(99));
  future.mutable_key()->set_namespace_("default");
  future.mutable_key()->set_name("from-the-future");
  future.GetReflection()->MutableUnknownFields(&future)->AddLengthDelimited(15, "a newer body");
  future.set_version("f1");
  auto set = Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.3")});
  set[ResourceKeyString(future.key())] = future;
  c.service.Publish(set, absl::Now());
  shunt::test::TempDir state;
  {
    // Removed while an agent that held it was away: its resync (the numbered kind among the
    // versions it holds) removes it too.
    Agent away(c.address(), state.path());
    ASSERT_TRUE(Eventually([&] { return away.source->InSync().ok() && away.source->saved(); }));
    EXPECT_EQ(away.source->unknown_resources(), 1u);
  }
  c.service.Publish(Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.3")}), absl::Now());
  {
    Agent back(c.address(), state.path());
    ASSERT_TRUE(Eventually([&] {
      return back.source->InSync().ok() && back.source->unknown_resources() == 0;
    })) << back.source->unknown_resources();
  }
  c.service.Publish(set, absl::Now());
  Agent agent(c.address());
  ASSERT_TRUE(Eventually([&] { return agent.source->InSync().ok(); })) << agent.source->InSync();
  EXPECT_EQ(agent.Workloads(), 2u);
  EXPECT_EQ(agent.source->unknown_resources(), 1u);
  EXPECT_EQ(c.service.nacks_total(), 0u);
  // It goes away like any resource.
  c.service.Publish(Set({Pod("a", "198.18.0.2")}), absl::Now());
  ASSERT_TRUE(Eventually([&] {
    return agent.source->InSync().ok() && agent.Workloads() == 1 &&
           agent.source->unknown_resources() == 0;
  }));
}

// The other direction: a newer agent's request with fields this controller does not know is
// served as if they were not there.
TEST(PolicyStream, RequestFieldsUnknownToTheControllerAreIgnored) {
  ControllerProcess c;
  c.service.Publish(Set({Pod("a", "198.18.0.2")}), absl::Now());
  RawStream raw(c.address());
  auto* stream = &raw;
  PolicyRequest hello;
  hello.set_node("node-new");
  hello.GetReflection()->MutableUnknownFields(&hello)->AddVarint(77, 1);
  ASSERT_TRUE(stream->Write(hello));
  PolicyResponse r;
  ASSERT_TRUE(stream->Read(&r));
  EXPECT_EQ(r.resources_size(), 1);
  EXPECT_TRUE(r.full_state());
}

TEST(PolicyStream, FirstRequestWithoutNodeIsRejected) {
  ControllerProcess c;
  RawStream raw(c.address());
  auto* stream = &raw;
  ASSERT_TRUE(stream->Write(PolicyRequest()));
  PolicyResponse r;
  EXPECT_FALSE(stream->Read(&r));
  grpc::Status s = stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(PolicyStream, InvalidSnapshotIsNackedAndTheAgentKeepsItsLastGoodVersion) {
  ControllerProcess c;
  c.service.Publish(Set({Pod("a", "198.18.0.2")}), absl::Now());
  Agent agent(c.address());
  ASSERT_TRUE(Eventually([&] { return agent.source->InSync().ok(); }));
  const std::string good = agent.source->version();

  // Two pods claim one IP: the agent must refuse the whole version.
  c.service.Publish(Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.2")}), absl::Now());
  ASSERT_TRUE(Eventually([&] { return c.service.nacks_total() == 1; }));
  EXPECT_EQ(agent.source->version(), good);
  EXPECT_EQ(agent.Workloads(), 1u);
  EXPECT_EQ(agent.source->InSync().code(), absl::StatusCode::kFailedPrecondition);
  auto agents = c.service.Agents();
  ASSERT_EQ(agents.size(), 1u);
  EXPECT_FALSE(agents[0].in_sync);
  EXPECT_NE(agents[0].last_nack.find("198.18.0.2"), std::string::npos) << agents[0].last_nack;
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(c.service.nacks_total(), 1u) << "a NACKed version is not resent in a loop";

  // A good version after it is applied.
  c.service.Publish(Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.9")}), absl::Now());
  ASSERT_TRUE(Eventually([&] { return agent.Workloads() == 2 && agent.source->InSync().ok(); }));
}

TEST(PolicyStream, RestartedAgentEnforcesSavedStateAndResumesWithOnlyTheDifference) {
  shunt::test::TempDir dir("shunt-stream");
  std::string address;
  {
    ControllerProcess c;
    address = c.address();
    c.service.Publish(Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.3")}), absl::Now());
    Agent agent(c.address(), dir.path());
    ASSERT_TRUE(Eventually([&] { return agent.source->InSync().ok(); }));
  }
  // The controller is gone; a new agent starts from the saved state at once.
  auto port = std::stoi(address.substr(address.rfind(':') + 1));
  {
    Agent agent(address, dir.path());
    EXPECT_EQ(agent.Workloads(), 2u) << "the saved policy is enforced without a controller";
    EXPECT_FALSE(agent.source->InSync().ok());

    // The controller comes back with one change: only that is sent.
    ControllerProcess c(port);
    c.service.Publish(Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.3"), Pod("c", "198.18.0.4")}),
                      absl::Now());
    ASSERT_TRUE(Eventually([&] { return agent.source->InSync().ok(); }, 15s));
    EXPECT_EQ(agent.Workloads(), 3u);
    EXPECT_EQ(c.service.pushes_total(), 1u);
  }
}

TEST(PolicyStream, AgentResyncsAfterTheControllerRestarts) {
  std::unique_ptr<ControllerProcess> c = std::make_unique<ControllerProcess>();
  const std::string address = c->address();
  const int port = c->bound_port;
  c->service.Publish(Set({Pod("a", "198.18.0.2")}), absl::Now());
  Agent agent(address);
  ASSERT_TRUE(Eventually([&] { return agent.source->InSync().ok(); }));
  c.reset();  // controller dies
  ASSERT_TRUE(Eventually([&] { return !agent.source->InSync().ok(); }));
  EXPECT_EQ(agent.Workloads(), 1u) << "enforcement continues";
  c = std::make_unique<ControllerProcess>(port);
  c->service.Publish(Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.3")}), absl::Now());
  ASSERT_TRUE(
      Eventually([&] { return agent.source->InSync().ok() && agent.Workloads() == 2; }, 15s));
}

}  // namespace
}  // namespace shunt
