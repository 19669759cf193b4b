#include "agent/dataplane/local_dataplane.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/policy/pod_cgroups.h"
#include "common/cgroup.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace shunt::agent {

uint32_t WorkloadIds::IdFor(const std::string& uid) {
  auto it = ids_.find(uid);
  if (it != ids_.end()) return it->second;
  std::set<uint32_t> used;
  for (const auto& [u, id] : ids_) used.insert(id);
  while (next_ == SHUNT_WORKLOAD_UNKNOWN || used.count(next_)) ++next_;
  uint32_t id = next_++;
  ids_[uid] = id;
  return id;
}

void WorkloadIds::Adopt(const std::string& uid, uint32_t id) {
  ids_[uid] = id;
  if (id >= next_) next_ = id + 1;
}

void WorkloadIds::Forget(const std::string& uid) { ids_.erase(uid); }

RecoveredIds RecoverWorkloadIds(const std::map<uint64_t, shunt_pod>& pods,
                                const std::map<std::string, uint64_t>& cgroups,
                                const std::set<uint32_t>& counted,
                                const std::map<std::string, shunt_pod>& pending) {
  RecoveredIds out;
  std::set<uint32_t> seen = counted, alive;
  for (const auto& [cg, pod] : pods) seen.insert(pod.workload_id);
  for (const auto& [uid, pod] : pending) seen.insert(pod.workload_id);
  for (const auto& [uid, cg] : cgroups) {
    auto it = pods.find(cg);
    if (it == pods.end() || it->second.workload_id == SHUNT_WORKLOAD_UNKNOWN) continue;
    out.adopt[uid] = it->second.workload_id;
    alive.insert(it->second.workload_id);
  }
  // Pods still waiting for their cgroup keep the id their entry was written with.
  for (const auto& [uid, pod] : pending) {
    if (pod.workload_id == SHUNT_WORKLOAD_UNKNOWN || out.adopt.count(uid) ||
        alive.count(pod.workload_id)) {
      continue;
    }
    out.adopt[uid] = pod.workload_id;
    alive.insert(pod.workload_id);
  }
  for (uint32_t id : seen) {
    if (id != SHUNT_WORKLOAD_UNKNOWN && !alive.count(id)) out.dead.insert(id);
    if (id >= out.next) out.next = id + 1;
  }
  return out;
}

DesiredDataplane CompileLocalDataplane(const PolicySnapshot& snapshot, const std::string& node,
                                       const std::map<std::string, uint64_t>& pod_cgroup_ids,
                                       WorkloadIds& ids) {
  DesiredDataplane out;
  for (const auto& w : snapshot.bundle.workloads()) {
    if (w.node() != node || !w.meshed()) continue;  // unmeshed pods are left alone
    const uint32_t id = ids.IdFor(w.uid());
    out.pending[w.uid()] = shunt_pod{id, SHUNT_POD_MESHED};
    out.directory[id] = WorkloadInfo{w.uid(), w.namespace_(), w.name(),
                                     w.owner().empty() ? w.name() : w.owner()};
    auto cg = pod_cgroup_ids.find(w.uid());
    if (cg == pod_cgroup_ids.end()) {
      out.warnings.push_back(absl::StrCat("meshed pod ", w.namespace_(), "/", w.name(), " (uid ",
                                          w.uid(), ") has no cgroup on this node yet"));
    } else {
      out.pods[cg->second] = shunt_pod{id, SHUNT_POD_MESHED};
    }
    // A hostNetwork pod's IPs are its node's: as an endpoint, every connection to the node
    // would be taken for one to the pod.
    for (const auto& ip : w.ips()) {
      if (w.host_network()) break;
      auto key = ParseIpKey(ip);
      if (key.ok()) out.endpoints[*key] = id;  // validated by the parser; skip defensively
    }
  }
  return out;
}

absl::Status ApplyPendingPods(const DesiredDataplane& desired, MapWriter& writer) {
  absl::Status first;
  ASSIGN_OR_RETURN(auto pending, writer.ListPendingPods());
  for (const auto& [uid, pod] : desired.pending) {
    auto it = pending.find(uid);
    if (it == pending.end() || it->second.workload_id != pod.workload_id ||
        it->second.flags != pod.flags) {
      absl::Status s = writer.UpsertPendingPod(uid, pod);
      if (!s.ok() && first.ok()) first = std::move(s);
    }
  }
  return first;
}

absl::Status ApplyDataplane(const DesiredDataplane& desired, MapWriter& writer) {
  absl::Status first;
  auto note = [&first](absl::Status s) {
    if (!s.ok() && first.ok()) first = std::move(s);
  };
  ASSIGN_OR_RETURN(auto pods, writer.ListPods());
  ASSIGN_OR_RETURN(auto pending, writer.ListPendingPods());
  std::set<uint32_t> pending_ids;
  for (const auto& [uid, pod] : desired.pending) pending_ids.insert(pod.workload_id);
  std::set<uint32_t> scanned_ids;  // pods whose cgroup the scan found
  for (const auto& [cg, pod] : desired.pods) scanned_ids.insert(pod.workload_id);
  ASSIGN_OR_RETURN(auto endpoints, writer.ListEndpoints());
  // Endpoints before pods: a socket is only inserted when its own pod is known, and then only if
  // its peer is; adding peers first means no half-known pair.
  for (const auto& [ip, id] : desired.endpoints) {
    auto it = endpoints.find(ip);
    if (it == endpoints.end() || it->second != id) note(writer.UpsertEndpoint(ip, id));
  }
  for (const auto& [cg, pod] : desired.pods) {
    auto it = pods.find(cg);
    if (it == pods.end() || it->second.workload_id != pod.workload_id ||
        it->second.flags != pod.flags) {
      note(writer.UpsertPod(cg, pod));
    }
  }
  for (const auto& [cg, pod] : pods) {
    if (desired.pods.count(cg)) continue;
    // Made by the tracepoint for a pod cgroup created after the scan: the next pass sees it.
    if (pending_ids.count(pod.workload_id) && !scanned_ids.count(pod.workload_id)) continue;
    note(writer.DeletePod(cg));
  }
  for (const auto& [ip, id] : endpoints) {
    if (!desired.endpoints.count(ip)) note(writer.DeleteEndpoint(ip));
  }
  for (const auto& [uid, pod] : pending) {
    if (!desired.pending.count(uid)) note(writer.DeletePendingPod(uid));
  }
  return first;
}

Reconciler::Reconciler(Options options, PolicyStore& store, MapWriter& writer)
    : options_(std::move(options)),
      store_(store),
      writer_(writer),
      loop_("reconcile", store, options_.resync, [this] { return ReconcileOnce(); }) {}

Reconciler::~Reconciler() { Stop(); }

absl::Status Reconciler::Start() {
  {
    // Recover ids from the pinned maps so that a restarted agent keeps the ids that live sockets
    // carry in their sk_storage.
    // Ids seen but no longer in use (their pods died while no agent ran) are not given out
    // again, and their counters go.
    absl::MutexLock l(&pass_mu_);
    auto pods = writer_.ListPods();
    auto pending = writer_.ListPendingPods();
    auto cgroups = FindPodCgroups(options_.cgroup_root);
    auto counted = writer_.CountedWorkloads();
    std::map<std::string, uint64_t> cgroup_ids;
    if (cgroups.ok()) {
      for (const auto& [uid, path] : *cgroups) {
        if (auto id = CgroupId(path); id.ok()) cgroup_ids[uid] = *id;
      }
    }
    RecoveredIds r =
        RecoverWorkloadIds(pods.ok() ? *pods : std::map<uint64_t, shunt_pod>{}, cgroup_ids,
                           counted.ok() ? *counted : std::set<uint32_t>{},
                           pending.ok() ? *pending : std::map<std::string, shunt_pod>{});
    for (const auto& [uid, id] : r.adopt) {
      ids_.Adopt(uid, id);
      live_[id] = uid;
    }
    ids_.StartAt(r.next);  // even when the pods could not be matched: no id is handed out twice
    // Only where every pod could be matched is an id without one known to be dead.
    if (pods.ok() && cgroups.ok() && cgroup_ids.size() == cgroups->size()) dead_ = std::move(r.dead);
  }
  absl::Status first = ReconcileOnce();
  loop_.Start();
  return first;
}

void Reconciler::Stop() { loop_.Stop(); }

absl::Status Reconciler::ReconcileOnce() {
  absl::MutexLock pass(&pass_mu_);
  auto snapshot = store_.Current();
  if (!snapshot) {
    absl::MutexLock l(&mu_);
    last_error_ = absl::UnavailableError("no policy yet");
    return last_error_;
  }
  // Pending pods before the scan: a pod cgroup created from now on gets its entry at mkdir, one
  // created before is in the scan. Their policy sources before them.
  BeforePendingFn before_pending;
  {
    absl::MutexLock l(&mu_);
    before_pending = before_pending_;
  }
  bool pending_written = false;
  if (before_pending && !before_pending(snapshot)) {
    SHUNT_LOG_EVERY_N_SEC(WARNING, 30)
        << "access policy not applied for this snapshot: pending pods left as they are";
  } else {
    DesiredDataplane pending = CompileLocalDataplane(*snapshot, options_.node_name, {}, ids_);
    if (absl::Status s = ApplyPendingPods(pending, writer_); !s.ok()) {
      SHUNT_LOG_EVERY_N_SEC(WARNING, 30) << "pending pods: " << s.message();
    } else {
      pending_written = true;
    }
  }
  std::map<std::string, uint64_t> cgroup_ids;
  auto cgroups = FindPodCgroups(options_.cgroup_root);
  if (!cgroups.ok()) {
    absl::MutexLock l(&mu_);
    last_error_ = cgroups.status();
    pass_version_ = snapshot->version;
    pending_written_ = pending_written;
    return last_error_;
  }
  for (const auto& [uid, path] : *cgroups) {
    auto id = CgroupId(path);
    if (id.ok()) cgroup_ids[uid] = *id;  // a pod cgroup removed meanwhile: next pass
  }
  DesiredDataplane desired = CompileLocalDataplane(*snapshot, options_.node_name, cgroup_ids, ids_);
  if (!desired.warnings.empty()) {
    SHUNT_LOG_EVERY_N_SEC(INFO, 30) << absl::StrJoin(desired.warnings, "; ");
  }
  absl::Status s = ApplyDataplane(desired, writer_);

  // Workloads that left: drop their ids and counters (their series disappear). After a failed
  // pass (a socket may still be put under an id the maps hold) the counters go on a later one.
  std::map<uint32_t, std::string> now;
  for (const auto& [id, info] : desired.directory) now[id] = info.uid;
  for (const auto& [id, uid] : live_) {
    if (!now.count(id)) {
      dead_.insert(id);
      ids_.Forget(uid);
    }
  }
  if (s.ok()) {
    for (auto it = dead_.begin(); it != dead_.end();) {
      if (now.count(*it)) {  // in use again (adopted): its counters are its own
        it = dead_.erase(it);
        continue;
      }
      it = writer_.DeleteStatsOf(*it).ok() ? dead_.erase(it) : std::next(it);
    }
  }
  // ids that were assigned but whose pod has no cgroup yet are kept by IdFor on the next pass.
  live_ = std::move(now);

  absl::MutexLock l(&mu_);
  directory_ = std::make_shared<const WorkloadDirectory>(std::move(desired.directory));
  last_error_ = s;
  pass_version_ = snapshot->version;
  pending_written_ = pending_written;
  if (s.ok()) synced_ = true;
  return s;
}

bool Reconciler::pending_written() const {
  absl::MutexLock l(&mu_);
  return pending_written_;
}

uint64_t Reconciler::pass_version() const {
  absl::MutexLock l(&mu_);
  return pass_version_;
}

void Reconciler::SetBeforePendingPods(BeforePendingFn fn) {
  absl::MutexLock l(&mu_);
  before_pending_ = std::move(fn);
}

bool Reconciler::synced() const {
  absl::MutexLock l(&mu_);
  return synced_;
}

absl::Status Reconciler::last_error() const {
  absl::MutexLock l(&mu_);
  return last_error_;
}

std::shared_ptr<const WorkloadDirectory> Reconciler::directory() const {
  absl::MutexLock l(&mu_);
  return directory_ ? directory_ : std::make_shared<const WorkloadDirectory>();
}

}  // namespace shunt::agent
