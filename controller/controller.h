// shunt-controller's core loop: watches ClusterState, rebuilds the snapshot when it changes
// (coalescing bursts), publishes it to the agents through PolicyServer and reports each CR's
// outcome through a StatusWriter (only when it changed).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "controller/cluster_state.h"
#include "controller/policy_server.h"
#include "controller/snapshot_builder.h"

namespace shunt::controller {

class Controller {
 public:
  struct Options {
    absl::Duration coalesce = absl::Milliseconds(5);  // wait for more changes before a rebuild
    // At most one status pass this often for agents' enforcement reports alone.
    absl::Duration status_interval = absl::Seconds(1);
  };
  // `status_writer` may be null.
  Controller(Options options, ClusterState& state, PolicyServer& server,
             StatusWriter* status_writer);
  ~Controller();  // Stop()

  void Start();
  void Stop();
  // Rebuilds and publishes now (tests; the loop calls it).
  void Rebuild();
  // Writes what changed of `statuses`, with what the agents report they do not enforce.
  void WriteStatuses(std::vector<PolicyStatus> statuses);
  uint64_t rebuilds() const;
  std::vector<std::string> last_warnings() const;

 private:
  void Loop();

  Options options_;
  ClusterState& state_;
  PolicyServer& server_;
  StatusWriter* status_writer_;
  int subscription_ = -1;
  std::thread thread_;

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool dirty_ ABSL_GUARDED_BY(mu_) = true;
  bool status_dirty_ ABSL_GUARDED_BY(mu_) = false;  // an agent's enforcement report changed
  std::vector<PolicyStatus> statuses_ ABSL_GUARDED_BY(mu_);  // of the last rebuild
  absl::Time last_status_pass_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // Per access policy: the generation every reporting agent had ACKed a version of when its
  // status was last written.
  std::map<ObjectKey, int64_t> settled_generation_ ABSL_GUARDED_BY(mu_);
  absl::Time first_change_ ABSL_GUARDED_BY(mu_) = absl::Now();
  uint64_t rebuilds_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t built_generation_ ABSL_GUARDED_BY(mu_) = ~uint64_t{0};
  std::vector<std::string> warnings_ ABSL_GUARDED_BY(mu_);
  std::map<ObjectKey, std::string> written_status_ ABSL_GUARDED_BY(mu_);
  SnapshotBuilder builder_;  // only the loop thread (Rebuild) uses it
};

}  // namespace shunt::controller
