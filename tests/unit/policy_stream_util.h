// The policy stream in one process, for its tests (header-only): resources, a controller (the
// real PolicyServer on a gRPC server on 127.0.0.1) and an agent (the real ControllerPolicySource
// feeding a PolicyStore).
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/policy/controller_source.h"
#include "agent/policy/policy_store.h"
#include "common/resources.h"
#include "controller/policy_server.h"
#include "grpcpp/grpcpp.h"
#include "shunt/v1/discovery.pb.h"

namespace shunt::test {

// A Workload resource of namespace default on node-a, versioned as the controller versions it.
inline shunt::v1::Resource PodResource(const std::string& uid, const std::string& ip,
                                       bool meshed = true) {
  shunt::v1::Resource r;
  r.mutable_key()->set_kind(shunt::v1::ResourceKey::WORKLOAD);
  r.mutable_key()->set_namespace_("default");
  r.mutable_key()->set_name(uid);
  auto* w = r.mutable_workload();
  w->set_uid(uid);
  w->set_namespace_("default");
  w->set_name("pod-" + uid);
  w->set_node("node-a");
  w->add_ips(ip);
  w->set_meshed(meshed);
  r.set_version(ResourceVersion(r));
  return r;
}

// Resources by ResourceKeyString, as PolicyServer::Publish takes them.
inline std::map<std::string, shunt::v1::Resource> ResourceSetOf(
    std::vector<shunt::v1::Resource> rs) {
  std::map<std::string, shunt::v1::Resource> m;
  for (auto& r : rs) m[ResourceKeyString(r.key())] = std::move(r);
  return m;
}

// A PolicyServer served as controller/main.cc serves it, on 127.0.0.1 (port 0: the kernel's).
class TestController {
 public:
  explicit TestController(std::shared_ptr<grpc::ServerCredentials> creds, int port = 0,
                          int max_pushes = 64, size_t max_push_bytes = size_t{128} << 20,
                          absl::Duration push_timeout = absl::Seconds(60),
                          int max_streams = 20000)
      : service(nullptr, max_pushes, max_push_bytes, push_timeout, max_streams) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:" + std::to_string(port), std::move(creds), &bound_port);
    b.RegisterService(&service);
    controller::PolicyServer::ConfigureServer(b);
    server = b.BuildAndStart();
  }
  ~TestController() {
    if (server) server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(bound_port); }

  controller::PolicyServer service;
  std::unique_ptr<grpc::Server> server;
  int bound_port = 0;
};

// An agent's policy side: the controller source (node "node-a", short backoffs unless `o` says
// otherwise) feeding a policy store.
struct TestAgent {
  explicit TestAgent(agent::ControllerSourceOptions o) {
    if (o.node.empty()) o.node = "node-a";
    o.min_backoff = absl::Milliseconds(20);
    o.max_backoff = absl::Milliseconds(200);
    source = std::make_unique<agent::ControllerPolicySource>(o);
    EXPECT_TRUE(source
                    ->Start([this](absl::StatusOr<shunt::v1::PolicyBundle> u) {
                      store.Apply(source->name(), std::move(u));
                    })
                    .ok());
  }
  ~TestAgent() { source->Stop(); }
  size_t Workloads() const {
    auto s = store.Current();
    return s ? s->bundle.workloads_size() : 0;
  }
  agent::PolicyStore store;
  std::unique_ptr<agent::ControllerPolicySource> source;
};

}  // namespace shunt::test
