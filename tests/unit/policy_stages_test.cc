// The update order of the access-policy maps, through ApplyServicePolicy and a writer that
// records every single write and checks the state it leaves: every connect (source pod,
// destination IP, port) must be decided as the old policy or as the new one decides it, never
// otherwise, at every write. Random old and new policies, and the two windows found in review.
#include "agent/dataplane/policy_stages.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"
#include "agent/dataplane/service_policy.h"

namespace shunt::agent {
namespace {

constexpr uint64_t kCgroups[] = {1, 2, 3, 4};
constexpr uint16_t kPorts[] = {80, 443, 8080, 9000};

std::string IpBytes(int i) {
  IpKey k{};
  k.addr[2] = htonl(0xffff);
  k.addr[3] = htonl(0x0a000000 + i);
  return std::string(reinterpret_cast<const char*>(k.addr), sizeof(k.addr));
}

shunt_ap_ports Ports(std::vector<std::pair<uint16_t, uint16_t>> ranges) {
  shunt_ap_ports p{};
  for (const auto& [a, b] : ranges) {
    p.from[p.count] = a;
    p.to[p.count] = b;
    p.count++;
  }
  return p;
}

DesiredServicePolicy ToDesired(const PolicyMaps& m) {
  DesiredServicePolicy d;
  d.policy_sources = m.sources;
  for (const auto& [ip, v] : m.dests) {
    IpKey k;
    std::memcpy(k.addr, ip.data(), sizeof(k.addr));
    d.policy_dests[k] = v;
  }
  d.policy_ports = m.ports;
  return d;
}

PolicyMaps FromWriter(const std::map<SockLbMap, std::map<std::string, std::string>>& maps) {
  PolicyMaps m;
  auto get = [&](SockLbMap map) {
    auto it = maps.find(map);
    return it == maps.end() ? std::map<std::string, std::string>{} : it->second;
  };
  for (const auto& [k, v] : get(SockLbMap::kPolicySources)) {
    uint64_t cg, mask;
    std::memcpy(&cg, k.data(), 8);
    std::memcpy(&mask, v.data(), 8);
    m.sources[cg] = mask;
  }
  for (const auto& [k, v] : get(SockLbMap::kPolicyDests)) {
    shunt_ap_dst d;
    std::memcpy(&d, v.data(), sizeof(d));
    m.dests[k] = d;
  }
  for (const auto& [k, v] : get(SockLbMap::kPolicyPorts)) {
    uint32_t bit;
    std::memcpy(&bit, k.data(), 4);
    std::memcpy(&m.ports[bit], v.data(), sizeof(shunt_ap_ports));
  }
  return m;
}

// Applies every write to its maps and, once armed, checks every connect after each one.
class CheckingWriter : public ServicePolicyWriter {
 public:
  absl::StatusOr<std::map<Bytes, Bytes>> List(SockLbMap map) const override {
    auto it = maps.find(map);
    return it == maps.end() ? std::map<Bytes, Bytes>{} : it->second;
  }
  absl::Status Upsert(SockLbMap map, const Bytes& k, const Bytes& v) override {
    maps[map][k] = v;
    Check();
    return absl::OkStatus();
  }
  absl::Status Delete(SockLbMap map, const Bytes& k) override {
    maps[map].erase(k);
    Check();
    return absl::OkStatus();
  }
  absl::Status DeleteStatsOf(uint32_t) override { return absl::OkStatus(); }
  absl::Status DeleteServiceStats(const std::set<uint32_t>&) override { return absl::OkStatus(); }
  absl::Status DeletePolicyStats(const std::set<uint32_t>&) override { return absl::OkStatus(); }

  void Arm(const PolicyMaps& from, const PolicyMaps& to) {
    old_ = from;
    new_ = to;
    armed_ = true;
    writes = 0;
    violations.clear();
  }
  void Check() {
    if (!armed_) return;
    ++writes;
    const PolicyMaps now = FromWriter(maps);
    for (uint64_t cg : kCgroups) {
      for (int i = 0; i < 4; ++i) {
        for (uint16_t port : kPorts) {
          const std::string ip = IpBytes(i);
          const bool v = AccessProceeds(now, cg, ip, port);
          if (v != AccessProceeds(old_, cg, ip, port) && v != AccessProceeds(new_, cg, ip, port)) {
            violations.push_back(absl::StrCat("write ", writes, ": cgroup ", cg, " -> ip ", i,
                                              ":", port, v ? " proceeds" : " refused"));
          }
        }
      }
    }
  }

  std::map<SockLbMap, std::map<Bytes, Bytes>> maps;
  int writes = 0;
  std::vector<std::string> violations;

 private:
  PolicyMaps old_, new_;
  bool armed_ = false;
};

std::string Dump(const PolicyMaps& m) {
  std::string out = "sources:";
  for (const auto& [cg, mask] : m.sources) absl::StrAppend(&out, " ", cg, "=", mask);
  out += "; dests:";
  for (int i = 0; i < 4; ++i) {
    auto it = m.dests.find(IpBytes(i));
    if (it != m.dests.end()) {
      absl::StrAppend(&out, " ip", i, "=deny ", it->second.deny, "/allow ", it->second.allow);
    }
  }
  out += "; ports:";
  for (int b = 0; b < 5; ++b) {
    absl::StrAppend(&out, " b", b, "=");
    if (m.ports[b].count == 0) out += "all";
    for (uint32_t j = 0; j < m.ports[b].count; ++j) {
      absl::StrAppend(&out, m.ports[b].from[j], "-", m.ports[b].to[j], ",");
    }
  }
  return out;
}

// Runs old -> new through ApplyServicePolicy; returns the violations, and checks it converged.
std::vector<std::string> Transition(const PolicyMaps& from, const PolicyMaps& to, int* writes) {
  CheckingWriter w;
  EXPECT_TRUE(ApplyServicePolicy(ToDesired(from), w).ok());
  w.Arm(from, to);
  EXPECT_TRUE(ApplyServicePolicy(ToDesired(to), w).ok());
  const PolicyMaps end = FromWriter(w.maps);
  EXPECT_EQ(end.sources, to.sources);
  EXPECT_EQ(end.dests.size(), to.dests.size());
  for (uint64_t cg : kCgroups) {
    for (int i = 0; i < 4; ++i) {
      for (uint16_t port : kPorts) {
        EXPECT_EQ(AccessProceeds(end, cg, IpBytes(i), port),
                  AccessProceeds(to, cg, IpBytes(i), port));
      }
    }
  }
  if (writes) *writes = w.writes;
  return w.violations;
}

// Adding an ALLOW used to write its destinations before its sources: the sources it allows were
// refused in between.
TEST(PolicyStages, AddingAnAllowNeverRefusesWhatItAllows) {
  PolicyMaps from, to;
  to.ports[0] = Ports({});
  to.sources[1] = 1;                                  // cgroup 1 allowed ...
  to.dests[IpBytes(0)] = shunt_ap_dst{0, 1};          // ... to ip 0
  int writes = 0;
  EXPECT_EQ(Transition(from, to, &writes), std::vector<std::string>{});
  EXPECT_GE(writes, 2);
}

// Removing a port-scoped DENY used to reset its ports (count 0: every port) while its bit was
// still set: for a moment it denied every port.
TEST(PolicyStages, RemovingAPortScopedDenyNeverDeniesMorePorts) {
  PolicyMaps from, to;
  from.ports[0] = Ports({{80, 80}});
  from.sources[1] = 1;
  from.dests[IpBytes(0)] = shunt_ap_dst{1, 0};
  int writes = 0;
  EXPECT_EQ(Transition(from, to, &writes), std::vector<std::string>{});
  EXPECT_GE(writes, 2);
}

// One DENY replaced by another of the same reach, one ALLOW replaced by another: never open.
TEST(PolicyStages, ReplacingAPolicyNeverOpensAGap) {
  PolicyMaps from, to;
  from.sources[1] = 0b01;
  from.dests[IpBytes(0)] = shunt_ap_dst{0b01, 0};
  to.sources[1] = 0b10;
  to.dests[IpBytes(0)] = shunt_ap_dst{0b10, 0};
  EXPECT_EQ(Transition(from, to, nullptr), std::vector<std::string>{});
  from = {}, to = {};
  from.sources[1] = 0b01;
  from.dests[IpBytes(0)] = shunt_ap_dst{0, 0b01};
  to.sources[1] = 0b10;
  to.dests[IpBytes(0)] = shunt_ap_dst{0, 0b10};
  EXPECT_EQ(Transition(from, to, nullptr), std::vector<std::string>{});
}

// A policy that gains a source while it stops targeting a destination, in one update.
TEST(PolicyStages, APolicyGainingASourceAndLosingATargetAtOnce) {
  for (int kind = 0; kind < 2; ++kind) {
    PolicyMaps from, to;
    auto dst = [&](uint64_t bits) {
      return kind ? shunt_ap_dst{0, bits} : shunt_ap_dst{bits, 0};
    };
    from.sources[1] = 1;
    from.dests[IpBytes(0)] = dst(1);
    from.dests[IpBytes(1)] = dst(1);
    to.sources[1] = 1;
    to.sources[2] = 1;
    to.dests[IpBytes(0)] = dst(1);
    // ip 1 still allow-listed by another ALLOW (bit 1) with no source here.
    if (kind) from.dests[IpBytes(1)].allow |= 2, to.dests[IpBytes(1)] = dst(2);
    EXPECT_EQ(Transition(from, to, nullptr), std::vector<std::string>{}) << "kind " << kind;
  }
}

// Random policies of up to 5 bits (each a DENY or an ALLOW, in old, new or both, now and then
// changing kind, with random sources, destinations and port ranges): every intermediate state
// decides every connect as old or new.
TEST(PolicyStages, RandomUpdatesNeverDecideOtherwiseThanOldOrNew) {
  std::mt19937 rng(20261202);
  const std::vector<shunt_ap_ports> port_sets = {
      Ports({}),         Ports({{80, 80}}),     Ports({{443, 443}}),         Ports({{80, 443}}),
      Ports({{8000, 8999}}), Ports({{80, 80}, {8080, 8080}}), Ports({{9000, 9000}, {443, 443}})};
  int cases = 0, mixed_writes = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    PolicyMaps from, to;
    const int bits = 1 + rng() % 5;
    for (int b = 0; b < bits; ++b) {
      const bool deny_old = rng() % 2;
      const bool deny_new = rng() % 8 ? deny_old : !deny_old;  // a bit that changes kind
      const int presence = rng() % 4;  // 0: old only, 1: new only, 2-3: both
      for (int side = 0; side < 2; ++side) {
        if ((presence == 0 && side == 1) || (presence == 1 && side == 0)) continue;
        PolicyMaps& m = side ? to : from;
        const bool deny = side ? deny_new : deny_old;
        m.ports[b] = port_sets[rng() % port_sets.size()];
        for (uint64_t cg : kCgroups) {
          if (rng() % 2) m.sources[cg] |= 1ull << b;
        }
        for (int i = 0; i < 4; ++i) {
          if (rng() % 2) (deny ? m.dests[IpBytes(i)].deny : m.dests[IpBytes(i)].allow) |= 1ull << b;
        }
      }
    }
    int writes = 0;
    auto v = Transition(from, to, &writes);
    ASSERT_EQ(v, std::vector<std::string>{}) << "case " << iter << "\nold: " << Dump(from)
                                             << "\nnew: " << Dump(to);
    ++cases;
    mixed_writes += writes;
  }
  EXPECT_EQ(cases, 3000);
  EXPECT_GT(mixed_writes, 3000);
}

}  // namespace
}  // namespace shunt::agent
