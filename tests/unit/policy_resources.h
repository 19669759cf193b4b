// Policy resources for the policy-stream tests (header-only).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/resources.h"
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

}  // namespace shunt::test
