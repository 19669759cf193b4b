// The loop every kernel-state reconciler runs: a pass on each policy change and every `resync`
// (new pod cgroups appear without a policy change), on a thread of its own, until Stop().
#pragma once

#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/policy/policy_store.h"

namespace shunt::agent {

class ReconcileLoop {
 public:
  // `pass` runs on the loop's thread; its errors are logged (rate-limited) under `name`.
  ReconcileLoop(std::string name, PolicyStore& store, absl::Duration resync,
                std::function<absl::Status()> pass);
  ~ReconcileLoop();  // Stop()
  ReconcileLoop(const ReconcileLoop&) = delete;
  ReconcileLoop& operator=(const ReconcileLoop&) = delete;

  void Start();  // subscribes to the store and starts the thread
  void Stop();   // idempotent; joins the thread

 private:
  void Run();

  const std::string name_;
  PolicyStore& store_;
  const absl::Duration resync_;
  const std::function<absl::Status()> pass_;
  int subscription_ = -1;
  std::thread thread_;

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool dirty_ ABSL_GUARDED_BY(mu_) = true;
};

}  // namespace shunt::agent
