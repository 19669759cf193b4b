#include "controller/snapshot_builder.h"

#include <arpa/inet.h>

#include <algorithm>
#include <set>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"

namespace shunt::controller {
namespace {

using nlohmann::json;
using shunt::v1::Resource;
using shunt::v1::ResourceKey;

const json& At(const json& o, std::initializer_list<const char*> path) {
  static const json kNull;
  const json* v = &o;
  for (const char* k : path) {
    if (!v->is_object()) return kNull;
    auto it = v->find(k);
    if (it == v->end()) return kNull;
    v = &*it;
  }
  return *v;
}

std::string Str(const json& o, std::initializer_list<const char*> path) {
  const json& v = At(o, path);
  return v.is_string() ? v.get<std::string>() : "";
}

std::map<std::string, std::string> StrMap(const json& o, std::initializer_list<const char*> path) {
  std::map<std::string, std::string> out;
  const json& v = At(o, path);
  if (!v.is_object()) return out;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (it.value().is_string()) out[it.key()] = it.value().get<std::string>();
  }
  return out;
}

int64_t Int(const json& o, std::initializer_list<const char*> path) {
  const json& v = At(o, path);
  return v.is_number_integer() ? v.get<int64_t>() : 0;
}

bool ValidIp(const std::string& ip) {
  unsigned char buf[16];
  return inet_pton(AF_INET, ip.c_str(), buf) == 1 || inet_pton(AF_INET6, ip.c_str(), buf) == 1;
}

// The one spelling of an address that everything downstream compares (here as strings, in the
// agent as bytes): inet_ntop of its bytes, and a v4-mapped IPv6 address as its IPv4 (the agent
// keys both alike). Empty if it is no address. Every IP of the snapshot goes through it.
std::string CanonicalIp(const std::string& ip) {
  unsigned char buf[16];
  char out[INET6_ADDRSTRLEN];
  if (inet_pton(AF_INET, ip.c_str(), buf) == 1) {
    return inet_ntop(AF_INET, buf, out, sizeof(out)) ? out : "";
  }
  if (inet_pton(AF_INET6, ip.c_str(), buf) != 1) return "";
  static const unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::equal(buf, buf + 12, kMapped)) {
    return inet_ntop(AF_INET, buf + 12, out, sizeof(out)) ? out : "";
  }
  return inet_ntop(AF_INET6, buf, out, sizeof(out)) ? out : "";
}

bool ValidCidr(const std::string& cidr) {
  std::vector<std::string> parts = absl::StrSplit(cidr, '/');
  if (parts.size() != 2 || !ValidIp(parts[0])) return false;
  int bits;
  if (!absl::SimpleAtoi(parts[1], &bits) || bits < 0) return false;
  return bits <= (parts[0].find(':') == std::string::npos ? 32 : 128);
}

bool ValidDecimal(const std::string& s) {
  if (s.empty()) return true;  // unset price
  size_t dot = s.find('.');
  auto digits = [](absl::string_view d) {
    return !d.empty() &&
           std::all_of(d.begin(), d.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (dot == std::string::npos) return digits(s);
  return digits(absl::string_view(s).substr(0, dot)) &&
         digits(absl::string_view(s).substr(dot + 1));
}

Resource MakeResource(ResourceKey::Kind kind, const std::string& ns, const std::string& name) {
  Resource r;
  r.mutable_key()->set_kind(kind);
  r.mutable_key()->set_namespace_(ns);
  r.mutable_key()->set_name(name);
  return r;
}

// --- Pods -> Workloads --------------------------------------------------------------------------

std::string OwnerOf(const json& pod) {
  const json& refs = At(pod, {"metadata", "ownerReferences"});
  if (refs.is_array()) {
    for (const auto& ref : refs) {
      if (!At(ref, {"controller"}).is_boolean() || !At(ref, {"controller"}).get<bool>()) continue;
      std::string name = Str(ref, {"name"});
      // ReplicaSet "web-7d9f8b" of Deployment "web": strip the pod-template-hash.
      const std::string hash = Str(pod, {"metadata", "labels", "pod-template-hash"});
      if (Str(ref, {"kind"}) == "ReplicaSet" && !hash.empty() &&
          absl::EndsWith(name, absl::StrCat("-", hash))) {
        name.resize(name.size() - hash.size() - 1);
      }
      return name;
    }
  }
  return Str(pod, {"metadata", "name"});
}

using CacheEntry = SnapshotBuilder::Cache::Entry;

// The objects of one kind: a contiguous range of the map (ObjectKey sorts by kind first).
template <typename F>
void ForEachOfKind(const ObjectMap& objects, Kind kind, F f) {
  for (auto it = objects.lower_bound(ObjectKey{kind, "", ""});
       it != objects.end() && it->first.kind == kind; ++it) {
    f(it->first, it->second);
  }
}

// Walks the objects of `kind` and the cache (both sorted by key) in one pass, updating the cache
// in place: an entry is reused when `fresh(key, stored, entry)`, else made by `compute(key,
// stored)`; entries of objects that are gone are dropped. What the entries derived (resource,
// warning) goes into `out`, so a cached build gives what a fresh one would.
template <typename Fresh, typename Compute>
void DeriveCached(const ObjectMap& objects, Kind kind, SnapshotBuilder::Cache& cache,
                  Snapshot& out, Fresh fresh, Compute compute) {
  auto c = cache.entries.begin();
  ForEachOfKind(objects, kind, [&](const ObjectKey& key, const StoredObject& stored) {
    while (c != cache.entries.end() && c->first < key) c = cache.entries.erase(c);
    const bool cached = c != cache.entries.end() && c->first == key;
    if (!cached) {
      c = cache.entries.emplace_hint(c, key, compute(key, stored));
    } else if (!fresh(key, stored, c->second)) {
      c->second = compute(key, stored);
    }
    const CacheEntry& e = c->second;
    if (!e.warning.empty()) out.warnings.push_back(e.warning);
    if (e.resource) out.resources.insert_or_assign(e.resource_key, e.resource);
    ++c;
  });
  cache.entries.erase(c, cache.entries.end());
}

void SetResource(CacheEntry& entry, Resource r) {
  r.set_version(ResourceVersion(r));
  entry.resource = std::make_shared<const Resource>(std::move(r));
  entry.resource_key = ResourceKeyString(entry.resource->key());
}

void AddWorkloads(const ObjectMap& objects, SnapshotBuilder::Cache& cache, Snapshot& out) {
  std::set<std::string> meshed_namespaces;
  ForEachOfKind(objects, Kind::kNamespace, [&](const ObjectKey& key, const StoredObject& stored) {
    if (Str(*stored.object, {"metadata", "labels", kMeshLabel}) == kMeshEnabled) {
      meshed_namespaces.insert(key.name);
    }
  });
  auto fresh = [&](const ObjectKey& key, const StoredObject& stored, const CacheEntry& e) {
    return e.inputs.size() == 1 && e.inputs[0] == stored.object &&
           e.flag == (meshed_namespaces.count(key.ns) > 0);
  };
  auto compute = [&](const ObjectKey& key, const StoredObject& stored) {
    const json& pod = *stored.object;
    CacheEntry entry;
    entry.inputs = {stored.object};
    entry.flag = meshed_namespaces.count(key.ns) > 0;
    const std::string uid = Str(pod, {"metadata", "uid"});
    const std::string node = Str(pod, {"spec", "nodeName"});
    const std::string phase = Str(pod, {"status", "phase"});
    if (uid.empty()) {
      entry.warning = ToString(key) + ": no metadata.uid, skipped";
      return entry;
    }
    // A finished pod's IP may already belong to a new pod (PITFALLS 11): forget it.
    if (node.empty() || phase == "Succeeded" || phase == "Failed") return entry;
    Resource r = MakeResource(ResourceKey::WORKLOAD, key.ns, uid);
    auto* w = r.mutable_workload();
    w->set_uid(uid);
    w->set_namespace_(key.ns);
    w->set_name(key.name);
    w->set_node(node);
    w->set_service_account(Str(pod, {"spec", "serviceAccountName"}));
    w->set_owner(OwnerOf(pod));
    for (const auto& [k, v] : StrMap(pod, {"metadata", "labels"})) (*w->mutable_labels())[k] = v;
    const bool host_network = At(pod, {"spec", "hostNetwork"}).is_boolean() &&
                              At(pod, {"spec", "hostNetwork"}).get<bool>();
    // A hostNetwork pod's IPs are its node's (shared with every other such pod there): none is
    // sent, so that it is never a policy target, an endpoint or a duplicate-IP claimant.
    static const json kNoIps;
    const json& ips = host_network ? kNoIps : At(pod, {"status", "podIPs"});
    if (ips.is_array()) {
      for (const auto& ip : ips) {
        const std::string s = CanonicalIp(Str(ip, {"ip"}));
        if (!s.empty() && std::find(w->ips().begin(), w->ips().end(), s) == w->ips().end()) {
          w->add_ips(s);  // once: a repeated address would compete with itself
        }
      }
    }
    if (!host_network && w->ips_size() == 0) {
      if (const std::string s = CanonicalIp(Str(pod, {"status", "podIP"})); !s.empty()) {
        w->add_ips(s);
      }
    }
    const std::string annotation = Str(pod, {"metadata", "annotations", kMeshLabel});
    bool meshed = entry.flag || annotation == kMeshEnabled;
    if (annotation == kMeshDisabled || host_network) meshed = false;
    w->set_meshed(meshed);
    w->set_host_network(host_network);
    SetResource(entry, std::move(r));
    return entry;
  };
  DeriveCached(objects, Kind::kPod, cache, out, fresh, compute);
}

// --- Services + EndpointSlices -> Services ------------------------------------------------------

std::optional<Resource> BuildService(const ObjectKey& key, const std::vector<ObjectPtr>& inputs);

void AddServices(const ObjectMap& objects, SnapshotBuilder::Cache& cache, Snapshot& out) {
  // A service's resource depends on the Service and its EndpointSlices: group the slices first.
  std::map<std::pair<std::string, std::string>, std::vector<ObjectPtr>> slices_of;
  ForEachOfKind(objects, Kind::kEndpointSlice, [&](const ObjectKey& key, const StoredObject& st) {
    const std::string svc = Str(*st.object, {"metadata", "labels", "kubernetes.io/service-name"});
    if (!svc.empty()) slices_of[{key.ns, svc}].push_back(st.object);
  });
  auto inputs_of = [&](const ObjectKey& key, const StoredObject& stored) {
    std::vector<ObjectPtr> inputs = {stored.object};
    auto sl = slices_of.find({key.ns, key.name});
    if (sl != slices_of.end()) inputs.insert(inputs.end(), sl->second.begin(), sl->second.end());
    return inputs;
  };
  auto fresh = [&](const ObjectKey& key, const StoredObject& stored, const CacheEntry& e) {
    return e.inputs == inputs_of(key, stored);
  };
  auto compute = [&](const ObjectKey& key, const StoredObject& stored) {
    CacheEntry entry;
    entry.inputs = inputs_of(key, stored);
    if (std::optional<Resource> r = BuildService(key, entry.inputs)) {
      SetResource(entry, std::move(*r));
    }
    return entry;
  };
  DeriveCached(objects, Kind::kService, cache, out, fresh, compute);
}

std::optional<Resource> BuildService(const ObjectKey& key, const std::vector<ObjectPtr>& inputs) {
  std::map<std::pair<std::string, std::string>, Resource> services;
  ObjectMap objects;
  objects[key] = StoredObject{"", inputs[0]};
  for (size_t i = 1; i < inputs.size(); ++i) {
    objects[ObjectKey{Kind::kEndpointSlice, key.ns, std::to_string(i)}] = StoredObject{"", inputs[i]};
  }
  for (const auto& [key, stored] : objects) {
    if (key.kind != Kind::kService) continue;
    const json& svc = *stored.object;
    if (Str(svc, {"spec", "type"}) == "ExternalName") continue;
    Resource r = MakeResource(ResourceKey::SERVICE, key.ns, key.name);
    auto* s = r.mutable_service();
    s->set_namespace_(key.ns);
    s->set_name(key.name);
    std::vector<std::string> vips;
    const json& cips = At(svc, {"spec", "clusterIPs"});
    if (cips.is_array()) {
      for (const auto& ip : cips) {
        if (ip.is_string()) vips.push_back(ip.get<std::string>());
      }
    } else if (!Str(svc, {"spec", "clusterIP"}).empty()) {
      vips.push_back(Str(svc, {"spec", "clusterIP"}));
    }
    for (const auto& ip : vips) {
      const std::string c = CanonicalIp(ip);  // "None" (headless) is dropped
      if (!c.empty() && std::find(s->vips().begin(), s->vips().end(), c) == s->vips().end()) {
        s->add_vips(c);
      }
    }
    const json& ports = At(svc, {"spec", "ports"});
    if (ports.is_array()) {
      for (const auto& p : ports) {
        auto* sp = s->add_ports();
        sp->set_name(Str(p, {"name"}));
        sp->set_port(static_cast<uint32_t>(Int(p, {"port"})));
        sp->set_target_port(static_cast<uint32_t>(Int(p, {"targetPort"})));  // named: 0
        std::string proto = Str(p, {"protocol"});
        sp->set_protocol(proto.empty() ? "TCP" : proto);
        sp->set_app_protocol(Str(p, {"appProtocol"}));
      }
    }
    for (const auto& [k, v] : StrMap(svc, {"metadata", "labels"})) (*s->mutable_labels())[k] = v;
    for (const auto& [k, v] : StrMap(svc, {"spec", "selector"})) (*s->mutable_selector())[k] = v;
    services[{key.ns, key.name}] = std::move(r);
  }
  for (const auto& [key, stored] : objects) {
    if (key.kind != Kind::kEndpointSlice) continue;
    const json& slice = *stored.object;
    const std::string svc = Str(slice, {"metadata", "labels", "kubernetes.io/service-name"});
    auto it = services.find({key.ns, svc});
    if (svc.empty() || it == services.end()) continue;
    std::vector<shunt::v1::EndpointPort> ports;
    const json& jports = At(slice, {"ports"});
    if (jports.is_array()) {
      for (const auto& p : jports) {
        shunt::v1::EndpointPort ep;
        ep.set_name(Str(p, {"name"}));
        ep.set_port(static_cast<uint32_t>(Int(p, {"port"})));
        ports.push_back(ep);
      }
    }
    const json& eps = At(slice, {"endpoints"});
    if (!eps.is_array()) continue;
    for (const auto& e : eps) {
      auto* ep = it->second.mutable_service()->add_endpoints();
      const json& addrs = At(e, {"addresses"});
      if (addrs.is_array()) {
        for (const auto& a : addrs) {
          const std::string c = a.is_string() ? CanonicalIp(a.get<std::string>()) : "";
          if (!c.empty() && std::find(ep->ips().begin(), ep->ips().end(), c) == ep->ips().end()) {
            ep->add_ips(c);
          }
        }
      }
      if (Str(e, {"targetRef", "kind"}) == "Pod")
        ep->set_workload_uid(Str(e, {"targetRef", "uid"}));
      ep->set_node(Str(e, {"nodeName"}));
      const json& ready = At(e, {"conditions", "ready"});
      ep->set_ready(!ready.is_boolean() || ready.get<bool>());  // absent means ready
      for (const auto& p : ports) *ep->add_ports() = p;
    }
  }
  if (services.empty()) return std::nullopt;
  return std::move(services.begin()->second);
}

// --- CRs ----------------------------------------------------------------------------------------

template <typename Msg>
absl::Status SpecToProto(const json& object, Msg* msg) {
  const json& spec = At(object, {"spec"});
  if (!spec.is_object()) return absl::InvalidArgumentError("spec is missing or not an object");
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  auto s = google::protobuf::util::JsonStringToMessage(spec.dump(), msg, opts);
  if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("spec: ", s.message().as_string()));
  return absl::OkStatus();
}

absl::Status ValidateRoute(const shunt::v1::TrafficRoute& r,
                           const std::set<std::pair<std::string, std::string>>& services) {
  if (r.service().empty()) return absl::InvalidArgumentError("spec.service is required");
  if (!services.count({r.namespace_(), r.service()})) {
    return absl::NotFoundError(
        absl::StrCat("Service ", r.namespace_(), "/", r.service(), " does not exist"));
  }
  if (r.rules_size() == 0) return absl::InvalidArgumentError("spec.rules must not be empty");
  for (int i = 0; i < r.rules_size(); ++i) {
    const auto& rule = r.rules(i);
    uint64_t total = 0;
    for (int j = 0; j < rule.backends_size(); ++j) {
      const auto& b = rule.backends(j);
      if (b.target_case() == shunt::v1::RouteBackend::TARGET_NOT_SET) {
        return absl::InvalidArgumentError(
            absl::StrCat("spec.rules[", i, "].backends[", j, "]: subset or service is required"));
      }
      if (b.weight() > 1000000) {
        return absl::InvalidArgumentError(
            absl::StrCat("spec.rules[", i, "].backends[", j, "].weight: must be <= 1000000"));
      }
      total += b.weight();
    }
    if (total == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("spec.rules[", i, "]: the backends' weights add up to 0"));
    }
  }
  for (uint32_t p : r.ports()) {
    if (p == 0 || p > 65535) return absl::InvalidArgumentError("spec.ports: must be 1-65535");
  }
  return absl::OkStatus();
}

absl::Status ValidateAccess(const shunt::v1::AccessPolicy& p) {
  if (p.action() == shunt::v1::AccessPolicy::ACTION_UNSPECIFIED) {
    return absl::InvalidArgumentError("spec.action must be ALLOW or DENY");
  }
  for (int i = 0; i < p.from_size(); ++i) {
    for (const auto& cidr : p.from(i).ip_blocks()) {
      if (!ValidCidr(cidr)) {
        return absl::InvalidArgumentError(
            absl::StrCat("spec.from[", i, "].ipBlocks: \"", cidr, "\" is not a CIDR"));
      }
    }
  }
  // What an agent's connect() program checks (SHUNT_AP_MAX_PORT_RANGES): more could never be
  // enforced, on any node. The CRD says so too; this catches a CRD applied before it did.
  if (p.ports_size() > kAccessPolicyMaxPortRanges) {
    return absl::InvalidArgumentError(absl::StrCat("spec.ports: ", p.ports_size(),
                                                   " ranges; at most ", kAccessPolicyMaxPortRanges,
                                                   " are supported"));
  }
  for (int i = 0; i < p.ports_size(); ++i) {
    const auto& r = p.ports(i);
    if (r.from() == 0 || r.from() > 65535 || r.to() > 65535 || (r.to() != 0 && r.to() < r.from())) {
      return absl::InvalidArgumentError(absl::StrCat("spec.ports[", i, "]: bad port range"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateCost(const shunt::v1::ApiCostPolicy& p) {
  if (p.service().empty()) return absl::InvalidArgumentError("spec.service is required");
  if (p.currency().size() != 3 || !std::all_of(p.currency().begin(), p.currency().end(),
                                               [](char c) { return c >= 'A' && c <= 'Z'; })) {
    return absl::InvalidArgumentError("spec.currency must be an ISO 4217 code such as USD");
  }
  for (int i = 0; i < p.routes_size(); ++i) {
    const auto& r = p.routes(i);
    for (const std::string* d : {&r.per_request(), &r.per_gib_request(), &r.per_gib_response()}) {
      if (!ValidDecimal(*d)) {
        return absl::InvalidArgumentError(
            absl::StrCat("spec.routes[", i, "]: \"", *d, "\" is not a decimal price"));
      }
    }
  }
  auto check_model = [](const shunt::v1::ModelPrice& m, const std::string& where) -> absl::Status {
    for (const std::string* d : {&m.per_million_input(), &m.per_million_cached_input(),
                                 &m.per_million_output(), &m.per_million_reasoning(),
                                 &m.per_million_cache_creation()}) {
      if (!ValidDecimal(*d)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": \"", *d, "\" is not a decimal price"));
      }
    }
    return absl::OkStatus();
  };
  for (int i = 0; i < p.models_size(); ++i) {
    auto s = check_model(p.models(i), absl::StrCat("spec.models[", i, "]"));
    if (!s.ok()) return s;
  }
  return check_model(p.default_model(), "spec.defaultModel");
}

void AddPolicies(const ObjectMap& objects, Snapshot& out) {
  std::set<std::pair<std::string, std::string>> services;
  for (const auto& [key, stored] : objects) {
    if (key.kind == Kind::kService) services.insert({key.ns, key.name});
  }
  for (const auto& [key, stored] : objects) {
    if (key.kind != Kind::kTrafficRoute && key.kind != Kind::kAccessPolicy &&
        key.kind != Kind::kApiCostPolicy) {
      continue;
    }
    PolicyStatus status;
    status.key = key;
    status.observed_generation = Int(*stored.object, {"metadata", "generation"});
    absl::Status s;
    Resource r;
    if (key.kind == Kind::kTrafficRoute) {
      r = MakeResource(ResourceKey::TRAFFIC_ROUTE, key.ns, key.name);
      auto* m = r.mutable_traffic_route();
      s = SpecToProto(*stored.object, m);
      m->set_namespace_(key.ns);
      m->set_name(key.name);
      if (s.ok()) s = ValidateRoute(*m, services);
    } else if (key.kind == Kind::kAccessPolicy) {
      r = MakeResource(ResourceKey::ACCESS_POLICY, key.ns, key.name);
      auto* m = r.mutable_access_policy();
      s = SpecToProto(*stored.object, m);
      m->set_namespace_(key.ns);
      m->set_name(key.name);
      if (s.ok()) s = ValidateAccess(*m);
    } else {
      r = MakeResource(ResourceKey::API_COST_POLICY, key.ns, key.name);
      auto* m = r.mutable_api_cost_policy();
      s = SpecToProto(*stored.object, m);
      m->set_namespace_(key.ns);
      m->set_name(key.name);
      if (s.ok()) s = ValidateCost(*m);
    }
    status.accepted = s.ok();
    status.resource_key = ResourceKeyString(r.key());
    if (s.ok()) {
      status.reason = "Accepted";
      status.message = "applied to the mesh";
      r.set_version(ResourceVersion(r));
      const std::string k = ResourceKeyString(r.key());
      out.resources[k] = std::make_shared<const Resource>(std::move(r));
    } else {
      status.reason = s.code() == absl::StatusCode::kNotFound ? "ServiceNotFound" : "InvalidSpec";
      status.message = std::string(s.message());
    }
    out.statuses.push_back(std::move(status));
  }
}

}  // namespace

// Two pods can briefly claim one IP: a terminating pod's IP handed to its successor (PITFALLS 11).
// Agents reject a snapshot with a duplicate IP, so the controller settles it first: the IP stays
// with the pod that is not being deleted, then the newer one; the other pod loses the IP.
void ResolveDuplicateIps(const ObjectMap& objects, Snapshot& out) {
  // Which workloads claim each IP; the pods' objects are only looked at for IPs claimed twice.
  // ip -> resource keys (views into out.resources, which does not change in this loop)
  absl::flat_hash_map<absl::string_view, std::vector<const std::string*>> claims;
  claims.reserve(out.resources.size());
  for (const auto& [k, r] : out.resources) {
    if (r->key().kind() != ResourceKey::WORKLOAD) continue;
    for (const auto& ip : r->workload().ips()) {
      auto& keys = claims[ip];
      if (keys.empty() || keys.back() != &k) keys.push_back(&k);  // an IP listed twice by one pod
    }
  }
  struct Claim {
    std::string resource_key;
    bool terminating;
    std::string created;
    std::string uid;
  };
  std::map<std::string, ResourcePtr> replaced;
  std::vector<std::pair<std::string, std::vector<const std::string*>>> contested;
  for (auto& [ip, keys] : claims) {
    if (keys.size() >= 2) contested.emplace_back(std::string(ip), std::move(keys));
  }
  std::sort(contested.begin(), contested.end());  // deterministic warnings and resolution
  for (auto& [ip, keys] : contested) {
    std::vector<Claim> list;
    for (const std::string* k : keys) {
      const auto& w = out.resources.at(*k)->workload();
      auto pod = objects.find(ObjectKey{Kind::kPod, w.namespace_(), w.name()});
      if (pod == objects.end()) continue;
      const json& object = *pod->second.object;
      list.push_back({*k, !Str(object, {"metadata", "deletionTimestamp"}).empty(),
                      Str(object, {"metadata", "creationTimestamp"}), w.uid()});
    }
    std::sort(list.begin(), list.end(), [](const Claim& a, const Claim& b) {
      if (a.terminating != b.terminating) return !a.terminating;
      if (a.created != b.created) return a.created > b.created;  // RFC 3339 sorts as text
      return a.uid < b.uid;
    });
    for (size_t i = 1; i < list.size(); ++i) {
      // Resources are shared (the builder's cache, the server's versions): copy, then change.
      ResourcePtr& current = replaced.count(list[i].resource_key)
                                 ? replaced[list[i].resource_key]
                                 : (replaced[list[i].resource_key] =
                                        out.resources.at(list[i].resource_key));
      auto r = std::make_shared<Resource>(*current);
      auto* ips = r->mutable_workload()->mutable_ips();
      ips->erase(std::remove(ips->begin(), ips->end(), ip), ips->end());
      r->set_version(ResourceVersion(*r));
      current = std::move(r);
      out.warnings.push_back(absl::StrCat("IP ", ip, " is claimed by pods ", list[0].uid, " and ",
                                          list[i].uid, "; it stays with ", list[0].uid));
    }
  }
  for (auto& [k, r] : replaced) out.resources[k] = std::move(r);
}

Snapshot SnapshotBuilder::Build(const ObjectMap& objects) {
  Snapshot out;
  AddWorkloads(objects, pods_, out);
  ResolveDuplicateIps(objects, out);
  AddServices(objects, services_, out);
  AddPolicies(objects, out);
  return out;
}

Snapshot BuildSnapshot(const ObjectMap& objects) { return SnapshotBuilder().Build(objects); }

}  // namespace shunt::controller
