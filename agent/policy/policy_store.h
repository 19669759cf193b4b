// The agent's policy store: the last good PolicyBundle, versioned, and who wants to hear of it.
//
// Sources (the --policy-file, later the controller's stream) push updates with Apply(); consumers
// (the compiler to BPF maps, the proxy tables, /readyz, metrics) read Current() or Subscribe(). A
// bad update never replaces a good one: it is logged, counted (shunt_policy_errors_total) and kept
// as last_error() for /readyz, while the previous snapshot stays in force.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "shunt/v1/workload.pb.h"

namespace shunt::agent {

// One accepted version of the policy. Immutable once published; shared as
// std::shared_ptr<const PolicySnapshot>.
struct PolicySnapshot {
  uint64_t version = 0;   // 1 for the first good update, +1 for each one after
  std::string source;     // PolicySource::name() of the update, e.g. "file:/etc/shunt/policy.yaml"
  absl::Time applied_at;  // when the store accepted it
  shunt::v1::PolicyBundle bundle;

  // The workloads scheduled on `node_name` (Workload.node == node_name), in bundle order. The
  // pointers point into `bundle`: valid as long as this snapshot is.
  std::vector<const shunt::v1::Workload*> LocalWorkloads(std::string_view node_name) const;

  // Lookups derived from `bundle`, built once on first use by whoever needs them (the relay's
  // per-connection and per-request policy: service_policy.cc), then shared by every reader. A
  // snapshot is not changed once shared; a copy starts without them.
  struct Derived {
    Derived() = default;
    Derived(const Derived&) {}
    Derived& operator=(const Derived&) {
      absl::MutexLock l(&mu);
      value.reset();
      return *this;
    }
    absl::Mutex mu;
    std::shared_ptr<const void> value ABSL_GUARDED_BY(mu);
  };
  mutable Derived derived;
};

using PolicySnapshotPtr = std::shared_ptr<const PolicySnapshot>;

// Where policy comes from. Implementations: FilePolicySource (--policy-file); the controller's
// gRPC stream comes next.
class PolicySource {
 public:
  // Receives each new state of the source: a parsed and validated bundle, or why there is none.
  // Called from the source's own thread (or from Start); must not call Stop().
  using UpdateFn = std::function<void(absl::StatusOr<shunt::v1::PolicyBundle>)>;

  virtual ~PolicySource() = default;
  // Identifies the source in logs, metrics and PolicySnapshot::source.
  virtual std::string_view name() const = 0;
  // Begins watching. Where possible, reports the initial state (or an error) through `on_update`
  // before returning. An error return means the source could not start at all; a bad initial
  // state is reported through `on_update` instead.
  virtual absl::Status Start(UpdateFn on_update) = 0;
  // Stops watching; no `on_update` call runs after it returns. Idempotent.
  virtual void Stop() = 0;
};

using PolicySourcePtr = std::unique_ptr<PolicySource>;

// Thread-safe. Subscribers are called outside the store's lock, one notification at a time and in
// version order, on the thread that called Apply() (or Subscribe(), for the replay).
class PolicyStore {
 public:
  using SubscriberFn = std::function<void(PolicySnapshotPtr)>;

  PolicyStore() = default;
  PolicyStore(const PolicyStore&) = delete;
  PolicyStore& operator=(const PolicyStore&) = delete;

  // An OK update becomes the current snapshot (version + 1), clears last_error() and is passed to
  // every subscriber. An error keeps the current snapshot, becomes last_error() and counts in
  // errors_total(). `source` names the origin (PolicySource::name()). Subscribers must not call
  // Apply().
  void Apply(std::string_view source, absl::StatusOr<shunt::v1::PolicyBundle> update);

  // The snapshot in force; nullptr before the first good update.
  PolicySnapshotPtr Current() const;

  // Registers `fn` and, if there is a snapshot already, calls it with that one before returning,
  // so that a consumer that subscribes late misses nothing. Returns an id for Unsubscribe().
  int Subscribe(SubscriberFn fn) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // After it returns, `fn` is not called again (unless called from within a notification on the
  // same thread, where the running callback finishes). Unknown ids are ignored.
  void Unsubscribe(int id) ABSL_NO_THREAD_SAFETY_ANALYSIS;

  // Number of rejected updates since start (exported as shunt_policy_errors_total).
  uint64_t errors_total() const;
  // The error of the most recent update if it was rejected; OK after a good one (and at start).
  absl::Status last_error() const;
  // Whether a good update has ever been applied (for /readyz).
  bool has_policy() const;

 private:
  void Notify(const PolicySnapshotPtr& snapshot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(notify_mu_);
  // Whether this thread is running subscribers (and so already holds notify_mu_).
  bool InNotification() const;

  // Held while subscribers run: orders notifications and lets Unsubscribe wait for a running one.
  // Always taken before mu_.
  absl::Mutex notify_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::thread::id notifying_thread_ ABSL_GUARDED_BY(mu_);

  mutable absl::Mutex mu_;
  PolicySnapshotPtr current_ ABSL_GUARDED_BY(mu_);
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);
  uint64_t errors_total_ ABSL_GUARDED_BY(mu_) = 0;
  int next_subscriber_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<int, std::shared_ptr<const SubscriberFn>> subscribers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shunt::agent
