// The policy stream over TLS and mutual TLS: the controller's PolicyServer and the agent's
// ControllerPolicySource in one process on 127.0.0.1, with credentials built the way
// controller/main.cc (ServerCredentials) and agent/agent.cc (ControllerCredentials) build them,
// from real certificates made at test time with the openssl CLI in a temporary directory.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/test_certs.h"
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
using shunt::v1::Resource;
using shunt::v1::ResourceKey;

using shunt::test::Eventually;
using ::testing::HasSubstr;

Resource Pod(const std::string& uid, const std::string& ip, bool meshed = true) {
  return shunt::test::PodResource(uid, ip, meshed);
}
std::map<std::string, Resource> Set(std::vector<Resource> rs) {
  return shunt::test::ResourceSetOf(std::move(rs));
}

using shunt::test::Certs;
const auto& ReadFile = shunt::test::ReadWholeFile;

// ---- credentials, as the binaries build them ----------------------------------------------

// controller/main.cc ServerCredentials(): --tls-cert, --tls-key and optionally --tls-client-ca.
std::shared_ptr<grpc::ServerCredentials> ControllerTls(const std::string& cert_file,
                                                       const std::string& key_file,
                                                       const std::string& client_ca_file = "") {
  grpc::SslServerCredentialsOptions opts;
  opts.pem_key_cert_pairs.push_back({ReadFile(key_file), ReadFile(cert_file)});
  if (!client_ca_file.empty()) {
    opts.pem_root_certs = ReadFile(client_ca_file);
    opts.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(opts);
}

// agent/agent.cc ControllerCredentials(): --controller-ca, optionally --controller-cert/-key.
std::shared_ptr<grpc::ChannelCredentials> AgentTls(const std::string& ca_file,
                                                   const std::string& cert_file = "",
                                                   const std::string& key_file = "") {
  grpc::SslCredentialsOptions opts;
  if (!ca_file.empty()) opts.pem_root_certs = ReadFile(ca_file);
  if (!cert_file.empty() || !key_file.empty()) {
    opts.pem_cert_chain = ReadFile(cert_file);
    opts.pem_private_key = ReadFile(key_file);
  }
  return grpc::SslCredentials(opts);
}

// A controller with a first snapshot of two pods.
struct Controller : shunt::test::TestController {
  explicit Controller(std::shared_ptr<grpc::ServerCredentials> creds)
      : TestController(std::move(creds)) {
    service.Publish(Set({Pod("a", "198.18.0.2"), Pod("b", "198.18.0.3")}), absl::Now());
  }
};
struct Agent : shunt::test::TestAgent {
  Agent(const std::string& address, std::shared_ptr<grpc::ChannelCredentials> creds,
        bool client_certificate = false, bool tls = true, const std::string& node = "")
      : TestAgent(Options(address, std::move(creds), client_certificate, tls, node)) {}
  static agent::ControllerSourceOptions Options(const std::string& address,
                                                std::shared_ptr<grpc::ChannelCredentials> creds,
                                                bool client_certificate, bool tls,
                                                const std::string& node) {
    agent::ControllerSourceOptions o;
    o.node = node;
    o.address = address;
    o.credentials = std::move(creds);
    o.client_certificate = client_certificate;
    o.tls = tls;
    return o;
  }
};
class PolicyStreamTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { certs_ = new Certs(); }
  static void TearDownTestSuite() {
    delete certs_;  // removes the directory, whatever the tests' outcome
    certs_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(certs_->error().empty()) << "making the test certificates: " << certs_->error();
  }
  static std::string P(const std::string& name) { return certs_->Path(name); }

  static std::shared_ptr<grpc::ServerCredentials> Tls() {
    return ControllerTls(P("server.crt"), P("server.key"));
  }
  static std::shared_ptr<grpc::ServerCredentials> MutualTls() {
    return ControllerTls(P("server.crt"), P("server.key"), P("ca.crt"));
  }

  static void ExpectSyncs(Agent& agent, Controller& c) {
    ASSERT_TRUE(Eventually([&] { return agent.source->InSync().ok(); }))
        << agent.source->InSync().message();
    EXPECT_EQ(agent.Workloads(), 2u);
    EXPECT_EQ(agent.source->version(), c.service.current_version());
  }

  // For ~1 s the agent keeps trying (it reconnects with backoff) and never gets in sync: no
  // policy arrives and the controller never sees it as a stream.
  static void ExpectNeverSyncs(Agent& agent, Controller& c) {
    const auto until = std::chrono::steady_clock::now() + 1s;
    while (std::chrono::steady_clock::now() < until) {
      absl::Status s = agent.source->InSync();
      ASSERT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
      ASSERT_EQ(agent.store.Current(), nullptr);
      std::this_thread::sleep_for(10ms);
    }
    EXPECT_TRUE(agent.source->version().empty());
    EXPECT_GE(agent.source->reconnects(), 2u) << "the agent kept retrying";
    for (const auto& a : c.service.Agents()) ADD_FAILURE() << "controller saw agent " << a.node;
    std::cerr << "  refused agent's status: " << agent.source->InSync() << "\n";
  }

  static Certs* certs_;
};
Certs* PolicyStreamTls::certs_ = nullptr;

TEST_F(PolicyStreamTls, AgentTrustingTheControllersCaSyncs) {
  Controller c(Tls());
  Agent agent(c.address(), AgentTls(P("ca.crt")));
  ExpectSyncs(agent, c);
  ASSERT_TRUE(Eventually([&] {
    auto agents = c.service.Agents();
    return agents.size() == 1 && agents[0].in_sync && agents[0].node == "node-a";
  }));
  // Deltas flow over the same TLS stream.
  c.service.Publish(Set({Pod("a", "198.18.0.2")}), absl::Now());
  ASSERT_TRUE(Eventually([&] { return agent.Workloads() == 1 && agent.source->InSync().ok(); }));
}

TEST_F(PolicyStreamTls, AgentTrustingAnotherCaNeverSyncs) {
  Controller c(Tls());
  Agent agent(c.address(), AgentTls(P("other_ca.crt")));
  ExpectNeverSyncs(agent, c);
  // The controller itself is fine: an agent with the right CA syncs meanwhile.
  Agent good(c.address(), AgentTls(P("ca.crt")));
  ExpectSyncs(good, c);
  EXPECT_FALSE(agent.source->InSync().ok());
  EXPECT_EQ(agent.store.Current(), nullptr);
}

TEST_F(PolicyStreamTls, MutualTlsAgentWithAClientCertFromTheCaSyncs) {
  Controller c(MutualTls());
  Agent agent(c.address(), AgentTls(P("ca.crt"), P("client.crt"), P("client.key")));
  ExpectSyncs(agent, c);
  c.service.Publish(Set({Pod("c", "198.18.0.4")}), absl::Now());
  ASSERT_TRUE(Eventually([&] { return agent.Workloads() == 1 && agent.source->InSync().ok(); }));
}

TEST_F(PolicyStreamTls, MutualTlsAgentWithoutAClientCertIsRefused) {
  Controller c(MutualTls());
  Agent agent(c.address(), AgentTls(P("ca.crt")));
  ExpectNeverSyncs(agent, c);
  Agent good(c.address(), AgentTls(P("ca.crt"), P("client.crt"), P("client.key")),
             /*client_certificate=*/true);
  ExpectSyncs(good, c);
  EXPECT_FALSE(agent.source->InSync().ok());
  EXPECT_THAT(std::string(agent.source->InSync().message()),
              HasSubstr("give this agent one with --controller-cert"))
      << agent.source->InSync();
  EXPECT_EQ(agent.store.Current(), nullptr);
}

// Issue 8 item 10: with client certificates, a stream gets the policy of its certificate's node
// only (its CN or a DNS name): an agent's certificate cannot be used to read another node's.
TEST_F(PolicyStreamTls, MutualTlsAgentAskingForAnotherNodeThanItsCertificatesIsRefused) {
  Controller c(MutualTls());
  Agent agent(c.address(), AgentTls(P("ca.crt"), P("client.crt"), P("client.key")),
              /*client_certificate=*/true, /*tls=*/true, /*node=*/"node-b");
  ExpectNeverSyncs(agent, c);
  EXPECT_THAT(std::string(agent.source->InSync().message()), HasSubstr("node node-b is not"))
      << agent.source->InSync();
  Agent good(c.address(), AgentTls(P("ca.crt"), P("client.crt"), P("client.key")),
             /*client_certificate=*/true, /*tls=*/true, /*node=*/"node-a");
  ExpectSyncs(good, c);
}

TEST_F(PolicyStreamTls, MutualTlsAgentWithAClientCertFromAnotherCaIsRefused) {
  Controller c(MutualTls());
  Agent agent(c.address(), AgentTls(P("ca.crt"), P("rogue_client.crt"), P("rogue_client.key")),
              /*client_certificate=*/true);
  ExpectNeverSyncs(agent, c);
  Agent good(c.address(), AgentTls(P("ca.crt"), P("client.crt"), P("client.key")));
  ExpectSyncs(good, c);
  EXPECT_FALSE(agent.source->InSync().ok());
  // The agent says why it may have been refused (the controller's reason is in its own log).
  EXPECT_THAT(std::string(agent.source->InSync().message()),
              HasSubstr("check that --controller-cert is signed by the CA"))
      << agent.source->InSync();
  EXPECT_EQ(agent.store.Current(), nullptr);
}

// gRPC checks the dialled address against the certificate's subjectAltName (the CN is not used):
// a certificate from the trusted CA for another IP is refused.
TEST_F(PolicyStreamTls, ServerCertForAnotherAddressIsRefused) {
  Controller c(ControllerTls(P("wrong_ip_server.crt"), P("wrong_ip_server.key")));
  Agent agent(c.address(), AgentTls(P("ca.crt")));
  ExpectNeverSyncs(agent, c);
}

}  // namespace
}  // namespace shunt
