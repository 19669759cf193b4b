#include "agent/dataplane/reconcile_loop.h"

#include "common/log.h"

namespace shunt::agent {

ReconcileLoop::ReconcileLoop(std::string name, PolicyStore& store, absl::Duration resync,
                             std::function<absl::Status()> pass)
    : name_(std::move(name)), store_(store), resync_(resync), pass_(std::move(pass)) {}

ReconcileLoop::~ReconcileLoop() { Stop(); }

void ReconcileLoop::Start() {
  subscription_ = store_.Subscribe([this](PolicySnapshotPtr) {
    absl::MutexLock l(&mu_);
    dirty_ = true;
  });
  thread_ = std::thread([this] { Run(); });
}

void ReconcileLoop::Stop() {
  {
    absl::MutexLock l(&mu_);
    if (stop_) return;
    stop_ = true;
  }
  if (subscription_ >= 0) store_.Unsubscribe(subscription_);
  if (thread_.joinable()) thread_.join();
}

void ReconcileLoop::Run() {
  while (true) {
    {
      absl::MutexLock l(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || dirty_; };
      mu_.AwaitWithTimeout(absl::Condition(&wake), resync_);
      if (stop_) return;
      dirty_ = false;
    }
    absl::Status s = pass_();
    if (!s.ok()) {
      SHUNT_LOG_EVERY_N_SEC(WARNING, 10) << name_ << ": " << s.message();
    }
  }
}

}  // namespace shunt::agent
