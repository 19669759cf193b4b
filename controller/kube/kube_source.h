// The controller's Kubernetes source: list + watch of every kind the controller handles, fed into
// ClusterState, and the status writer that reports each policy CR's outcome on its status
// subresource. main() builds a KubeClient, hands it to both, and starts the source.
//
// One thread per kind: list (ClusterState::Replace), then watch from the list's resourceVersion.
// ADDED/MODIFIED upsert, DELETED removes, BOOKMARK only moves the resourceVersion. A watch that
// ends or drops resumes from the last resourceVersion seen; 410 Gone re-lists. Errors back off
// exponentially with jitter. A resource that is not served (404: a CRD not installed yet) counts
// as listed and empty, is logged once and retried with backoff until it appears.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "controller/cluster_state.h"
#include "controller/kube/kube_client.h"

namespace shunt::controller {

struct KubernetesSourceOptions {
  std::string name = "kubernetes";  // the source name objects are stored under
  std::vector<Kind> kinds{std::begin(kAllKinds), std::end(kAllKinds)};
  absl::Duration initial_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(30);
  // Start() waits at most this long for the first list of every kind.
  absl::Duration start_timeout = absl::Seconds(60);
  int watch_timeout_seconds = 300;  // asked of the server; the watch is then resumed
  // Objects per list request (limit/continue), as client-go's reflector pages its lists: a
  // cluster's 50000 pods are not one response held whole by the API server and by us.
  int64_t list_page_size = 500;
};

class KubernetesSource : public ClusterSource {
 public:
  // Plain counters, for metrics and tests.
  struct Counters {
    std::atomic<uint64_t> lists{0};           // every list, the first ones included
    std::atomic<uint64_t> relists{0};         // lists after a kind's first (410 Gone)
    std::atomic<uint64_t> watch_restarts{0};  // watches opened again after one ended or dropped
    std::atomic<uint64_t> events{0};          // ADDED, MODIFIED and DELETED applied
    std::atomic<uint64_t> bookmarks{0};
    std::atomic<uint64_t> errors{0};  // failed lists and watches
  };

  // The source owns its client: Stop() stops it (give the status writer a client of its own).
  KubernetesSource(std::unique_ptr<KubeClient> client, KubernetesSourceOptions options = {});
  ~KubernetesSource() override;
  KubernetesSource(const KubernetesSource&) = delete;
  KubernetesSource& operator=(const KubernetesSource&) = delete;

  absl::string_view name() const override { return options_.name; }
  // Starts one thread per kind and waits (up to start_timeout) until every kind is listed.
  // DeadlineExceeded if that takes longer; the threads keep trying until Stop().
  absl::Status Start(ClusterState& state) override;
  void Stop() override;
  bool synced() const override;

  const Counters& counters() const { return counters_; }
  // The resourceVersion a watch of `kind` would resume from ("" before the first list).
  std::string resource_version(Kind kind) const;

 private:
  void Run(Kind kind);
  // Sleeps `d` unless stopped first; false if stopped.
  bool SleepUnlessStopped(absl::Duration d);
  bool stopping() const;
  void SetResourceVersion(Kind kind, const std::string& rv);

  const std::unique_ptr<KubeClient> client_;
  const KubernetesSourceOptions options_;
  ClusterState* state_ = nullptr;
  std::vector<std::thread> threads_;
  Counters counters_;

  mutable absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  size_t listed_kinds_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<Kind, std::string> resource_versions_ ABSL_GUARDED_BY(mu_);
};

// Writes status.conditions of policy CRs through the status subresource: Accepted (the controller
// took the spec) and, for accepted AccessPolicies, Enforced (no connected agent reports it does not enforce
// it as written; False says on which nodes and why). A condition's lastTransitionTime moves only
// when its status flips (as far as this writer knows).
class KubernetesStatusWriter : public StatusWriter {
 public:
  explicit KubernetesStatusWriter(std::shared_ptr<KubeClient> client,
                                  std::function<absl::Time()> now = &absl::Now);
  absl::Status Write(const PolicyStatus& status) override;

  // The merge patch Write sends (exposed for tests).
  static nlohmann::json ConditionsPatch(const PolicyStatus& status, absl::Time transition,
                                        absl::Time enforced_transition = absl::InfinitePast());

 private:
  const std::shared_ptr<KubeClient> client_;
  const std::function<absl::Time()> now_;
  absl::Mutex mu_;
  // Last written Accepted and Enforced values and their transition times, per object.
  struct Written {
    bool accepted = false;
    absl::Time accepted_at;
    std::string enforced;  // True, False, Unknown
    absl::Time enforced_at;
  };
  std::map<ObjectKey, Written> last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shunt::controller
