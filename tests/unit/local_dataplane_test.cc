// Policy -> map entries, without root: CompileLocalDataplane is pure and ApplyDataplane talks to a
// MapWriter, faked here in memory.
#include "agent/dataplane/local_dataplane.h"

#include <gtest/gtest.h>
#include <unistd.h>

// shunt_pod is a C struct of the global namespace: found there by the comparisons of std::map.
bool operator==(const shunt_pod& a, const shunt_pod& b) {
  return a.workload_id == b.workload_id && a.flags == b.flags;
}

namespace shunt::agent {
namespace {

class FakeMaps : public MapWriter {
 public:
  absl::Status UpsertPod(uint64_t id, const shunt_pod& pod) override {
    ++writes;
    if (full && !pods.count(id)) return absl::ResourceExhaustedError("map full");
    pods[id] = pod;
    return absl::OkStatus();
  }
  absl::Status DeletePod(uint64_t id) override {
    ++writes;
    pods.erase(id);
    return absl::OkStatus();
  }
  absl::StatusOr<std::map<uint64_t, shunt_pod>> ListPods() const override { return pods; }
  absl::Status UpsertEndpoint(const IpKey& ip, uint32_t id) override {
    ++writes;
    endpoints[ip] = id;
    return absl::OkStatus();
  }
  absl::Status DeleteEndpoint(const IpKey& ip) override {
    ++writes;
    endpoints.erase(ip);
    return absl::OkStatus();
  }
  absl::StatusOr<std::map<IpKey, uint32_t>> ListEndpoints() const override { return endpoints; }
  absl::Status DeleteStatsOf(uint32_t id) override {
    stats_deleted.push_back(id);
    return absl::OkStatus();
  }
  absl::Status UpsertPendingPod(const std::string& uid, const shunt_pod& pod) override {
    ++writes;
    pending[uid] = pod;
    return absl::OkStatus();
  }
  absl::Status DeletePendingPod(const std::string& uid) override {
    ++writes;
    pending.erase(uid);
    return absl::OkStatus();
  }
  absl::StatusOr<std::map<std::string, shunt_pod>> ListPendingPods() const override {
    return pending;
  }

  std::map<std::string, shunt_pod> pending;
  std::map<uint64_t, shunt_pod> pods;
  std::map<IpKey, uint32_t> endpoints;
  std::vector<uint32_t> stats_deleted;
  int writes = 0;
  bool full = false;
};

shunt::v1::Workload W(const std::string& uid, const std::string& node, bool meshed,
                      std::vector<std::string> ips) {
  shunt::v1::Workload w;
  w.set_uid(uid);
  w.set_namespace_("default");
  w.set_name("pod-" + uid);
  w.set_node(node);
  w.set_meshed(meshed);
  for (auto& ip : ips) w.add_ips(ip);
  return w;
}

PolicySnapshot Snapshot(std::vector<shunt::v1::Workload> ws) {
  PolicySnapshot s;
  s.version = 1;
  for (auto& w : ws) *s.bundle.add_workloads() = w;
  return s;
}

TEST(CompileLocalDataplane, OnlyMeshedPodsOfThisNodeWithACgroupAndEveryMeshedPodPending) {
  WorkloadIds ids;
  auto snap = Snapshot({W("a", "n1", true, {"198.18.0.2", "fd5a:1::2"}),
                        W("b", "n1", false, {"198.18.0.3"}),   // unmeshed: untouched
                        W("c", "n2", true, {"198.18.1.2"}),    // other node
                        W("d", "n1", true, {"198.18.0.4"})});  // no cgroup yet
  auto d = CompileLocalDataplane(snap, "n1", {{"a", 100}, {"b", 101}, {"c", 102}}, ids);
  ASSERT_EQ(d.pods.size(), 1u);
  EXPECT_EQ(d.pods.at(100).flags, static_cast<uint32_t>(SHUNT_POD_MESHED));
  const uint32_t id = d.pods.at(100).workload_id;
  EXPECT_NE(id, static_cast<uint32_t>(SHUNT_WORKLOAD_UNKNOWN));
  EXPECT_EQ(d.endpoints.size(), 3u);
  EXPECT_EQ(d.endpoints.at(*ParseIpKey("198.18.0.2")), id);
  EXPECT_EQ(d.endpoints.at(*ParseIpKey("fd5a:1::2")), id);
  EXPECT_EQ(d.directory.at(id).name, "pod-a");
  ASSERT_EQ(d.warnings.size(), 1u);
  EXPECT_NE(d.warnings[0].find("uid d"), std::string::npos);
  // d has no cgroup yet: it is pending with its id (its cgroup gets the entry at mkdir), and so
  // is a.
  ASSERT_EQ(d.pending.size(), 2u);
  EXPECT_EQ(d.pending.at("a").workload_id, id);
  const uint32_t did = d.pending.at("d").workload_id;
  EXPECT_NE(did, id);
  EXPECT_EQ(d.pending.at("d").flags, static_cast<uint32_t>(SHUNT_POD_MESHED));
  EXPECT_EQ(d.endpoints.at(*ParseIpKey("198.18.0.4")), did);
  EXPECT_EQ(d.directory.at(did).name, "pod-d");
}

// The cgroup_mkdir tracepoint made a pods map entry for d's cgroup (200) after the pass scanned
// the cgroups: the pass keeps it (the next one sees the cgroup). Once d leaves the policy, its
// entry and its pending entry go.
TEST(ApplyDataplane, KeepsAnEntryMadeAtMkdirAfterTheScanUntilThePodLeaves) {
  FakeMaps maps;
  WorkloadIds ids;
  auto snap = Snapshot({W("a", "n1", true, {"198.18.0.2"}), W("d", "n1", true, {})});
  auto d = CompileLocalDataplane(snap, "n1", {{"a", 100}}, ids);
  ASSERT_TRUE(ApplyPendingPods(d, maps).ok());
  EXPECT_EQ(maps.pending, d.pending);
  maps.pods[200] = d.pending.at("d");  // what the tracepoint writes
  ASSERT_TRUE(ApplyDataplane(d, maps).ok());
  EXPECT_EQ(maps.pods.count(200), 1u) << "deleted as a cgroup no scan found: d's first connects "
                                         "would be decided without it until the next pass";
  // A stale entry under d's id for another cgroup than the scanned one goes.
  auto d2 = CompileLocalDataplane(snap, "n1", {{"a", 100}, {"d", 201}}, ids);
  ASSERT_TRUE(ApplyDataplane(d2, maps).ok());
  EXPECT_EQ(maps.pods.count(200), 0u);
  EXPECT_EQ(maps.pods.count(201), 1u);
  auto d3 = CompileLocalDataplane(Snapshot({W("a", "n1", true, {"198.18.0.2"})}), "n1",
                                  {{"a", 100}, {"d", 201}}, ids);
  ASSERT_TRUE(ApplyDataplane(d3, maps).ok());
  EXPECT_EQ(maps.pods.count(201), 0u);
  EXPECT_EQ(maps.pending.count("d"), 0u);
  EXPECT_EQ(maps.pending.count("a"), 1u);
}

// A pod that was pending when the agent stopped keeps its id: a cgroup created meanwhile got its
// pods map entry (and its sockets their counters) under that id.
TEST(RecoverWorkloadIds, PendingPodsKeepTheirIds) {
  std::map<uint64_t, shunt_pod> pods = {{11, {3, SHUNT_POD_MESHED}}, {12, {5, SHUNT_POD_MESHED}}};
  const std::map<std::string, uint64_t> cgroups = {{"a", 11}, {"p", 12}};
  const std::map<std::string, shunt_pod> pending = {
      {"a", {3, SHUNT_POD_MESHED}}, {"p", {5, SHUNT_POD_MESHED}}, {"q", {8, SHUNT_POD_MESHED}}};
  RecoveredIds r = RecoverWorkloadIds(pods, cgroups, {}, pending);
  EXPECT_EQ(r.adopt, (std::map<std::string, uint32_t>{{"a", 3}, {"p", 5}, {"q", 8}}));
  EXPECT_TRUE(r.dead.empty());
  EXPECT_EQ(r.next, 9u);
}

// A hostNetwork pod marked meshed (a policy file may say so): its pod cgroup is classified, but its
// IP -- the node's -- is no endpoint of the fast path.
TEST(CompileLocalDataplane, HostNetworkPodIsNoEndpoint) {
  WorkloadIds ids;
  auto h = W("h", "n1", true, {"192.0.2.1"});
  h.set_host_network(true);
  auto d = CompileLocalDataplane(Snapshot({h, W("a", "n1", true, {"198.18.0.2"})}), "n1",
                                 {{"h", 100}, {"a", 101}}, ids);
  EXPECT_EQ(d.pods.size(), 2u);
  EXPECT_EQ(d.endpoints.count(*ParseIpKey("192.0.2.1")), 0u);
  EXPECT_EQ(d.endpoints.count(*ParseIpKey("198.18.0.2")), 1u);
}

TEST(CompileLocalDataplane, IdsAreStableAndNotReusedAtOnce) {
  WorkloadIds ids;
  uint32_t a = ids.IdFor("a");
  uint32_t b = ids.IdFor("b");
  EXPECT_NE(a, b);
  EXPECT_EQ(ids.IdFor("a"), a);
  ids.Forget("a");
  uint32_t c = ids.IdFor("c");
  EXPECT_NE(c, a);
  EXPECT_NE(c, b);
  ids.Adopt("z", 50);  // recovered from pinned maps after a restart
  EXPECT_EQ(ids.IdFor("z"), 50u);
  EXPECT_GT(ids.IdFor("y"), 50u);
}

// A restarted agent: pod a (cgroup 11, id 3) still runs; the pod with id 9 (cgroup 12) and the
// one with id 7 (counters only) died while no agent ran. a keeps 3; 7 and 9 are dead (their
// counters go) and no new pod gets an id at or below 9 (it would inherit their counters).
TEST(RecoverWorkloadIds, DeadPodsIdsAreNeitherKeptNorGivenOutAgain) {
  std::map<uint64_t, shunt_pod> pods = {{11, {3, SHUNT_POD_MESHED}}, {12, {9, SHUNT_POD_MESHED}}};
  const std::map<std::string, uint64_t> cgroups = {{"a", 11}, {"new", 13}};
  RecoveredIds r = RecoverWorkloadIds(pods, cgroups, {3, 7});
  EXPECT_EQ(r.adopt, (std::map<std::string, uint32_t>{{"a", 3}}));
  EXPECT_EQ(r.dead, (std::set<uint32_t>{7, 9}));
  EXPECT_EQ(r.next, 10u);
  WorkloadIds ids;
  for (const auto& [uid, id] : r.adopt) ids.Adopt(uid, id);
  ids.StartAt(r.next);
  EXPECT_EQ(ids.IdFor("a"), 3u);
  EXPECT_EQ(ids.IdFor("new"), 10u) << "before: the highest adopted id + 1, i.e. 4, or 7 and 9 "
                                      "reused once it counted up to them";
}

TEST(ParseIpKey, V4MappedAndV6) {
  auto v4 = ParseIpKey("198.18.0.2");
  auto mapped = ParseIpKey("::ffff:198.18.0.2");
  ASSERT_TRUE(v4.ok());
  ASSERT_TRUE(mapped.ok());
  EXPECT_EQ(*v4, *mapped);
  EXPECT_FALSE(ParseIpKey("198.18.0.256").ok());
  EXPECT_FALSE(ParseIpKey("").ok());
}

TEST(ApplyDataplane, WritesOnlyTheDifference) {
  FakeMaps maps;
  WorkloadIds ids;
  auto snap = Snapshot({W("a", "n1", true, {"198.18.0.2"}), W("b", "n1", true, {"198.18.0.3"})});
  auto d = CompileLocalDataplane(snap, "n1", {{"a", 100}, {"b", 101}}, ids);
  ASSERT_TRUE(ApplyDataplane(d, maps).ok());
  EXPECT_EQ(maps.pods.size(), 2u);
  EXPECT_EQ(maps.endpoints.size(), 2u);
  const int writes = maps.writes;
  ASSERT_TRUE(ApplyDataplane(d, maps).ok());
  EXPECT_EQ(maps.writes, writes) << "a second pass with nothing changed must not write";

  // b leaves the mesh: its pod and endpoint entries go, a's stay.
  auto snap2 = Snapshot({W("a", "n1", true, {"198.18.0.2"}), W("b", "n1", false, {"198.18.0.3"})});
  auto d2 = CompileLocalDataplane(snap2, "n1", {{"a", 100}, {"b", 101}}, ids);
  ASSERT_TRUE(ApplyDataplane(d2, maps).ok());
  EXPECT_EQ(maps.pods.size(), 1u);
  EXPECT_TRUE(maps.pods.count(100));
  EXPECT_EQ(maps.endpoints.size(), 1u);
}

TEST(ApplyDataplane, FullMapIsAnErrorButOtherEntriesAreWritten) {
  FakeMaps maps;
  maps.full = true;
  WorkloadIds ids;
  auto snap = Snapshot({W("a", "n1", true, {"198.18.0.2"})});
  auto d = CompileLocalDataplane(snap, "n1", {{"a", 100}}, ids);
  absl::Status s = ApplyDataplane(d, maps);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(maps.endpoints.size(), 1u) << "endpoints are still written";
}

// The agent runs the access policy pass there (agent.cc): a pod's pending policy sources are
// written before the pods map can learn of its cgroup at mkdir.
TEST(Reconciler, RunsItsHookBeforeItWritesPendingPods) {
  char tmpl[] = "/tmp/shunt-rec-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  PolicyStore store;
  shunt::v1::PolicyBundle bundle;
  *bundle.add_workloads() = W("11111111-2222-3333-4444-555555555555", "n1", true, {"10.0.0.1"});
  store.Apply("test", bundle);
  FakeMaps maps;
  Reconciler r({.node_name = "n1", .cgroup_root = tmpl}, store, maps);
  int calls = 0;
  size_t pending_at_call = 99;
  bool applied = false;
  PolicySnapshotPtr seen;
  r.SetBeforePendingPods([&](const PolicySnapshotPtr& snapshot) {
    ++calls;
    pending_at_call = maps.pending.size();
    seen = snapshot;
    return applied;
  });
  // The policy pass failed: no pending pod is written.
  EXPECT_TRUE(r.ReconcileOnce().ok());
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen, store.Current());  // the pass's own snapshot
  EXPECT_EQ(maps.pending.size(), 0u);
  applied = true;
  EXPECT_TRUE(r.ReconcileOnce().ok());
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(pending_at_call, 0u);
  EXPECT_EQ(maps.pending.size(), 1u);  // the pod has no cgroup yet
  r.SetBeforePendingPods(nullptr);
  EXPECT_TRUE(r.ReconcileOnce().ok());
  EXPECT_EQ(calls, 2);
  rmdir(tmpl);
}

}  // namespace
}  // namespace shunt::agent
