#include "agent/dataplane/service_policy.h"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <numeric>
#include <optional>
#include <set>
#include <tuple>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "google/protobuf/message.h"
#include "google/protobuf/unknown_field_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/dataplane/policy_stages.h"
#include "agent/policy/pod_cgroups.h"
#include "common/cgroup.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace shunt::agent {

namespace {
// Whether `m` or any message in it carries fields this build does not know (kept by protobuf as
// unknown fields when a newer peer sent them).
bool HasUnknownFields(const google::protobuf::Message& m) {
  const google::protobuf::Reflection* r = m.GetReflection();
  if (!r->GetUnknownFields(m).empty()) return true;
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const auto* f : fields) {
    if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(m, f); ++i) {
        if (HasUnknownFields(r->GetRepeatedMessage(m, f, i))) return true;
      }
    } else if (HasUnknownFields(r->GetMessage(m, f))) {
      return true;
    }
  }
  return false;
}
}  // namespace
namespace {

using shunt::v1::AccessPolicy;
using shunt::v1::AccessSource;
using shunt::v1::LabelSelector;
using shunt::v1::Service;
using shunt::v1::ServicePort;
using shunt::v1::TrafficRoute;
using shunt::v1::Workload;

bool IsV4(const IpKey& ip) {
  return ip.addr[0] == 0 && ip.addr[1] == 0 && ip.addr[2] == htonl(0x0000ffff);
}

bool LabelsMatch(const LabelSelector& sel, const Workload& w) {
  for (const auto& [k, v] : sel.match_labels()) {
    auto it = w.labels().find(k);
    if (it == w.labels().end() || it->second != v) return false;
  }
  return true;
}

bool Contains(const google::protobuf::RepeatedPtrField<std::string>& list, const std::string& s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

bool SourceMatches(const AccessSource& s, const Workload& w, const std::string& policy_ns,
                   const std::vector<std::pair<IpKey, int>>& blocks) {
  if (!s.namespaces().empty() && !Contains(s.namespaces(), w.namespace_())) return false;
  if (!s.service_accounts().empty()) {
    bool any = false;
    for (const auto& sa : s.service_accounts()) {
      const size_t slash = sa.find('/');
      const std::string ns = slash == std::string::npos ? policy_ns : sa.substr(0, slash);
      const std::string name = slash == std::string::npos ? sa : sa.substr(slash + 1);
      if (ns == w.namespace_() && name == w.service_account()) any = true;
    }
    if (!any) return false;
  }
  if (s.has_pods()) {
    // A pod selector without namespaces selects in the policy's namespace (as Kubernetes does).
    if (s.namespaces().empty() && w.namespace_() != policy_ns) return false;
    if (!LabelsMatch(s.pods(), w)) return false;
  }
  if (!s.ip_blocks().empty()) {
    bool any = false;
    for (const auto& ip : w.ips()) {
      auto key = ParseIpKey(ip);
      if (!key.ok()) continue;
      for (const auto& b : blocks) {
        if (CidrContains(b, *key)) any = true;
      }
    }
    if (!any) return false;
  }
  return true;
}

// A backend group of the L4 split: its weight and its endpoints (IP, port) per family.
struct Group {
  uint64_t weight = 0;
  std::vector<LbBackend> v4, v6;
};

// Ready endpoints of `svc` for the service port `sp`, optionally only those whose pod matches.
void EndpointsOf(const Service& svc, const ServicePort& sp,
                 const std::map<std::string, const Workload*>& by_uid, const LabelSelector* subset,
                 Group& g) {
  for (const auto& ep : svc.endpoints()) {
    if (!ep.ready()) continue;
    if (subset) {
      auto it = by_uid.find(ep.workload_uid());
      if (it == by_uid.end() || !LabelsMatch(*subset, *it->second)) continue;
    }
    uint32_t port = sp.target_port() ? sp.target_port() : sp.port();
    for (const auto& p : ep.ports()) {
      if (p.name() == sp.name() && p.port() != 0) port = p.port();
    }
    if (port == 0 || port > 65535) continue;
    for (const auto& ip : ep.ips()) {
      auto key = ParseIpKey(ip);
      if (!key.ok()) continue;
      (IsV4(*key) ? g.v4 : g.v6).push_back({*key, static_cast<uint16_t>(port)});
    }
  }
}

const ServicePort* PortOf(const Service& svc, uint32_t port) {
  for (const auto& sp : svc.ports()) {
    if (sp.port() == port) return &sp;
  }
  return nullptr;
}

bool IsTcp(const ServicePort& sp) { return sp.protocol().empty() || sp.protocol() == "TCP"; }

// The backend groups of svc:port: the route's first rule without matches, else every ready
// endpoint with one weight.
std::vector<Group> GroupsFor(
    const Service& svc, const ServicePort& sp, const std::vector<const TrafficRoute*>& routes,
    const std::map<std::pair<std::string, std::string>, const Service*>& services,
    const std::map<std::string, const Workload*>& by_uid) {
  std::vector<Group> groups;
  const shunt::v1::TrafficRule* rule = nullptr;
  for (const TrafficRoute* r : routes) {
    if (r->namespace_() != svc.namespace_() || r->service() != svc.name()) continue;
    if (!r->ports().empty() &&
        std::find(r->ports().begin(), r->ports().end(), sp.port()) == r->ports().end()) {
      continue;
    }
    for (const auto& rl : r->rules()) {
      if (rl.matches().empty()) {
        rule = &rl;
        break;
      }
    }
    if (rule) break;
  }
  if (rule) {
    for (const auto& b : rule->backends()) {
      Group g;
      g.weight = b.weight();
      if (b.has_subset()) {
        EndpointsOf(svc, sp, by_uid, &b.subset(), g);
      } else if (!b.service().empty()) {
        auto it = services.find({svc.namespace_(), b.service()});
        if (it == services.end()) continue;
        const ServicePort* other = PortOf(*it->second, b.port() ? b.port() : sp.port());
        if (!other) continue;
        EndpointsOf(*it->second, *other, by_uid, nullptr, g);
      } else {
        EndpointsOf(svc, sp, by_uid, nullptr, g);
      }
      if (g.weight > 0 && (!g.v4.empty() || !g.v6.empty())) groups.push_back(std::move(g));
    }
  }
  if (groups.empty()) {  // no route, or only empty / zero-weight backends: every endpoint equally
    Group g;
    g.weight = 1;
    EndpointsOf(svc, sp, by_uid, nullptr, g);
    groups.push_back(std::move(g));
  }
  return groups;
}

// Slot table of one family: each endpoint weighs group weight / group size.
std::vector<LbBackend> SlotTable(const std::vector<Group>& groups, bool v4, uint32_t max_slots) {
  uint64_t lcm = 1;
  for (const auto& g : groups) {
    const auto& eps = v4 ? g.v4 : g.v6;
    if (eps.empty()) continue;
    lcm = std::lcm(lcm, static_cast<uint64_t>(eps.size()));
    if (lcm > (1ull << 20)) lcm = 1ull << 20;  // approximate beyond; slots are bounded anyway
  }
  std::vector<uint64_t> weights;
  std::vector<LbBackend> backends;
  for (const auto& g : groups) {
    const auto& eps = v4 ? g.v4 : g.v6;
    for (const auto& e : eps) {
      weights.push_back(g.weight * std::max<uint64_t>(1, lcm / eps.size()));
      backends.push_back(e);
    }
  }
  std::vector<uint32_t> counts = WeightsToSlots(weights, max_slots);
  std::vector<LbBackend> table;
  for (size_t i = 0; i < backends.size(); ++i) {
    for (uint32_t k = 0; k < counts[i]; ++k) table.push_back(backends[i]);
  }
  return table;
}

}  // namespace

std::optional<uint32_t> StableIds::IdFor(const std::string& name) {
  auto it = ids_.find(name);
  if (it != ids_.end()) return it->second;
  std::set<uint32_t> used;
  for (const auto& [n, id] : ids_) used.insert(id);
  if (reuse_) {
    for (uint64_t id = first_; id <= last_; ++id) {
      if (!used.count(static_cast<uint32_t>(id))) {
        ids_[name] = static_cast<uint32_t>(id);
        return static_cast<uint32_t>(id);
      }
    }
    return std::nullopt;
  }
  if (next_ < first_) next_ = first_;
  if (used.size() >= static_cast<uint64_t>(last_) - first_ + 1) return std::nullopt;
  while (used.count(next_)) next_ = next_ == last_ ? first_ : next_ + 1;
  const uint32_t id = next_;
  next_ = next_ == last_ ? first_ : next_ + 1;
  ids_[name] = id;
  return id;
}

void StableIds::Adopt(const std::string& name, uint32_t id) {
  if (ids_.count(name) || id < first_ || id > last_) return;
  for (const auto& [n, used] : ids_) {
    if (used == id) return;
  }
  ids_[name] = id;
  if (!reuse_ && id >= next_) next_ = id == last_ ? first_ : id + 1;
}

void StableIds::Retain(const std::set<std::string>& keep) {
  for (auto it = ids_.begin(); it != ids_.end();) {
    it = keep.count(it->first) ? std::next(it) : ids_.erase(it);
  }
}

std::vector<uint32_t> WeightsToSlots(const std::vector<uint64_t>& weights, uint32_t max_slots) {
  std::vector<uint32_t> out(weights.size(), 0);
  uint64_t g = 0;
  for (uint64_t w : weights) g = std::gcd(g, w);
  if (g == 0 || max_slots == 0) return out;
  long double total = 0;
  for (uint64_t w : weights) total += static_cast<long double>(w / g);
  if (total <= max_slots) {
    for (size_t i = 0; i < weights.size(); ++i) out[i] = static_cast<uint32_t>(weights[i] / g);
    return out;
  }
  // Largest remainder: floor shares, then the leftover slots to the largest fractions.
  std::vector<std::pair<long double, size_t>> rest;
  uint64_t given = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const long double exact = static_cast<long double>(weights[i] / g) * max_slots / total;
    out[i] = static_cast<uint32_t>(exact);
    given += out[i];
    rest.push_back({exact - out[i], i});
  }
  std::stable_sort(rest.begin(), rest.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t k = 0; given < max_slots && k < rest.size(); ++k, ++given) ++out[rest[k].second];
  return out;
}

absl::StatusOr<std::pair<IpKey, int>> ParseCidr(const std::string& cidr) {
  const size_t slash = cidr.find('/');
  const std::string addr = cidr.substr(0, slash);
  auto key = ParseIpKey(addr);
  if (!key.ok()) return absl::InvalidArgumentError(absl::StrCat("bad CIDR \"", cidr, "\""));
  const bool v4 = addr.find(':') == std::string::npos;
  int len = v4 ? 32 : 128;
  if (slash != std::string::npos) {
    if (!absl::SimpleAtoi(cidr.substr(slash + 1), &len) || len < 0 || len > (v4 ? 32 : 128)) {
      return absl::InvalidArgumentError(absl::StrCat("bad prefix length in \"", cidr, "\""));
    }
  }
  return std::make_pair(*key, v4 ? len + 96 : len);
}

bool CidrContains(const std::pair<IpKey, int>& cidr, const IpKey& ip) {
  int bits = cidr.second;
  for (int w = 0; w < 4 && bits > 0; ++w, bits -= 32) {
    const uint32_t mask = bits >= 32 ? 0xffffffffu : ~(0xffffffffu >> bits);
    if ((ntohl(cidr.first.addr[w]) & mask) != (ntohl(ip.addr[w]) & mask)) return false;
  }
  return true;
}

DesiredServicePolicy CompileServicePolicy(const PolicySnapshot& snapshot, const std::string& node,
                                          const std::map<std::string, uint64_t>& pod_cgroup_ids,
                                          const ServicePolicyLimits& limits,
                                          ServicePolicyIds& ids) {
  DesiredServicePolicy out;
  const auto& bundle = snapshot.bundle;
  auto not_enforced = [&out](const std::string& policy, std::string reason) {
    out.errors.push_back(policy.empty() ? reason : absl::StrCat("access policy ", policy, ": ", reason));
    out.not_enforced.push_back({policy, std::move(reason)});
  };
  std::map<std::string, const Workload*> by_uid;
  for (const auto& w : bundle.workloads()) by_uid[w.uid()] = &w;

  // --- services -------------------------------------------------------------------------------
  std::map<std::pair<std::string, std::string>, const Service*> services;
  for (const auto& s : bundle.services()) services[{s.namespace_(), s.name()}] = &s;
  std::vector<const TrafficRoute*> routes;
  for (const auto& r : bundle.traffic_routes()) routes.push_back(&r);
  std::sort(routes.begin(), routes.end(), [](const TrafficRoute* a, const TrafficRoute* b) {
    return std::tie(a->namespace_(), a->name()) < std::tie(b->namespace_(), b->name());
  });
  const uint32_t max_slots =
      std::min<uint32_t>(std::max<uint32_t>(limits.max_slots_per_service, 1), SHUNT_LB_MAX_SLOTS);
  std::set<std::string> live_services;
  uint64_t slots_used = 0;
  for (const auto& [name, svc] : services) {
    for (const auto& sp : svc->ports()) {
      if (!IsTcp(sp) || sp.port() == 0 || sp.port() > 65535) continue;
      const std::string id_name = absl::StrCat(name.first, "/", name.second, ":", sp.port());
      std::vector<Group> groups = GroupsFor(*svc, sp, routes, services, by_uid);
      for (const auto& vip : svc->vips()) {
        auto vkey = ParseIpKey(vip);
        if (!vkey.ok()) continue;
        LbKey key{*vkey, static_cast<uint16_t>(sp.port())};
        std::vector<LbBackend> table = SlotTable(groups, IsV4(*vkey), max_slots);
        if (table.empty()) continue;  // no ready endpoint of this family: normal path
        if (out.service_ids.size() >= limits.services) {
          out.overflow[kLbMapServices]++;
          continue;
        }
        if (slots_used + table.size() > limits.slots) {
          out.overflow[kLbMapSlots] += table.size();
          continue;
        }
        if (auto r = ids.recovered_service_ids.find(key); r != ids.recovered_service_ids.end()) {
          ids.service_ids.Adopt(id_name, r->second);
        }
        auto id = ids.service_ids.IdFor(id_name);
        if (!id) continue;  // 4 billion live service ports: impossible
        live_services.insert(id_name);
        out.service_names[*id] = absl::StrCat(name.first, "/", name.second);
        out.service_ids[key] = *id;
        slots_used += table.size();
        out.slots[key] = std::move(table);
      }
    }
  }
  ids.service_ids.Retain(live_services);
  ids.recovered_service_ids.clear();
  for (const char* m : {kLbMapServices, kLbMapSlots}) {
    if (auto it = out.overflow.find(m); it != out.overflow.end() && it->second > 0) {
      // Counted, not a failed pass (overflow): reported as not enforced.
      // No count in the reason: it would be a new report each time it moves.
      out.not_enforced.push_back(
          {"", absl::StrCat("the ", m, " map is full: the service ports that do not fit are ",
                            "not balanced at connect() (shunt_socklb_map_overflow_entries)")});
    }
  }

  // --- access policies ------------------------------------------------------------------------
  // Deny policies first, so that they get bits before allow policies when over the cap.
  std::vector<const AccessPolicy*> policies;
  for (const auto& p : bundle.access_policies()) policies.push_back(&p);
  // Version skew (docs/kernel-policy.md): a policy this agent cannot fully read -- an action it
  // does not know, or fields it does not know anywhere in it (a newer selector form would read
  // as "every pod") -- fails closed: an unknown action is a DENY, an ALLOW with unknown fields
  // admits none of its sources (its targets stay allow-listed), a DENY with unknown fields denies
  // what its known fields select. Reported.
  auto unknown_action = [](const AccessPolicy* p) {
    return p->action() != AccessPolicy::ALLOW && p->action() != AccessPolicy::DENY;
  };
  auto is_deny = [&](const AccessPolicy* p) {
    return p->action() == AccessPolicy::DENY || unknown_action(p);
  };
  std::sort(policies.begin(), policies.end(), [&](const AccessPolicy* a, const AccessPolicy* b) {
    return std::make_tuple(!is_deny(a), a->namespace_(), a->name()) <
           std::make_tuple(!is_deny(b), b->namespace_(), b->name());
  });
  // Free the bits of policies removed, or no longer matching a source here, first.
  {
    std::set<std::string> live_policies;
    for (const AccessPolicy* p : policies) live_policies.insert(p->namespace_() + "/" + p->name());
    ids.policy_bits.Retain(live_policies);
  }
  std::set<std::string> live_policies_with_bits;
  std::vector<std::string> shared_allow;

  // Every meshed pod of this node, also those whose cgroup does not exist yet: their masks are
  // pending (by uid), copied to their cgroup the moment kubelet creates it.
  std::vector<const Workload*> local_sources;
  for (const auto& w : bundle.workloads()) {
    if (w.node() == node && w.meshed()) local_sources.push_back(&w);
  }
  uint64_t over_cap = 0;
  std::vector<NotEnforcedPart> over_cap_parts;
  for (const AccessPolicy* p : policies) {
    const std::string pname = p->namespace_() + "/" + p->name();
    const bool unknown_fields = HasUnknownFields(*p);
    if (unknown_action(p) || unknown_fields) {
      ++out.not_understood;
      not_enforced(pname,
                   absl::StrCat(unknown_action(p)
                                    ? absl::StrCat("action ", static_cast<int>(p->action()),
                                                   " is unknown to this agent")
                                    : "has fields unknown to this agent",
                                " (a newer controller?): enforced closed, ",
                                is_deny(p) ? "as a DENY of what its known fields select"
                                           : "its targets admit none of its sources"));
    }
    // L7 rules (methods, paths) are decided per request by the proxy where the connection
    // arrives: at a meshed target captured with --capture (its L7 ports also from this node's
    // meshed pods). Elsewhere the policy acts on whole connections, and says so.
    const bool l7 = p->l7_size() > 0;
    bool l7_unproxied_target = false;
    if (l7) {
      for (const auto& w : bundle.workloads()) {
        if (w.namespace_() == p->namespace_() && LabelsMatch(p->target(), w) && !w.host_network() &&
            (!limits.l7_proxy || !w.meshed() || limits.uncaptured.count(w.uid()))) {
          l7_unproxied_target = true;
        }
      }
    }
    if (l7_unproxied_target) {
      const std::string where = limits.l7_proxy
                                    ? "at targets outside the mesh or not captured (yet)"
                                    : "without the agent's proxy (--capture)";
      not_enforced(pname, is_deny(p) ? absl::StrCat("L7 rules (methods, paths) ", where,
                                                    ": enforced as a DENY of whole connections "
                                                    "on its ports (stricter than written)")
                                     : absl::StrCat("L7 rules (methods, paths) ", where,
                                                    ": enforced on whole connections (its "
                                                    "sources may make any request)"));
    }
    shunt_ap_ports ports{};
    bool bad = false;
    if (p->ports_size() > SHUNT_AP_MAX_PORT_RANGES) {
      not_enforced(pname, absl::StrCat(p->ports_size(), " port ranges; at most ",
                                       SHUNT_AP_MAX_PORT_RANGES, " are supported (not enforced)"));
      continue;
    }
    for (const auto& r : p->ports()) {
      const uint32_t to = r.to() ? r.to() : r.from();
      if (r.from() == 0 || r.from() > 65535 || to > 65535 || to < r.from()) {
        not_enforced(pname, "bad port range (not enforced)");
        bad = true;
        break;
      }
      ports.from[ports.count] = static_cast<uint16_t>(r.from());
      ports.to[ports.count] = static_cast<uint16_t>(to);
      ports.count++;
    }
    std::vector<std::vector<std::pair<IpKey, int>>> blocks(p->from_size());
    for (int i = 0; i < p->from_size() && !bad; ++i) {
      for (const auto& c : p->from(i).ip_blocks()) {
        auto cidr = ParseCidr(c);
        if (!cidr.ok()) {
          not_enforced(pname, absl::StrCat(cidr.status().message(), " (not enforced)"));
          bad = true;
          break;
        }
        blocks[i].push_back(*cidr);
      }
    }
    if (bad) continue;
    // Which of this node's sources it matches, and the IPs it targets (anywhere).
    std::vector<const Workload*> sources;
    for (const Workload* w : local_sources) {
      if (unknown_fields && !is_deny(p)) break;  // an ALLOW not understood admits no one
      bool match = p->from().empty();
      for (int i = 0; i < p->from_size() && !match; ++i) {
        match = SourceMatches(p->from(i), *w, p->namespace_(), blocks[i]);
      }
      if (match) sources.push_back(w);
    }
    std::vector<IpKey> targets;
    for (const auto& w : bundle.workloads()) {
      if (w.namespace_() != p->namespace_() || !LabelsMatch(p->target(), w)) continue;
      // Its IPs are its node's: targeting them would block or open every host service.
      if (w.host_network()) continue;
      // The proxy at the target decides each request: a DENY of some requests refuses no
      // connection at connect().
      if (l7 && is_deny(p) && limits.l7_proxy && w.meshed() && !limits.uncaptured.count(w.uid())) {
        continue;
      }
      for (const auto& ip : w.ips()) {
        auto key = ParseIpKey(ip);
        if (key.ok()) targets.push_back(*key);
      }
    }
    // No effect on this node: nothing it targets, or a DENY none of its sources matches.
    if (targets.empty() || (sources.empty() && is_deny(p))) continue;
    std::optional<uint32_t> bit;
    if (!sources.empty()) {
      bit = ids.policy_bits.IdFor(pname);
      // At the cap a DENY takes the bit of the last ALLOW holding one (kept from an earlier
      // pass): that ALLOW then fails closed rather than this DENY open.
      for (auto it = policies.rbegin(); !bit && is_deny(p) && it != policies.rend(); ++it) {
        if (is_deny(*it)) break;
        if (ids.policy_bits.Release((*it)->namespace_() + "/" + (*it)->name())) {
          bit = ids.policy_bits.IdFor(pname);
        }
      }
      if (bit) live_policies_with_bits.insert(pname);
    }
    if (!bit && is_deny(p)) {
      ++over_cap;  // fails open: what it denies is let through
      over_cap_parts.push_back(
          {pname, absl::StrCat("over the cap of ", kSharedAllowBit,
                               " access policies matching sources of this node: not enforced "
                               "(what it denies is let through)")});
      continue;
    }
    if (!bit) {
      // An ALLOW without a source here, or over the cap (fails closed: its targets stay
      // allow-listed, but its sources are refused).
      if (!sources.empty()) {
        ++over_cap;
        over_cap_parts.push_back(
            {pname, absl::StrCat("over the cap of ", kSharedAllowBit,
                                 " access policies matching sources of this node: enforced "
                                 "closed (the sources it admits are refused)")});
      }
      shared_allow.push_back(pname);
      for (const auto& key : targets) out.policy_dests[key].allow |= 1ull << kSharedAllowBit;
      continue;
    }
    const uint64_t mask = 1ull << *bit;
    out.policy_names[*bit] = pname;
    out.policy_ports[*bit] = ports;
    for (const Workload* w : sources) {
      out.pending_sources[w->uid()] |= mask;
      if (auto cg = pod_cgroup_ids.find(w->uid()); cg != pod_cgroup_ids.end()) {
        out.policy_sources[cg->second] |= mask;
      }
    }
    for (const auto& key : targets) {
      auto& d = out.policy_dests[key];
      (is_deny(p) ? d.deny : d.allow) |= mask;
    }
  }
  ids.policy_bits.Retain(live_policies_with_bits);
  if (!shared_allow.empty()) {
    out.policy_names[kSharedAllowBit] =
        shared_allow.size() == 1 ? shared_allow[0]
                                 : absl::StrCat(shared_allow[0], " (+", shared_allow.size() - 1,
                                                " allow policies)");
  }
  if (over_cap > 0) {
    out.overflow[kLbMapPolicies] = over_cap;
    out.errors.push_back(absl::StrCat(
        over_cap, " access policies matching sources of this node are over the cap of ",
        kSharedAllowBit, ": DENY ones are not enforced (their traffic is let through), ALLOW "
        "ones refuse their sources (their targets stay allow-listed)"));
    out.not_enforced.insert(out.not_enforced.end(), over_cap_parts.begin(),
                            over_cap_parts.end());
  }
  // Capacities: the first entries (in key order) fit; the rest take the normal path, counted.
  // The policies whose bits the dropped entries held are not enforced there.
  uint64_t dropped_bits = 0;
  auto trim = [&out](auto& m, uint32_t cap, const char* name, auto bits_of) {
    uint64_t n = 0, bits = 0;
    while (m.size() > cap) {
      bits |= bits_of(std::prev(m.end())->second);
      m.erase(std::prev(m.end()));
      ++n;
    }
    if (n > 0) {
      out.overflow[name] += n;
      const std::string reason =
          absl::StrCat("the ", name, " map is full: entries not written (their pods' ",
                       "connects are decided without them; shunt_socklb_map_overflow_entries)");
      out.not_enforced.push_back({"", reason});
    }
    return bits;
  };
  auto mask = [](uint64_t m) { return m; };
  dropped_bits |= trim(out.policy_sources, limits.policy_sources, kLbMapPolicySources, mask);
  dropped_bits |= trim(out.pending_sources, limits.pending_sources, kLbMapPolicyPending, mask);
  dropped_bits |= trim(out.policy_dests, limits.policy_dests, kLbMapPolicyDests,
                       [](const shunt_ap_dst& d) { return d.deny | d.allow; });
  for (uint32_t bit = 0; bit < SHUNT_AP_MAX_POLICIES; ++bit) {
    if (!(dropped_bits & (1ull << bit))) continue;
    const std::vector<std::string> names =
        bit == kSharedAllowBit ? shared_allow
                               : std::vector<std::string>{out.policy_names.count(bit)
                                                              ? out.policy_names[bit]
                                                              : std::string()};
    for (const auto& n : names) {
      if (!n.empty()) {
        out.not_enforced.push_back(
            {n, "a policy map of this node is full: not enforced for some of its pods"});
      }
    }
  }
  std::sort(out.not_enforced.begin(), out.not_enforced.end());
  out.not_enforced.erase(std::unique(out.not_enforced.begin(), out.not_enforced.end()),
                         out.not_enforced.end());
  return out;
}

namespace {
template <typename T>
std::string Raw(const T& v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof(v));
}
}  // namespace

EncodedServicePolicy EncodeServicePolicy(const DesiredServicePolicy& d) {
  std::map<SockLbMap, std::map<std::string, std::string>> out;
  auto& svcs = out[SockLbMap::kServices];
  auto& slots = out[SockLbMap::kSlots];
  for (const auto& [key, id] : d.service_ids) {
    shunt_svc_key k{};
    std::memcpy(k.addr, key.vip.addr, sizeof(k.addr));
    k.port = key.port;
    auto it = d.slots.find(key);
    const uint32_t n = it == d.slots.end() ? 0 : static_cast<uint32_t>(it->second.size());
    svcs[Raw(k)] = Raw(shunt_svc{n, id});
    for (uint32_t i = 0; i < n; ++i) {
      shunt_slot_key sk{};
      std::memcpy(sk.addr, key.vip.addr, sizeof(sk.addr));
      sk.port = key.port;
      sk.slot = static_cast<uint16_t>(i);
      shunt_backend be{};
      std::memcpy(be.addr, it->second[i].ip.addr, sizeof(be.addr));
      be.port = it->second[i].port;
      slots[Raw(sk)] = Raw(be);
    }
  }
  auto& src = out[SockLbMap::kPolicySources];
  for (const auto& [cg, mask] : d.policy_sources) {
    if (mask) src[Raw(cg)] = Raw(mask);
  }
  auto& pend = out[SockLbMap::kPolicyPending];
  for (const auto& [uid, mask] : d.pending_sources) {
    auto key = PodUidKey(uid);
    if (mask && key) pend[Raw(*key)] = Raw(mask);
  }
  auto& dst = out[SockLbMap::kPolicyDests];
  for (const auto& [ip, v] : d.policy_dests) dst[Raw(ip.addr)] = Raw(v);
  auto& ports = out[SockLbMap::kPolicyPorts];
  for (uint32_t i = 0; i < SHUNT_AP_MAX_POLICIES; ++i) ports[Raw(i)] = Raw(d.policy_ports[i]);
  return out;
}

namespace {

// Pending sources (by uid) are sources whose cgroup is to come: the stages treat them as sources,
// under keys no cgroup id has (bit 63 set; kernfs ids are far below), numbered in `uids`.
constexpr uint64_t kPendingKey = 1ull << 63;

// Every pending source key (uid key bytes) of `maps`, sorted and unique.
std::vector<std::string> PendingKeys(std::initializer_list<const EncodedServicePolicy*> maps) {
  std::set<std::string> keys;
  for (const EncodedServicePolicy* e : maps) {
    auto it = e->find(SockLbMap::kPolicyPending);
    if (it == e->end()) continue;
    for (const auto& [k, v] : it->second) keys.insert(k);
  }
  return {keys.begin(), keys.end()};
}

PolicyMaps DecodePolicyMaps(EncodedServicePolicy& e, const std::vector<std::string>& uids) {
  PolicyMaps m;
  for (const auto& [k, v] : e[SockLbMap::kPolicySources]) {
    uint64_t cg, mask;
    if (k.size() != sizeof(cg) || v.size() != sizeof(mask)) continue;
    std::memcpy(&cg, k.data(), sizeof(cg));
    std::memcpy(&mask, v.data(), sizeof(mask));
    if (cg & kPendingKey) continue;  // no cgroup has such an id
    m.sources[cg] = mask;
  }
  for (const auto& [k, v] : e[SockLbMap::kPolicyPending]) {
    uint64_t mask;
    if (v.size() != sizeof(mask)) continue;
    std::memcpy(&mask, v.data(), sizeof(mask));
    auto at = std::lower_bound(uids.begin(), uids.end(), k);
    if (at != uids.end() && *at == k) m.sources[kPendingKey | (at - uids.begin())] = mask;
  }
  for (const auto& [k, v] : e[SockLbMap::kPolicyDests]) {
    shunt_ap_dst d;
    if (k.size() != sizeof(IpKey::addr) || v.size() != sizeof(d)) continue;
    std::memcpy(&d, v.data(), sizeof(d));
    m.dests[k] = d;
  }
  for (const auto& [k, v] : e[SockLbMap::kPolicyPorts]) {
    uint32_t bit;
    if (k.size() != sizeof(bit) || v.size() != sizeof(shunt_ap_ports)) continue;
    std::memcpy(&bit, k.data(), sizeof(bit));
    if (bit < SHUNT_AP_MAX_POLICIES) std::memcpy(&m.ports[bit], v.data(), v.size());
  }
  return m;
}

EncodedServicePolicy EncodePolicyMaps(const PolicyMaps& m, const std::vector<std::string>& uids) {
  EncodedServicePolicy out;
  out[SockLbMap::kPolicySources];
  out[SockLbMap::kPolicyPending];
  for (const auto& [cg, mask] : m.sources) {
    if (!(cg & kPendingKey)) {
      out[SockLbMap::kPolicySources][Raw(cg)] = Raw(mask);
    } else if (const uint64_t i = cg & ~kPendingKey; i < uids.size()) {
      out[SockLbMap::kPolicyPending][uids[i]] = Raw(mask);
    }
  }
  for (const auto& [ip, d] : m.dests) out[SockLbMap::kPolicyDests][ip] = Raw(d);
  for (uint32_t i = 0; i < SHUNT_AP_MAX_POLICIES; ++i) {
    out[SockLbMap::kPolicyPorts][Raw(i)] = Raw(m.ports[i]);
  }
  return out;
}

}  // namespace

absl::StatusOr<EncodedServicePolicy> ListServicePolicy(const ServicePolicyWriter& writer) {
  EncodedServicePolicy out;
  for (const auto& [map, entries] : EncodeServicePolicy(DesiredServicePolicy{})) {
    ASSIGN_OR_RETURN(out[map], writer.List(map));
  }
  return out;
}

namespace {

std::string Normalize(std::string_view path, bool strip_params) {
  // Every escape decoded, "%2F" and "\" included: what some server might take for a separator
  // is one here, so that "/admin" cannot be reached as "/%61dmin", "/a%2F../admin" or "//admin".
  std::string decoded;
  decoded.reserve(path.size());
  auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
  };
  for (size_t i = 0; i < path.size(); ++i) {
    char c = path[i];
    if (c == '%' && i + 2 < path.size() && hex(path[i + 1]) >= 0 && hex(path[i + 2]) >= 0) {
      c = static_cast<char>(hex(path[i + 1]) * 16 + hex(path[i + 2]));
      i += 2;
    }
    decoded += c == '\\' ? '/' : c;
  }
  // Segments: empty ones merged, "." dropped, ".." takes the one before (never above the root).
  std::vector<std::string_view> segments;
  const bool absolute = !decoded.empty() && decoded.front() == '/';
  bool trailing_slash = false;
  std::string_view rest = decoded;
  while (!rest.empty()) {
    const size_t slash = rest.find('/');
    std::string_view seg = rest.substr(0, slash);
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
    if (strip_params) seg = seg.substr(0, seg.find(';'));
    trailing_slash = slash != std::string_view::npos && rest.empty();
    if (seg.empty() || seg == ".") {
      trailing_slash = trailing_slash || (seg == "." && rest.empty());
      continue;
    }
    if (seg == "..") {
      if (!segments.empty()) segments.pop_back();
      trailing_slash = rest.empty();
      continue;
    }
    segments.push_back(seg);
  }
  std::string out = absolute || segments.empty() ? "/" : "";
  for (size_t i = 0; i < segments.size(); ++i) {
    if (i > 0) out += '/';
    out.append(segments[i]);
  }
  if (trailing_slash && !segments.empty()) out += '/';
  return out;
}

}  // namespace

std::string NormalizePathForPolicy(std::string_view path) { return Normalize(path, false); }

std::vector<std::string> PathViewsForPolicy(std::string_view path) {
  std::vector<std::string> views = {Normalize(path, false), Normalize(path, true),
                                    std::string(path)};
  std::sort(views.begin(), views.end());
  views.erase(std::unique(views.begin(), views.end()), views.end());
  return views;
}

namespace {

enum class View { kOpaque, kHttpArrival, kRequest };

// A DENY's reading of a path or of a rule's: letters folded, trailing "/"s cut ("/" stays).
std::string Loosened(std::string_view path) {
  std::string out = absl::AsciiStrToLower(std::string(path));
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

// `loose`: the path is Loosened, and so is each rule path (a prefix's folded only).
bool L7Matches(const AccessPolicy& p, std::string_view method, std::string_view path,
               bool loose = false) {
  for (const auto& r : p.l7()) {
    bool method_ok = r.methods().empty();
    for (const auto& m : r.methods()) method_ok |= m == method;
    bool path_ok = r.paths().empty();
    for (const auto& rule : r.paths()) {
      std::string folded;
      std::string_view want = rule;
      if (loose) {
        folded = !rule.empty() && rule.back() == '*' ? absl::AsciiStrToLower(rule) : Loosened(rule);
        want = folded;
      }
      if (!want.empty() && want.back() == '*') {
        path_ok |= path.compare(0, want.size() - 1, want, 0, want.size() - 1) == 0;
      } else {
        path_ok |= path == want;
      }
    }
    if (method_ok && path_ok) return true;
  }
  return false;
}

// What the relay looks up per connection and per request, from a snapshot's bundle once (not a
// scan of every workload, with every IP parsed, per request).
struct CostPlacement {
  const shunt::v1::ApiCostPolicy* policy = nullptr;
  std::string problem;  // it cannot be in force anywhere: why ("" none)
  std::vector<const shunt::v1::Workload*> pods;  // its Service's endpoints' pods
};

struct ArrivalIndex {
  absl::flat_hash_map<std::string, const Workload*> by_uid;  // the last of a uid, as a scan finds
  absl::flat_hash_map<std::array<uint32_t, 4>, const Workload*> by_ip;  // v4-mapped: the first
  // "<uid>/<port>": the appProtocol the Services say of it ("" where two say different things).
  absl::flat_hash_map<std::string, std::string> app_protocol;
  // "<uid>/<port>": the Services with that pod and port among their endpoints, as (namespace,
  // name), sorted, without repeats.
  absl::flat_hash_map<std::string, std::vector<std::pair<std::string, std::string>>> services;
  // Each `from` clause's ipBlocks, parsed.
  absl::flat_hash_map<const void*, std::vector<std::pair<IpKey, int>>> blocks;
  // The access policies with fields this agent does not know (read through reflection: once).
  absl::flat_hash_set<const void*> not_understood;
  // "<namespace>/<service>": its ApiCostPolicy, compiled.
  absl::flat_hash_map<std::string, std::shared_ptr<const cost::CostPolicy>> costs;
  // Each ApiCostPolicy: what keeps it out of force everywhere, and its Service's pods.
  std::vector<CostPlacement> cost_policies;
  // A Service address and port (v4-mapped, then the port): that Service, the first by
  // namespace and name where two claim one.
  absl::flat_hash_map<std::array<uint32_t, 5>, std::pair<std::string, std::string>> by_vip;
};

// The ApiCostPolicies of `bundle` by "<namespace>/<service>": of several for one Service, the
// first by name (the controller reports the others).
std::map<std::string, const shunt::v1::ApiCostPolicy*> PricedServices(
    const shunt::v1::PolicyBundle& bundle) {
  std::map<std::string, const shunt::v1::ApiCostPolicy*> out;
  for (const auto& p : bundle.api_cost_policies()) {
    const shunt::v1::ApiCostPolicy*& slot = out[absl::StrCat(p.namespace_(), "/", p.service())];
    if (slot == nullptr || p.name() < slot->name()) slot = &p;
  }
  return out;
}

std::array<uint32_t, 4> IpBytes(const IpKey& k) { return {k.addr[0], k.addr[1], k.addr[2], k.addr[3]}; }

const ArrivalIndex& IndexOf(const PolicySnapshot& snapshot) {
  absl::MutexLock l(&snapshot.derived.mu);
  if (snapshot.derived.value == nullptr) {
    auto x = std::make_shared<ArrivalIndex>();
    const auto& bundle = snapshot.bundle;
    for (const auto& w : bundle.workloads()) {
      x->by_uid[w.uid()] = &w;
      // A hostNetwork pod's IP is its node's: it does not say which pod (only ipBlocks match).
      if (w.host_network()) continue;
      for (const auto& ip : w.ips()) {
        if (auto key = ParseIpKey(ip); key.ok()) x->by_ip.emplace(IpBytes(*key), &w);
      }
    }
    absl::flat_hash_set<std::string> conflicting;
    for (const auto& s : bundle.services()) {
      for (const auto& e : s.endpoints()) {
        for (const auto& ep : e.ports()) {
          if (!e.workload_uid().empty()) {
            auto& v = x->services[absl::StrCat(e.workload_uid(), "/", ep.port())];
            std::pair<std::string, std::string> sn{s.namespace_(), s.name()};
            if (std::find(v.begin(), v.end(), sn) == v.end()) {
              v.insert(std::upper_bound(v.begin(), v.end(), sn), std::move(sn));
            }
          }
          for (const auto& sp : s.ports()) {
            if (sp.name() != ep.name() || sp.app_protocol().empty()) continue;
            // Two Services that say different things of one port: neither is believed (sniffed).
            const std::string key = absl::StrCat(e.workload_uid(), "/", ep.port());
            std::string app = absl::AsciiStrToLower(sp.app_protocol());
            auto [it, fresh] = x->app_protocol.emplace(key, app);
            if (!fresh && it->second != app) conflicting.insert(key);
          }
        }
      }
    }
    for (const std::string& key : conflicting) x->app_protocol[key] = "";
    for (const auto& s : bundle.services()) {
      for (const auto& vip : s.vips()) {
        auto key = ParseIpKey(vip);
        if (!key.ok()) continue;
        for (const auto& sp : s.ports()) {
          std::array<uint32_t, 5> k = {key->addr[0], key->addr[1], key->addr[2], key->addr[3],
                                       sp.port()};
          std::pair<std::string, std::string> sn{s.namespace_(), s.name()};
          auto [it, fresh] = x->by_vip.emplace(k, sn);
          if (!fresh && sn < it->second) it->second = std::move(sn);
        }
      }
    }
    for (const auto& p : bundle.access_policies()) {
      if (HasUnknownFields(p)) x->not_understood.insert(&p);
      for (const auto& f : p.from()) {
        auto& b = x->blocks[&f];
        for (const auto& c : f.ip_blocks()) {
          if (auto cidr = ParseCidr(c); cidr.ok()) b.push_back(*cidr);
        }
      }
    }
    const auto priced = PricedServices(bundle);
    absl::flat_hash_map<std::string, const shunt::v1::Service*> service_by_name;
    for (const auto& svc : bundle.services()) {
      service_by_name.emplace(absl::StrCat(svc.namespace_(), "/", svc.name()), &svc);
    }
    for (const auto& [key, p] : priced) {
      auto compiled = cost::CostPolicy::Compile(*p);
      if (compiled.ok()) {
        x->costs[key] = std::make_shared<const cost::CostPolicy>(std::move(*compiled));
      }
    }
    for (const auto& p : bundle.api_cost_policies()) {
      CostPlacement c{.policy = &p};
      const std::string key = absl::StrCat(p.namespace_(), "/", p.service());
      const auto first = priced.find(key);
      if (HasUnknownFields(p)) {
        c.problem = "has fields this agent does not know (a newer controller's): not applied";
      } else if (first != priced.end() && first->second != &p) {
        c.problem = absl::StrCat("ApiCostPolicy ", first->second->namespace_(), "/",
                                 first->second->name(),
                                 " prices the same Service (the first by name): not applied");
      } else if (auto compiled = cost::CostPolicy::Compile(p); !compiled.ok()) {
        c.problem = absl::StrCat("does not compile on this agent: ", compiled.status().message());
      }
      if (auto svc = service_by_name.find(key); svc != service_by_name.end()) {
        for (const auto& e : svc->second->endpoints()) {
          auto w = x->by_uid.find(e.workload_uid());
          if (w != x->by_uid.end() &&
              std::find(c.pods.begin(), c.pods.end(), w->second) == c.pods.end()) {
            c.pods.push_back(w->second);
          }
        }
      }
      x->cost_policies.push_back(std::move(c));
    }
    snapshot.derived.value = std::move(x);
  }
  // Kept alive by the snapshot, which the caller holds.
  return *static_cast<const ArrivalIndex*>(snapshot.derived.value.get());
}

ArrivalDecision Decide(const PolicySnapshot& snapshot, const std::string& dest_uid,
                       const IpKey& source, uint16_t port, View view, std::string_view method,
                       std::string_view raw_path) {
  ArrivalDecision out;
  const auto& bundle = snapshot.bundle;
  const ArrivalIndex& index = IndexOf(snapshot);
  const Workload* dest = nullptr;
  const Workload* src = nullptr;
  if (auto it = index.by_uid.find(dest_uid); it != index.by_uid.end()) dest = it->second;
  if (auto it = index.by_ip.find(IpBytes(source)); it != index.by_ip.end()) src = it->second;
  if (!dest) return out;  // not in policy (any more): nothing targets it
  out.destination_pod = dest->name();
  Workload unknown;  // a source no workload has: its address only
  if (!src) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (source.addr[0] == 0 && source.addr[1] == 0 && source.addr[2] == htonl(0xffff)) {
      inet_ntop(AF_INET, &source.addr[3], buf, sizeof(buf));
    } else {
      inet_ntop(AF_INET6, source.addr, buf, sizeof(buf));
    }
    unknown.add_ips(buf);
    src = &unknown;
  } else {
    out.source_namespace = src->namespace_();
    out.source_workload = src->owner().empty() ? src->name() : src->owner();
    out.source_pod = src->name();
  }
  // A priced Service on this port: every request is read (its cost).
  if (!index.costs.empty()) {
    if (auto it = index.services.find(absl::StrCat(dest_uid, "/", port));
        it != index.services.end()) {
      for (const auto& [ns, name] : it->second) {
        out.l7 |= index.costs.contains(absl::StrCat(ns, "/", name));
      }
    }
  }
  // Every reading of the path a server may make: a DENY matches when one of them does, an ALLOW
  // admits only when all of them do.
  const std::vector<std::string> paths =
      view == View::kRequest ? PathViewsForPolicy(raw_path) : std::vector<std::string>{};
  bool any_allow = false;
  std::string first_allow, allowed_by;
  for (const auto& p : bundle.access_policies()) {
    if (p.namespace_() != dest->namespace_() || !LabelsMatch(p.target(), *dest)) continue;
    bool port_ok = p.ports().empty();
    for (const auto& r : p.ports()) {
      const uint32_t to = r.to() ? r.to() : r.from();
      port_ok |= port >= r.from() && port <= to;
    }
    if (!port_ok) continue;
    const bool has_l7 = p.l7_size() > 0;
    out.l7 |= has_l7;
    const bool unknown_action = p.action() != AccessPolicy::ALLOW && p.action() != AccessPolicy::DENY;
    const bool deny = p.action() == AccessPolicy::DENY || unknown_action;
    const bool not_understood = index.not_understood.contains(&p);
    bool match = p.from().empty();
    for (int i = 0; i < p.from_size() && !match; ++i) {
      static const std::vector<std::pair<IpKey, int>> kNone;
      auto b = index.blocks.find(&p.from(i));
      match = SourceMatches(p.from(i), *src, p.namespace_(), b == index.blocks.end() ? kNone : b->second);
    }
    // L7 rules: on opaque bytes they cannot be checked, and fail closed (a DENY refuses the whole
    // connection, an ALLOW admits none of it, as Istio does); on HTTP they are decided per
    // request, and at the connection's arrival only its source counts.
    bool l7_ok = true;
    if (has_l7) {
      if (view == View::kOpaque) {
        l7_ok = deny;
      } else if (view == View::kHttpArrival) {
        l7_ok = !deny;
      } else if (deny) {
        l7_ok = std::any_of(paths.begin(), paths.end(), [&](const std::string& v) {
          return L7Matches(p, method, v) || L7Matches(p, method, Loosened(v), /*loose=*/true);
        });
      } else {
        l7_ok = std::all_of(paths.begin(), paths.end(),
                            [&](const std::string& v) { return L7Matches(p, method, v); });
      }
    }
    const std::string name = p.namespace_() + "/" + p.name();
    if (deny && match && l7_ok) {
      out.allowed = false;
      out.policy = name;
      return out;
    }
    if (!deny) {
      if (first_allow.empty()) first_allow = name;
      any_allow = true;
      if (match && l7_ok && !not_understood && allowed_by.empty()) allowed_by = name;
    }
  }
  // No DENY matched. ALLOW policies target the pod on that port: one must admit the source.
  if (any_allow && allowed_by.empty()) {
    out.allowed = false;
    out.policy = first_allow;
  } else {
    out.policy = allowed_by;
  }
  return out;
}

}  // namespace

std::string AppProtocolOf(const PolicySnapshot& snapshot, const std::string& uid, uint16_t port) {
  const ArrivalIndex& index = IndexOf(snapshot);
  auto it = index.app_protocol.find(absl::StrCat(uid, "/", port));
  return it == index.app_protocol.end() ? "" : it->second;
}

std::vector<std::pair<std::string, std::string>> ServicesOf(const PolicySnapshot& snapshot,
                                                            const std::string& uid,
                                                            uint16_t port) {
  const ArrivalIndex& index = IndexOf(snapshot);
  auto it = index.services.find(absl::StrCat(uid, "/", port));
  return it == index.services.end() ? std::vector<std::pair<std::string, std::string>>{}
                                    : it->second;
}

std::vector<NotEnforcedPart> CostPoliciesNotEnforced(const PolicySnapshot& snapshot,
                                                     std::string_view node, bool capture,
                                                     const CapturedFn& captured) {
  std::vector<NotEnforcedPart> out;
  for (const CostPlacement& c : IndexOf(snapshot).cost_policies) {
    NotEnforcedPart part{.policy = absl::StrCat(c.policy->namespace_(), "/", c.policy->name()),
                         .reason = c.problem,
                         .cost = true};
    if (part.reason.empty()) {
      std::vector<std::string> missed;
      for (const Workload* w : c.pods) {
        if (w->node() != node || !w->meshed() || w->host_network()) continue;
        if (!capture || !captured || !captured(w->uid(), L7PortsOf(snapshot.bundle, *w))) {
          missed.push_back(w->name());
        }
      }
      if (!missed.empty()) {
        part.reason =
            capture ? absl::StrCat("not captured yet (calls not read, nobody charged): pod ",
                                   absl::StrJoin(missed, ", "))
                    : "the agent runs without --capture: calls to the Service's pods on this "
                      "node are not read, nobody is charged for them";
      }
    }
    if (!part.reason.empty()) out.push_back(std::move(part));
  }
  std::sort(out.begin(), out.end());
  return out;
}

const Workload* WorkloadByIp(const PolicySnapshot& snapshot, const IpKey& ip) {
  const ArrivalIndex& index = IndexOf(snapshot);
  auto it = index.by_ip.find(IpBytes(ip));
  return it == index.by_ip.end() ? nullptr : it->second;
}

std::pair<std::string, std::string> ServiceAt(const PolicySnapshot& snapshot, const IpKey& vip,
                                              uint16_t port) {
  const ArrivalIndex& index = IndexOf(snapshot);
  auto it = index.by_vip.find(
      std::array<uint32_t, 5>{vip.addr[0], vip.addr[1], vip.addr[2], vip.addr[3], port});
  return it == index.by_vip.end() ? std::pair<std::string, std::string>{} : it->second;
}

const Workload* WorkloadOf(const PolicySnapshot& snapshot, const std::string& uid) {
  const ArrivalIndex& index = IndexOf(snapshot);
  auto it = index.by_uid.find(uid);
  return it == index.by_uid.end() ? nullptr : it->second;
}

std::shared_ptr<const cost::CostPolicy> CostPolicyOf(const PolicySnapshot& snapshot,
                                                     const std::string& ns,
                                                     const std::string& name) {
  const ArrivalIndex& index = IndexOf(snapshot);
  auto it = index.costs.find(absl::StrCat(ns, "/", name));
  return it == index.costs.end() ? nullptr : it->second;
}

std::vector<std::string> L7PortsOf(const shunt::v1::PolicyBundle& bundle, const Workload& w) {
  std::set<std::string> ports;
  if (bundle.api_cost_policies_size() > 0) {
    const auto priced = PricedServices(bundle);
    for (const auto& s : bundle.services()) {
      if (s.namespace_() != w.namespace_() ||
          !priced.contains(absl::StrCat(s.namespace_(), "/", s.name()))) {
        continue;
      }
      for (const auto& e : s.endpoints()) {
        if (e.workload_uid() != w.uid()) continue;
        for (const auto& ep : e.ports()) {
          if (ep.port() > 0 && ep.port() <= 65535) ports.insert(absl::StrCat(ep.port()));
        }
      }
    }
  }
  for (const auto& p : bundle.access_policies()) {
    if (p.l7_size() == 0 || p.namespace_() != w.namespace_() || !LabelsMatch(p.target(), w)) {
      continue;
    }
    if (p.ports().empty()) return {"*"};
    for (const auto& r : p.ports()) {
      const uint32_t to = r.to() ? r.to() : r.from();
      if (r.from() == 0 || r.from() > 65535 || to > 65535 || to < r.from()) continue;
      ports.insert(to == r.from() ? absl::StrCat(r.from()) : absl::StrCat(r.from(), "-", to));
    }
  }
  return {ports.begin(), ports.end()};
}

ArrivalDecision DecideArrival(const PolicySnapshot& snapshot, const std::string& dest_uid,
                              const IpKey& source, uint16_t port, ArrivalView view) {
  return Decide(snapshot, dest_uid, source, port,
                view == ArrivalView::kHttp ? View::kHttpArrival : View::kOpaque, "", "");
}

ArrivalDecision DecideRequest(const PolicySnapshot& snapshot, const std::string& dest_uid,
                              const IpKey& source, uint16_t port, std::string_view method,
                              std::string_view path) {
  return Decide(snapshot, dest_uid, source, port, View::kRequest, method, path);
}

absl::Status ApplyServicePolicy(const DesiredServicePolicy& desired, ServicePolicyWriter& writer,
                                const EncodedServicePolicy* known, EncodedServicePolicy* applied) {
  absl::Status first;
  auto note = [&first](absl::Status s) {
    if (!s.ok() && first.ok()) first = std::move(s);
  };
  auto want = EncodeServicePolicy(desired);
  EncodedServicePolicy have;
  for (const auto& [map, entries] : want) {
    if (known) {
      auto it = known->find(map);
      if (it != known->end()) have[map] = it->second;
    } else {
      ASSIGN_OR_RETURN(have[map], writer.List(map));
    }
  }
  auto upserts = [&](SockLbMap map) {
    const auto& h = have[map];
    for (const auto& [k, v] : want[map]) {
      auto it = h.find(k);
      if (it == h.end() || it->second != v) note(writer.Upsert(map, k, v));
    }
  };
  auto deletes = [&](SockLbMap map) {
    const auto& w = want[map];
    for (const auto& [k, v] : have[map]) {
      if (!w.count(k)) note(writer.Delete(map, k));
    }
  };
  // Targets before what points at them.
  upserts(SockLbMap::kSlots);
  // Access policy in stages, each of which decides every connect as the old or the new policy
  // does (policy_stages.h); a failed write ends them (the next pass lists the maps).
  EncodedServicePolicy cur;
  constexpr SockLbMap kAccessMaps[] = {SockLbMap::kPolicyPorts, SockLbMap::kPolicyDests,
                                       SockLbMap::kPolicySources, SockLbMap::kPolicyPending};
  for (SockLbMap m : kAccessMaps) cur[m] = have[m];
  const std::vector<std::string> uids = PendingKeys({&have, &want});
  for (const PolicyMaps& stage :
       PolicyStages(DecodePolicyMaps(have, uids), DecodePolicyMaps(want, uids))) {
    EncodedServicePolicy next = EncodePolicyMaps(stage, uids);
    absl::Status failed;
    for (SockLbMap m : kAccessMaps) {
      for (const auto& [k, v] : next[m]) {
        auto it = cur[m].find(k);
        if ((it == cur[m].end() || it->second != v) && failed.ok()) failed = writer.Upsert(m, k, v);
      }
      for (const auto& [k, v] : cur[m]) {
        if (!next[m].count(k) && failed.ok()) failed = writer.Delete(m, k);
      }
    }
    if (!failed.ok()) {
      note(failed);
      break;
    }
    cur = std::move(next);
  }
  upserts(SockLbMap::kServices);
  deletes(SockLbMap::kServices);
  deletes(SockLbMap::kSlots);
  if (first.ok() && applied) *applied = std::move(want);
  return first;
}

std::map<std::string, std::string> EncodePolicyNames(const std::map<uint32_t, std::string>& names) {
  std::map<std::string, std::string> out;
  for (uint32_t i = 0; i < SHUNT_AP_MAX_POLICIES; ++i) {
    shunt_ap_name n{};
    if (auto it = names.find(i); it != names.end()) {
      std::memcpy(n.name, it->second.data(), std::min(it->second.size(), sizeof(n.name) - 1));
    }
    out[Raw(i)] = Raw(n);
  }
  return out;
}

void RecoverPolicyBits(const std::map<std::string, std::string>& encoded, ServicePolicyIds& ids,
                       std::map<uint32_t, std::string>* known) {
  for (const auto& [k, v] : encoded) {
    uint32_t bit;
    shunt_ap_name n;
    if (k.size() != sizeof(bit) || v.size() != sizeof(n)) continue;
    std::memcpy(&bit, k.data(), sizeof(bit));
    std::memcpy(&n, v.data(), sizeof(n));
    const std::string name(n.name, strnlen(n.name, sizeof(n.name)));
    if (name.empty() || bit >= SHUNT_AP_MAX_POLICIES) continue;
    ids.policy_bits.Adopt(name, bit);  // the shared ALLOW bit is no policy's own: not adopted
    if (known) (*known)[bit] = name;
  }
}

ServicePolicyReconciler::ServicePolicyReconciler(Options options, PolicyStore& store,
                                                 ServicePolicyWriter& writer)
    : options_(std::move(options)),
      store_(store),
      writer_(writer),
      loop_("service policy", store, options_.resync, [this] { return ReconcileOnce(); }) {}

ServicePolicyReconciler::~ServicePolicyReconciler() { Stop(); }

absl::Status ServicePolicyReconciler::Start() {
  {
    absl::MutexLock l(&pass_mu_);
    auto services = writer_.List(SockLbMap::kServices);
    if (services.ok()) {
      for (const auto& [k, v] : *services) {
        if (k.size() != sizeof(shunt_svc_key) || v.size() != sizeof(shunt_svc)) continue;
        shunt_svc_key key;
        shunt_svc svc;
        std::memcpy(&key, k.data(), sizeof(key));
        std::memcpy(&svc, v.data(), sizeof(svc));
        LbKey lk;
        std::memcpy(lk.vip.addr, key.addr, sizeof(lk.vip.addr));
        lk.port = key.port;
        ids_.recovered_service_ids[lk] = svc.service_id;
      }
    }
    // Policies keep their bits too (and the counters of a bit given to another policy since go).
    if (auto names = writer_.List(SockLbMap::kPolicyNames); names.ok()) {
      RecoverPolicyBits(*names, ids_, &known_policies_);
      written_names_ = *names;
    }
  }
  absl::Status first = ReconcileOnce();
  loop_.Start();
  return first;
}

void ServicePolicyReconciler::Stop() { loop_.Stop(); }

absl::Status ServicePolicyReconciler::ReconcileOnce() { return ReconcileOnce(store_.Current()); }

absl::Status ServicePolicyReconciler::ReconcileOnce(PolicySnapshotPtr snapshot, bool* applied_out) {
  absl::MutexLock pass(&pass_mu_);
  if (applied_out) *applied_out = false;
  if (!snapshot) return absl::OkStatus();  // nothing to enforce yet; the maps stay as they are
  // The fast path's hook may bring a snapshot older than the one this loop applied already:
  // never step back (a new DENY would be off until the next pass). Not applied for that one.
  if (applied_ && snapshot->version < applied_version_) return absl::OkStatus();
  auto scan = [this]() -> absl::StatusOr<std::map<std::string, uint64_t>> {
    ASSIGN_OR_RETURN(auto cgroups, FindPodCgroups(options_.cgroup_root));
    std::map<std::string, uint64_t> ids;
    for (const auto& [uid, path] : cgroups) {
      auto id = CgroupId(path);
      if (id.ok()) ids[uid] = *id;
    }
    return ids;
  };
  absl::Status s;
  DesiredServicePolicy desired;
  bool applied_now = false;  // the maps now hold `desired`
  auto cgroup_ids = scan();
  // A pod cgroup created after the scan but before its pending entry was written (a pod new to
  // this pass) got nothing at mkdir: a pass whose end finds more cgroups than its start runs
  // again (bounded).
  for (int round = 0; round < 3; ++round) {
    if (!cgroup_ids.ok()) {
      s = cgroup_ids.status();
      break;
    }
    // A cgroup not seen before may have had its source entry written at mkdir, which the maps
    // as last applied do not show: list them, then scan again. Listed after the scan, an entry
    // written in between (a cgroup newer than the scan) would look stale and be deleted.
    bool relist = !applied_;
    for (const auto& [uid, cg] : *cgroup_ids) relist |= !scanned_cgroups_.count(cg);
    std::optional<EncodedServicePolicy> listed;
    if (relist) {
      auto l = ListServicePolicy(writer_);
      if (!l.ok()) {
        s = l.status();
        applied_.reset();
        applied_now = false;
        break;
      }
      listed = std::move(*l);
      cgroup_ids = scan();
      if (!cgroup_ids.ok()) {
        s = cgroup_ids.status();
        break;
      }
    }
    std::set<uint64_t> scanned;
    for (const auto& [uid, cg] : *cgroup_ids) scanned.insert(cg);
    ServicePolicyLimits limits = options_.limits;
    if (limits.l7_proxy && options_.captured) {
      for (const auto& w : snapshot->bundle.workloads()) {
        if (w.node() == options_.node_name && w.meshed() && !w.host_network() &&
            !options_.captured(w.uid(), L7PortsOf(snapshot->bundle, w))) {
          limits.uncaptured.insert(w.uid());
        }
      }
    }
    desired = CompileServicePolicy(*snapshot, options_.node_name, *cgroup_ids, limits, ids_);
    EncodedServicePolicy applied;
    s = ApplyServicePolicy(desired, writer_, listed ? &*listed : &*applied_, &applied);
    // After an error the maps are in an unknown state: list them on the next pass.
    if (s.ok()) {
      applied_ = std::move(applied);
      applied_now = true;
      applied_version_ = snapshot->version;
      scanned_cgroups_ = std::move(scanned);
    } else {
      applied_.reset();
      applied_now = false;
      break;
    }
    auto now = scan();
    if (!now.ok() || *now == *cgroup_ids) break;
    cgroup_ids = std::move(now);
  }
  if (applied_out) *applied_out = applied_now;
  if (s.ok() && !desired.errors.empty()) {
    s = absl::FailedPreconditionError(absl::StrJoin(desired.errors, "; "));
  }
  if (options_.directory) {
    // Workloads that left the node: drop their counters (ids are not reused soon).
    auto dir = options_.directory();
    std::set<uint32_t> now;
    for (const auto& [id, info] : *dir) now.insert(id);
    for (uint32_t id : known_workloads_) {
      if (!now.count(id)) writer_.DeleteStatsOf(id).IgnoreError();
    }
    known_workloads_ = std::move(now);
  }
  if (applied_now) {
    // Ids freed or given to another service / policy: their counters go with them.
    auto freed = [](std::map<uint32_t, std::string>& known,
                    const std::map<uint32_t, std::string>& now) {
      std::set<uint32_t> out;
      for (const auto& [id, name] : known) {
        auto it = now.find(id);
        if (it == now.end() || it->second != name) out.insert(id);
      }
      known = now;
      return out;
    };
    writer_.DeleteServiceStats(freed(known_services_, desired.service_names)).IgnoreError();
    writer_.DeletePolicyStats(freed(known_policies_, desired.policy_names)).IgnoreError();
    // Which policy holds which bit, for the next agent on this node.
    const auto names = EncodePolicyNames(desired.policy_names);
    bool names_ok = true;
    for (const auto& [k, v] : names) {
      auto it = written_names_.find(k);
      if (it == written_names_.end() || it->second != v) {
        names_ok = writer_.Upsert(SockLbMap::kPolicyNames, k, v).ok() && names_ok;
      }
    }
    if (names_ok) {
      written_names_ = names;
    } else {
      written_names_.clear();  // rewritten in full next time
    }
  }
  auto status = std::make_shared<ServicePolicyStatus>();
  const ServicePolicyLimits& l = options_.limits;
  uint64_t slots = 0;
  for (const auto& [k, t] : desired.slots) slots += t.size();
  status->entries = {{kLbMapServices, desired.service_ids.size()},
                     {kLbMapSlots, slots},
                     {kLbMapPolicySources, desired.policy_sources.size()},
                     {kLbMapPolicyPending, desired.pending_sources.size()},
                     {kLbMapPolicyDests, desired.policy_dests.size()},
                     {kLbMapPolicies, desired.policy_names.size()}};
  status->capacity = {{kLbMapServices, l.services},
                      {kLbMapSlots, l.slots},
                      {kLbMapPolicySources, l.policy_sources},
                      {kLbMapPolicyPending, l.pending_sources},
                      {kLbMapPolicyDests, l.policy_dests},
                      {kLbMapPolicies, SHUNT_AP_MAX_POLICIES}};
  for (const auto& [k, v] : status->entries) status->overflow[k] = 0;
  for (const auto& [k, v] : desired.overflow) status->overflow[k] = v;
  status->policies_not_understood = desired.not_understood;
  status->version = snapshot->version;
  status->not_enforced = std::move(desired.not_enforced);
  if (!applied_now) {
    // The maps hold an earlier policy, or parts of this one: none of it is known enforced.
    status->not_enforced.push_back(
        {"", absl::StrCat("the access policy and service maps were not written: ",
                          s.ok() ? "a newer snapshot is in force" : s.message()),
         true});
  }
  status->service_names = std::move(desired.service_names);
  status->policy_names = std::move(desired.policy_names);
  absl::MutexLock lock(&mu_);
  if (!s.ok()) ++errors_total_;
  status->errors_total = errors_total_;
  last_error_ = s;
  status_ = std::move(status);
  return s;
}

absl::Status ServicePolicyReconciler::last_error() const {
  absl::MutexLock l(&mu_);
  return last_error_;
}

std::shared_ptr<const ServicePolicyStatus> ServicePolicyReconciler::status() const {
  absl::MutexLock l(&mu_);
  return status_ ? status_ : std::make_shared<const ServicePolicyStatus>();
}

}  // namespace shunt::agent
