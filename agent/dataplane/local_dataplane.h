// Compiles policy into the fast path's map entries and keeps the kernel in step with it.
//
// CompileLocalDataplane is pure (no file descriptors): policy snapshot + the pod cgroups found on
// this node -> desired map contents. MapWriter is what the kernel side implements (Fastpath) and
// what unit tests fake. Reconciler runs the loop: on every policy change and every resync tick it
// rescans the pod cgroups, compiles and applies the difference.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/bpf/fastpath.h"
#include "agent/dataplane/reconcile_loop.h"
#include "agent/policy/policy_store.h"
#include "common/status_macros.h"

namespace shunt::agent {

// What a workload id stands for, for metric labels.
struct WorkloadInfo {
  std::string uid;
  std::string k8s_namespace;
  std::string name;   // pod name
  std::string owner;  // owning workload, or the pod name
};

// id -> workload, published by the reconciler, read by the metrics collector.
using WorkloadDirectory = std::map<uint32_t, WorkloadInfo>;

struct DesiredDataplane {
  // Every meshed pod of this node that policy knows, by uid: what its cgroup gets in the pods map
  // when kubelet creates it (the cgroup_mkdir tracepoint), so that no connect() of it is ever
  // decided without it, and what a restarted agent recovers its id from.
  std::map<std::string, shunt_pod> pending;
  std::map<uint64_t, shunt_pod> pods;       // pod cgroup id -> workload
  std::map<IpKey, uint32_t> endpoints;      // meshed local pod IP -> workload id
  WorkloadDirectory directory;              // every id in use
  std::vector<std::string> warnings;        // e.g. a meshed pod whose cgroup is not found yet
};

// Assigns workload ids: stable for a uid while it lives, never 0, not reused soon after a pod
// leaves (so that late counters of a dead pod are not attributed to a new one).
class WorkloadIds {
 public:
  uint32_t IdFor(const std::string& uid);
  void Adopt(const std::string& uid, uint32_t id);  // recovered from pinned maps
  void Forget(const std::string& uid);
  // No id below `id` is given out any more (ids a restarted agent found in use).
  void StartAt(uint32_t id) { next_ = std::max(next_, id); }
  const std::map<std::string, uint32_t>& ids() const { return ids_; }

 private:
  std::map<std::string, uint32_t> ids_;
  uint32_t next_ = 1;
};

// What a restarted agent takes over from the pinned maps: the ids of pods that still run here
// (`pods`: the pods map, `cgroups`: uid -> cgroup id now; their sockets carry the ids), the ids
// that have counters (`counted`) or a pods map entry but no pod any more (their counters go), and
// the first id to give out: above every id seen, so that no new pod inherits a dead one's counters.
struct RecoveredIds {
  std::map<std::string, uint32_t> adopt;  // uid -> id
  std::set<uint32_t> dead;
  uint32_t next = 1;
};
// `pending`: the pending pods map (uid -> pod): ids of pods whose cgroup did not exist yet, also
// adopted (a cgroup made while no agent ran has its entry under that id).
RecoveredIds RecoverWorkloadIds(const std::map<uint64_t, shunt_pod>& pods,
                                const std::map<std::string, uint64_t>& cgroups,
                                const std::set<uint32_t>& counted,
                                const std::map<std::string, shunt_pod>& pending = {});

// `pod_cgroup_ids`: uid -> cgroup id of the pod cgroups found under the node's cgroup root.
DesiredDataplane CompileLocalDataplane(const PolicySnapshot& snapshot, const std::string& node,
                                       const std::map<std::string, uint64_t>& pod_cgroup_ids,
                                       WorkloadIds& ids);

class MapWriter {
 public:
  virtual ~MapWriter() = default;
  virtual absl::Status UpsertPod(uint64_t cgroup_id, const shunt_pod& pod) = 0;
  virtual absl::Status DeletePod(uint64_t cgroup_id) = 0;
  virtual absl::StatusOr<std::map<uint64_t, shunt_pod>> ListPods() const = 0;
  virtual absl::Status UpsertEndpoint(const IpKey& ip, uint32_t workload_id) = 0;
  virtual absl::Status DeleteEndpoint(const IpKey& ip) = 0;
  virtual absl::StatusOr<std::map<IpKey, uint32_t>> ListEndpoints() const = 0;
  virtual absl::Status DeleteStatsOf(uint32_t workload_id) = 0;
  // Workload ids that have counters.
  virtual absl::StatusOr<std::set<uint32_t>> CountedWorkloads() const {
    return std::set<uint32_t>{};
  }
  virtual absl::Status UpsertPendingPod(const std::string& uid, const shunt_pod& pod) = 0;
  virtual absl::Status DeletePendingPod(const std::string& uid) = 0;
  virtual absl::StatusOr<std::map<std::string, shunt_pod>> ListPendingPods() const = 0;
};

// The pending pods of `desired` written (upserts only): before the cgroups are scanned, so that a
// pod cgroup is either seen by the scan or made after its pod was pending.
absl::Status ApplyPendingPods(const DesiredDataplane& desired, MapWriter& writer);

// Brings the maps behind `writer` to `desired`: upserts first, then deletes. Returns the first
// error; entries already written stay (the next pass retries the rest). A pods map entry of a
// pending pod's id is kept although its cgroup was not in the scan: the tracepoint made it for a
// cgroup created since.
absl::Status ApplyDataplane(const DesiredDataplane& desired, MapWriter& writer);

// MapWriter over the real maps.
class FastpathWriter : public MapWriter {
 public:
  explicit FastpathWriter(Fastpath& fp) : fp_(fp) {}
  absl::Status UpsertPod(uint64_t id, const shunt_pod& pod) override { return fp_.UpsertPod(id, pod); }
  absl::Status DeletePod(uint64_t id) override { return fp_.DeletePod(id); }
  absl::StatusOr<std::map<uint64_t, shunt_pod>> ListPods() const override { return fp_.ListPods(); }
  absl::Status UpsertEndpoint(const IpKey& ip, uint32_t id) override {
    return fp_.UpsertEndpoint(ip, id);
  }
  absl::Status DeleteEndpoint(const IpKey& ip) override { return fp_.DeleteEndpoint(ip); }
  absl::StatusOr<std::map<IpKey, uint32_t>> ListEndpoints() const override {
    return fp_.ListEndpoints();
  }
  absl::Status DeleteStatsOf(uint32_t id) override { return fp_.DeleteStatsOf(id); }
  absl::Status UpsertPendingPod(const std::string& uid, const shunt_pod& pod) override {
    return fp_.UpsertPendingPod(uid, pod);
  }
  absl::Status DeletePendingPod(const std::string& uid) override {
    return fp_.DeletePendingPod(uid);
  }
  absl::StatusOr<std::map<std::string, shunt_pod>> ListPendingPods() const override {
    return fp_.ListPendingPods();
  }
  absl::StatusOr<std::set<uint32_t>> CountedWorkloads() const override {
    std::set<uint32_t> out;
    ASSIGN_OR_RETURN(auto msgs, fp_.ReadMsgStats());
    for (const auto& m : msgs) out.insert({m.key.src_workload, m.key.dst_workload});
    ASSIGN_OR_RETURN(auto socks, fp_.ReadSockStats());
    for (const auto& s : socks) out.insert(s.key.workload_id);
    out.erase(SHUNT_WORKLOAD_UNKNOWN);
    return out;
  }

 private:
  Fastpath& fp_;
};

class Reconciler {
 public:
  struct Options {
    std::string node_name;
    std::string cgroup_root;
    absl::Duration resync = absl::Seconds(1);
  };
  Reconciler(Options options, PolicyStore& store, MapWriter& writer);
  ~Reconciler();  // Stop()

  // Recovers workload ids from the maps (agent restart), runs a first pass, starts the loop.
  absl::Status Start();
  void Stop();

  // True once a pass with a policy applied without error.
  bool synced() const;
  // The snapshot version of the last pass that ran to its end (0: none); last_error() is its
  // outcome.
  uint64_t pass_version() const;
  // The last pass wrote the pending pods (its access policy hook applied, then they were
  // written): a pod whose cgroup comes now is enforced from its first connect().
  bool pending_written() const;
  absl::Status last_error() const;
  std::shared_ptr<const WorkloadDirectory> directory() const;
  // Runs one pass now (tests, and the loop).
  absl::Status ReconcileOnce();

  // Called at the start of every pass with its snapshot, before the pending pods are written:
  // the access policy pass, so that a pod the pods map learns of at its cgroup's creation
  // (cgroup_mkdir) has its pending policy sources already (otherwise a pod new to a snapshot,
  // whose cgroup came between this pass and the policy one, was meshed with no sources: its DENY
  // policies failed open). It returns whether the policy maps hold that snapshot's policy; if
  // not, no pending pod is written in this pass. nullptr: none.
  using BeforePendingFn = std::function<bool(const PolicySnapshotPtr&)>;
  void SetBeforePendingPods(BeforePendingFn fn);

 private:
  Options options_;
  PolicyStore& store_;
  MapWriter& writer_;
  ReconcileLoop loop_;

  mutable absl::Mutex mu_;
  bool synced_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t pass_version_ ABSL_GUARDED_BY(mu_) = 0;
  bool pending_written_ ABSL_GUARDED_BY(mu_) = true;
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const WorkloadDirectory> directory_ ABSL_GUARDED_BY(mu_);
  BeforePendingFn before_pending_ ABSL_GUARDED_BY(mu_);

  absl::Mutex pass_mu_;  // one pass at a time
  WorkloadIds ids_ ABSL_GUARDED_BY(pass_mu_);
  std::map<uint32_t, std::string> live_ ABSL_GUARDED_BY(pass_mu_);  // ids in the maps
  // Ids of pods that left whose counters are still to be deleted (a pass failed, or they died
  // while no agent ran).
  std::set<uint32_t> dead_ ABSL_GUARDED_BY(pass_mu_);
};

}  // namespace shunt::agent
