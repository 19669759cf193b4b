#include "agent/dataplane/policy_stages.h"

#include <algorithm>
#include <optional>
#include <utility>

namespace shunt::agent {
namespace {

constexpr int kBits = SHUNT_AP_MAX_POLICIES;
using Ranges = std::vector<std::pair<int, int>>;  // sorted, disjoint, inclusive

// Sorted, overlapping and adjacent ranges joined; port 0 is never connected to, so every other
// port is every port.
Ranges Merge(Ranges r) {
  std::sort(r.begin(), r.end());
  Ranges out;
  for (const auto& x : r) {
    if (!out.empty() && x.first <= out.back().second + 1) {
      out.back().second = std::max(out.back().second, x.second);
    } else {
      out.push_back(x);
    }
  }
  if (out.size() == 1 && out[0].first <= 1 && out[0].second == 65535) out[0].first = 0;
  return out;
}

Ranges ToRanges(const shunt_ap_ports& p) {
  if (p.count == 0) return {{0, 65535}};
  Ranges r;
  for (uint32_t i = 0; i < p.count && i < SHUNT_AP_MAX_PORT_RANGES; ++i) {
    if (p.from[i] <= p.to[i]) r.push_back({p.from[i], p.to[i]});
  }
  return Merge(std::move(r));
}

// nullopt where the ranges do not fit, or are none (count 0 would mean every port).
std::optional<shunt_ap_ports> FromRanges(const Ranges& r) {
  shunt_ap_ports p{};
  if (r.empty()) return std::nullopt;
  if (r.size() == 1 && r[0].first == 0 && r[0].second == 65535) return p;  // every port
  if (r.size() > SHUNT_AP_MAX_PORT_RANGES) return std::nullopt;
  for (const auto& [a, b] : r) {
    p.from[p.count] = static_cast<uint16_t>(a);
    p.to[p.count] = static_cast<uint16_t>(b);
    p.count++;
  }
  return p;
}

Ranges Union(const Ranges& a, const Ranges& b) {
  Ranges all = a;
  all.insert(all.end(), b.begin(), b.end());
  return Merge(std::move(all));
}

Ranges Intersect(const Ranges& a, const Ranges& b) {
  Ranges out;
  for (const auto& x : a) {
    for (const auto& y : b) {
      const int lo = std::max(x.first, y.first), hi = std::min(x.second, y.second);
      if (lo <= hi) out.push_back({lo, hi});
    }
  }
  return Merge(std::move(out));
}

bool Same(const shunt_ap_ports& a, const shunt_ap_ports& b) { return ToRanges(a) == ToRanges(b); }

bool Subset(const Ranges& a, const Ranges& b) { return Intersect(a, b) == a; }

uint64_t Bit(int b) { return 1ull << b; }

// Which map a stage changes, and how.
enum class Map { kSources, kDests, kPorts };
enum class Step { kGrow, kShrink };

struct Planner {
  const PolicyMaps& from;
  const PolicyMaps& to;
  PolicyMaps cur;
  std::vector<PolicyMaps> stages;

  // Sets the `bits` of one map part way: kGrow: to old | new; kShrink: to new (where old had them
  // or not). Ports: kGrow: the union of old and new (new where it does not fit); kShrink: new.
  void Apply(Map map, uint64_t bits, Step step) {
    if (!bits) return;
    PolicyMaps next = cur;
    switch (map) {
      case Map::kSources: {
        std::map<uint64_t, uint64_t> keys;
        for (const auto& [k, v] : cur.sources) keys[k] = 0;
        for (const auto& [k, v] : to.sources) keys[k] = 0;
        for (const auto& [k, unused] : keys) {
          const uint64_t c = cur.sources.count(k) ? cur.sources.at(k) : 0;
          const uint64_t t = to.sources.count(k) ? to.sources.at(k) : 0;
          const uint64_t n = step == Step::kGrow ? c | (t & bits) : (c & ~bits) | (t & bits);
          if (n) {
            next.sources[k] = n;
          } else {
            next.sources.erase(k);
          }
        }
        break;
      }
      case Map::kDests: {
        std::map<std::string, int> keys;
        for (const auto& [k, v] : cur.dests) keys[k] = 0;
        for (const auto& [k, v] : to.dests) keys[k] = 0;
        for (const auto& [k, unused] : keys) {
          shunt_ap_dst c{}, t{};
          if (auto it = cur.dests.find(k); it != cur.dests.end()) c = it->second;
          if (auto it = to.dests.find(k); it != to.dests.end()) t = it->second;
          shunt_ap_dst n{};
          if (step == Step::kGrow) {
            n.deny = c.deny | (t.deny & bits);
            n.allow = c.allow | (t.allow & bits);
          } else {
            n.deny = (c.deny & ~bits) | (t.deny & bits);
            n.allow = (c.allow & ~bits) | (t.allow & bits);
          }
          if (n.deny || n.allow) {
            next.dests[k] = n;
          } else {
            next.dests.erase(k);
          }
        }
        break;
      }
      case Map::kPorts:
        for (int b = 0; b < kBits; ++b) {
          if (!(bits & Bit(b))) continue;
          if (step == Step::kShrink) {
            next.ports[b] = to.ports[b];
            continue;
          }
          auto u = FromRanges(Union(ToRanges(cur.ports[b]), ToRanges(to.ports[b])));
          next.ports[b] = u ? *u : to.ports[b];
        }
        break;
    }
    Push(std::move(next));
  }

  // Ports of `bits` set to their new ranges.
  void PortsTo(uint64_t bits) {
    PolicyMaps next = cur;
    for (int b = 0; b < kBits; ++b) {
      if (bits & Bit(b)) next.ports[b] = to.ports[b];
    }
    Push(std::move(next));
  }

  // Sources and destinations of `bits` cut down to what old and new share.
  void ShrinkToCommon(Map map, uint64_t bits) {
    if (!bits) return;
    PolicyMaps next = cur;
    if (map == Map::kSources) {
      for (auto it = next.sources.begin(); it != next.sources.end();) {
        const uint64_t t = to.sources.count(it->first) ? to.sources.at(it->first) : 0;
        it->second &= ~bits | t;
        it = it->second ? std::next(it) : next.sources.erase(it);
      }
    } else {
      for (auto it = next.dests.begin(); it != next.dests.end();) {
        shunt_ap_dst t{};
        if (auto f = to.dests.find(it->first); f != to.dests.end()) t = f->second;
        it->second.deny &= ~bits | t.deny;
        it->second.allow &= ~bits | t.allow;
        it = (it->second.deny || it->second.allow) ? std::next(it) : next.dests.erase(it);
      }
    }
    Push(std::move(next));
  }

  void Push(PolicyMaps next) {
    cur = next;
    stages.push_back(std::move(next));
  }
};

struct BitFacts {
  uint64_t deny_o = 0, allow_o = 0, deny_n = 0, allow_n = 0;
  uint64_t src_grow = 0, src_shrink = 0, dst_grow = 0, dst_shrink = 0;
  uint64_t port_grow = 0, port_shrink = 0, port_change = 0;
};

BitFacts Facts(const PolicyMaps& o, const PolicyMaps& n) {
  BitFacts f;
  for (const auto& [k, d] : o.dests) f.deny_o |= d.deny, f.allow_o |= d.allow;
  for (const auto& [k, d] : n.dests) f.deny_n |= d.deny, f.allow_n |= d.allow;
  auto src = [](const PolicyMaps& m, uint64_t k) {
    auto it = m.sources.find(k);
    return it == m.sources.end() ? 0 : it->second;
  };
  std::map<uint64_t, int> sk;
  for (const auto& [k, v] : o.sources) sk[k] = 0;
  for (const auto& [k, v] : n.sources) sk[k] = 0;
  for (const auto& [k, unused] : sk) {
    f.src_grow |= src(n, k) & ~src(o, k);
    f.src_shrink |= src(o, k) & ~src(n, k);
  }
  auto dst = [](const PolicyMaps& m, const std::string& k) {
    auto it = m.dests.find(k);
    return it == m.dests.end() ? shunt_ap_dst{} : it->second;
  };
  std::map<std::string, int> dk;
  for (const auto& [k, v] : o.dests) dk[k] = 0;
  for (const auto& [k, v] : n.dests) dk[k] = 0;
  for (const auto& [k, unused] : dk) {
    const shunt_ap_dst a = dst(o, k), b = dst(n, k);
    f.dst_grow |= (b.deny & ~a.deny) | (b.allow & ~a.allow);
    f.dst_shrink |= (a.deny & ~b.deny) | (a.allow & ~b.allow);
  }
  for (int b = 0; b < kBits; ++b) {
    if (Same(o.ports[b], n.ports[b])) continue;
    f.port_change |= Bit(b);
    const Ranges ro = ToRanges(o.ports[b]), rn = ToRanges(n.ports[b]);
    if (!Subset(rn, ro)) f.port_grow |= Bit(b);
    if (!Subset(ro, rn)) f.port_shrink |= Bit(b);
  }
  return f;
}


// Facts without the changes that wait for the final state: ports, and growing sources, of a bit
// no destination has in `n` (a bit with sources only decides nothing, and before the end its
// ports and new sources would meet its old destinations).
BitFacts Changes(const PolicyMaps& o, const PolicyMaps& n) {
  BitFacts f = Facts(o, n);
  const uint64_t used_n = f.deny_n | f.allow_n;
  f.port_grow &= used_n;
  f.port_shrink &= used_n;
  f.port_change &= used_n;
  f.src_grow &= used_n;
  return f;
}

// Bits in use before and after whose one part grows while another shrinks.
uint64_t Mixed(const BitFacts& f) {
  return ((f.src_grow & (f.dst_shrink | f.port_shrink)) |
          (f.dst_grow & (f.src_shrink | f.port_shrink)) |
          (f.port_grow & (f.src_shrink | f.dst_shrink))) &
         (f.deny_o | f.allow_o) & (f.deny_n | f.allow_n);
}

// Stages from p.cur to `to` where no bit is mixed (one part growing while another shrinks) or
// changes kind; those that are (no spare bit was left for them) are cut down first.
void Standard(Planner& p, const PolicyMaps& to) {
  const PolicyMaps from = p.cur;
  Planner q{from, to, from, {}};
  const BitFacts f = Facts(from, to);
  const uint64_t used_o = f.deny_o | f.allow_o, used_n = f.deny_n | f.allow_n;
  const uint64_t kind_changed = (f.deny_o & f.allow_n) | (f.allow_o & f.deny_n);
  if (kind_changed) {
    q.ShrinkToCommon(Map::kDests, kind_changed);
    q.ShrinkToCommon(Map::kSources, kind_changed);
  }
  // Bits new to the maps: their ports before any entry refers to them (while none does, what they
  // hold decides nothing).
  const uint64_t fresh = (used_n & ~used_o) | kind_changed;
  if (fresh) q.PortsTo(fresh);
  // Sources of bits no destination has yet decide nothing: set to new first (stale ones would meet
  // the bit's new destinations).
  q.Apply(Map::kSources, ~(used_o & ~kind_changed), Step::kShrink);
  const BitFacts g = Changes(q.cur, to);
  const uint64_t mixed = Mixed(g) & ~fresh;
  const uint64_t deny = (g.deny_o | g.deny_n) & ~mixed, allow = (g.allow_o | g.allow_n) & ~mixed;
  // Mixed bits without a spare: cut to what old and new share, then the new ports, then grown.
  if (mixed) {
    q.ShrinkToCommon(Map::kDests, mixed);
    q.ShrinkToCommon(Map::kSources, mixed);
    q.PortsTo(mixed);
  }
  // Tighten first: more denied (a DENY needs its source, destination and port all set, so any
  // order of the three only adds denials that the new policy makes).
  q.Apply(Map::kPorts, deny & g.port_grow, Step::kGrow);
  q.Apply(Map::kDests, deny & g.dst_grow, Step::kGrow);
  q.Apply(Map::kSources, deny & g.src_grow, Step::kGrow);
  // ALLOW growth: sources and ports before the destinations they let in (a destination with an
  // ALLOW bit refuses every source without it).
  q.Apply(Map::kSources, (allow & g.src_grow) | mixed, Step::kGrow);
  q.Apply(Map::kPorts, allow & g.port_grow, Step::kGrow);
  q.Apply(Map::kDests, (allow & g.dst_grow) | mixed, Step::kGrow);
  // ALLOW shrinking: destinations before the sources they let in; then DENY shrinking.
  q.Apply(Map::kDests, allow & g.dst_shrink, Step::kShrink);
  q.Apply(Map::kPorts, allow & g.port_change, Step::kShrink);
  q.Apply(Map::kSources, allow & g.src_shrink, Step::kShrink);
  q.Apply(Map::kPorts, deny & g.port_change, Step::kShrink);
  q.Apply(Map::kDests, deny & g.dst_shrink, Step::kShrink);
  q.Apply(Map::kSources, deny & g.src_shrink, Step::kShrink);
  // Whatever is left (bits of no kind: sources without destinations; unused ports).
  q.Push(to);
  for (auto& st : q.stages) p.Push(std::move(st));
}

// `m` with the entries of bit `from` moved to bit `to` (and its ports).
void MoveBit(PolicyMaps& m, int from, int to) {
  for (auto& [cg, mask] : m.sources) {
    if (mask & Bit(from)) mask = (mask & ~Bit(from)) | Bit(to);
  }
  for (auto& [ip, d] : m.dests) {
    if (d.deny & Bit(from)) d.deny = (d.deny & ~Bit(from)) | Bit(to);
    if (d.allow & Bit(from)) d.allow = (d.allow & ~Bit(from)) | Bit(to);
  }
  m.ports[to] = m.ports[from];
  m.ports[from] = shunt_ap_ports{};
}

}  // namespace

std::vector<PolicyMaps> PolicyStages(const PolicyMaps& from, const PolicyMaps& to) {
  Planner p{from, to, from, {}};
  // A bit whose one part grows while another shrinks (or that changes kind) cannot change in
  // place: grown first it would combine a new part with an old one (a new source with a
  // destination no longer targeted) into a verdict neither policy has; cut first, it would let
  // through what another bit's change did not cover yet. Its new meaning goes into a spare bit
  // first (make before break), its old one is removed, then it takes the new meaning and the spare
  // is removed: each of the two passes has no such bit.
  const BitFacts f = Changes(from, to);
  const uint64_t used_o = f.deny_o | f.allow_o, used_n = f.deny_n | f.allow_n;
  uint64_t referenced = used_o | used_n;
  for (const auto& [cg, mask] : from.sources) referenced |= mask;
  for (const auto& [cg, mask] : to.sources) referenced |= mask;
  const uint64_t kind_changed = (f.deny_o & f.allow_n) | (f.allow_o & f.deny_n);
  // Ports whose old and new ranges together do not fit: they cannot widen first, so change in
  // place only through a spare.
  uint64_t wide = 0;
  for (int b = 0; b < kBits; ++b) {
    if ((f.port_change & used_o & used_n & Bit(b)) &&
        !FromRanges(Union(ToRanges(from.ports[b]), ToRanges(to.ports[b])))) {
      wide |= Bit(b);
    }
  }
  const uint64_t mixed = wide | Mixed(f) | kind_changed;
  PolicyMaps middle = to;
  bool moved = false;
  for (int b = 0, spare = kBits - 1; b < kBits; ++b) {
    if (!(mixed & Bit(b))) continue;
    while (spare >= 0 && (referenced & Bit(spare))) --spare;
    if (spare < 0) break;  // none left: changed in place (Standard)
    referenced |= Bit(spare);
    MoveBit(middle, b, spare);
    // The old meaning of b stays out of `middle`: removed in the first pass.
    moved = true;
  }
  if (moved) Standard(p, middle);
  Standard(p, to);
  return p.stages;
}

bool AccessProceeds(const PolicyMaps& maps, uint64_t cgroup, const std::string& ip,
                    uint16_t port) {
  auto d = maps.dests.find(ip);
  if (d == maps.dests.end()) return true;
  const uint64_t deny = d->second.deny, allow = d->second.allow;
  if (!deny && !allow) return true;
  auto s = maps.sources.find(cgroup);
  const uint64_t src = s == maps.sources.end() ? 0 : s->second;
  uint64_t hit = 0;
  for (int b = 0; b < kBits; ++b) {
    if (!((deny | allow) & src & Bit(b))) continue;
    const shunt_ap_ports& p = maps.ports[b];
    bool in = p.count == 0;
    for (uint32_t j = 0; !in && j < p.count && j < SHUNT_AP_MAX_PORT_RANGES; ++j) {
      in = port >= p.from[j] && port <= p.to[j];
    }
    if (in) hit |= Bit(b);
  }
  if (hit & deny) return false;
  return !(allow && !(hit & allow));
}

}  // namespace shunt::agent
