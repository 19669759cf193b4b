// Keeps every meshed pod of this node captured (docs/capture.md): for each one with a running
// process, its network namespace (through /proc/<pid>/ns/net of a process of its cgroup) gets the
// capture table and routes, and transparent listeners (IPv4, IPv6) there are served by the relay.
// A pod that leaves the mesh, or the node, is released (table, routes and listeners removed);
// a pod whose namespace changed (a new sandbox) is captured again.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/capture/handoff.h"
#include "agent/capture/pod_capture.h"
#include "agent/dataplane/reconcile_loop.h"
#include "agent/metrics/cost_metrics.h"
#include "agent/metrics/request_metrics.h"
#include "agent/policy/policy_store.h"
#include "agent/proxy/tcp_relay.h"
#include "common/unique_fd.h"

namespace shunt::agent {

class CaptureReconciler {
 public:
  struct Options {
    std::string node_name;
    std::string cgroup_root;
    absl::Duration resync = absl::Seconds(1);
    // skip_sources: the node's own addresses are added; mesh_sources: set by each pass (the
    // node's meshed pods).
    CaptureOptions capture;
    // Listeners handed over by the agent this one replaces (handoff.h): a pod found in the same
    // namespace is served on them instead of new ones; those not taken by the first pass close.
    std::vector<HandedListener> inherited;
    // Called after a pass that changed the set of listeners, with duplicates of all of them (the
    // supervisor keeps them across a crash of this process: supervisor.h).
    std::function<void(std::vector<HandedListener>)> on_listeners;
    // Where the requests read at L7 are recorded (null: nowhere).
    std::shared_ptr<metrics::RequestMetrics> requests;
    // ... and the connections it relays (null: not counted).
    std::shared_ptr<metrics::ConnectionMetrics> connections;
    // ... and what each calling pod spent on priced Services (null: not accounted).
    std::shared_ptr<metrics::CostMetrics> costs;
  };
  CaptureReconciler(Options options, PolicyStore& store, TcpRelay& relay);
  ~CaptureReconciler();  // Stop(); what is captured stays (a restarted agent takes it over)

  absl::Status Start();
  void Stop();
  absl::Status ReconcileOnce();
  // Releases every pod it captured (uninstall).
  void ReleaseAll();
  // For the agent replacing this one: stops (no pass from now on), stops serving its listeners and
  // returns them (duplicates), the pods' tables left as they are. The relay goes on with the
  // connections it has.
  std::vector<HandedListener> Surrender();
  size_t captured_pods() const;
  // Whether pod `uid`'s inbound connections are captured now (as of the last pass) and its
  // table sends each of `l7_ports` (the ports its policy wants read request by request) to the
  // proxy: one the table does not have yet (a new policy, a failed refresh) is not covered.
  bool IsCaptured(const std::string& uid, const std::vector<std::string>& l7_ports = {}) const;
  // Connections refused where they arrived, by (source namespace, source workload, destination
  // pod, policy); unknown sources have empty names.
  using DeniedKey = std::tuple<std::string, std::string, std::string, std::string>;
  std::map<DeniedKey, uint64_t> denied() const;
  // Open connections closed because a policy change denied them, by the same key.
  std::map<DeniedKey, uint64_t> closed_by_policy() const;
  // HTTP requests answered 403 by an L7 rule, by the same labels.
  std::map<DeniedKey, uint64_t> denied_requests() const;

  // Removes the capture from the namespace of every pod found under `cgroup_root` (uninstall,
  // without an agent running).
  static absl::Status RemoveFromAllPods(const std::string& cgroup_root, const CaptureOptions& o);

 private:
  struct Pod {
    std::shared_ptr<UniqueFd> netns;  // shared with the relay's decisions
    ino_t netns_ino = 0;
    std::vector<int> listeners;
    std::vector<int> families;  // of each listener
    uint64_t group = 0;  // of its listeners in the relay
    std::vector<std::string> mesh_sources;  // as its table has them
    std::vector<std::string> l7_ports;      // as its table has them
    std::vector<std::string> want_l7_ports;  // as the pass's policy has them
    std::string ns, name;                    // the pod's (its series go with it)
  };
  CaptureOptions ForPod(const Pod& pod) const;
  absl::Status Capture(const std::string& uid, const std::string& cgroup,
                       const std::vector<std::string>& ips, Pod& pod);
  // A captured pod's table again, with the pass's meshed pods.
  absl::Status Refresh(const std::string& uid, Pod& pod);
  // Stops capturing new connections; the pod's table, rules and routes go once the relay
  // carries none of its connections any more (until then their replies still need them).
  void Release(const std::string& uid, Pod& pod);
  void FinishReleases();

  Options options_;
  PolicyStore& store_;
  TcpRelay& relay_;
  ReconcileLoop loop_;
  absl::Mutex pass_mu_;
  std::map<std::string, Pod> pods_ ABSL_GUARDED_BY(pass_mu_);
  std::vector<std::pair<std::string, Pod>> releasing_ ABSL_GUARDED_BY(pass_mu_);
  uint64_t next_group_ ABSL_GUARDED_BY(pass_mu_) = 1;
  uint64_t costs_retained_version_ ABSL_GUARDED_BY(pass_mu_) = 0;
  uint64_t rechecked_version_ ABSL_GUARDED_BY(pass_mu_) = 0;  // the policy open connections had
  // The listeners last given to on_listeners: (pod, namespace, family, descriptor).
  // None before the first pass: that one always publishes (an empty set too: what a supervisor
  // kept for pods gone while no agent ran is let go).
  std::optional<std::vector<std::tuple<std::string, ino_t, int, int>>> published_
      ABSL_GUARDED_BY(pass_mu_);
  // Duplicates of every listener of pods_.
  std::vector<HandedListener> DuplicateListeners() ABSL_EXCLUSIVE_LOCKS_REQUIRED(pass_mu_);
  mutable absl::Mutex mu_;
  size_t captured_ ABSL_GUARDED_BY(mu_) = 0;
  // Captured pods, each with the L7 ports its table has.
  std::map<std::string, std::set<std::string>> captured_uids_ ABSL_GUARDED_BY(mu_);
  // Shared with the relay's decisions (they may run after this reconciler went).
  struct Denied {
    absl::Mutex mu;
    std::map<DeniedKey, uint64_t> counts ABSL_GUARDED_BY(mu);
    std::map<DeniedKey, uint64_t> closed ABSL_GUARDED_BY(mu);
    std::map<DeniedKey, uint64_t> requests ABSL_GUARDED_BY(mu);
    // Bounded: a flood of sources does not grow the agent without end.
    void Count(std::map<DeniedKey, uint64_t>& into, DeniedKey key)
        ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      if (into.size() < 10000 || into.count(key)) {
        ++into[std::move(key)];
      } else {
        ++into[{"", "other", "other", "other"}];
      }
    }
  };
  std::shared_ptr<Denied> denied_ = std::make_shared<Denied>();
};

// Of the Services that serve a pod's port (sorted), the one a request names in its Host or
// :authority ("name", "name.ns", "name.ns.svc", "name.ns.svc.<cluster domain>"), else the first;
// ("", "") for none. Never the authority itself: only a name from policy.
std::pair<std::string, std::string> ServiceByAuthority(
    const std::vector<std::pair<std::string, std::string>>& services, std::string_view authority);

// A process of the cgroup at `dir` or below (0: none yet).
pid_t AnyProcessOf(const std::string& dir);
// Up to `max` processes of the cgroup at `dir` or below.
std::vector<pid_t> ProcessesOf(const std::string& dir, size_t max = 64);
// Every address of the calling thread's network namespace (the node's, for the agent).
std::vector<std::string> LocalAddresses();

}  // namespace shunt::agent
