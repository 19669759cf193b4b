#include "agent/policy/policy_store.h"

#include <utility>

#include "common/log.h"

namespace shunt::agent {

std::vector<const shunt::v1::Workload*> PolicySnapshot::LocalWorkloads(
    std::string_view node_name) const {
  std::vector<const shunt::v1::Workload*> out;
  for (const shunt::v1::Workload& w : bundle.workloads()) {
    if (w.node() == node_name) out.push_back(&w);
  }
  return out;
}

void PolicyStore::Apply(std::string_view source, absl::StatusOr<shunt::v1::PolicyBundle> update) {
  if (!update.ok()) {
    uint64_t kept_version = 0;
    {
      absl::MutexLock lock(&mu_);
      ++errors_total_;
      last_error_ = update.status();
      if (current_ != nullptr) kept_version = current_->version;
    }
    SHUNT_LOG(ERROR) << "policy update from " << source
                     << " rejected: " << update.status().message()
                     << (kept_version == 0
                             ? std::string("; no policy in force yet")
                             : "; version " + std::to_string(kept_version) + " stays in force");
    return;
  }

  absl::MutexLock notify_lock(&notify_mu_);
  auto next = std::make_shared<PolicySnapshot>();
  next->source = std::string(source);
  next->applied_at = absl::Now();
  next->bundle = *std::move(update);
  {
    absl::MutexLock lock(&mu_);
    next->version = (current_ == nullptr ? 0 : current_->version) + 1;
    current_ = next;
    last_error_ = absl::OkStatus();
  }
  SHUNT_LOG(INFO) << "policy version " << next->version << " from " << source << ": "
                  << next->bundle.workloads_size() << " workloads";
  Notify(next);
}

void PolicyStore::Notify(const PolicySnapshotPtr& snapshot) {
  std::vector<std::pair<int, std::shared_ptr<const SubscriberFn>>> subscribers;
  {
    absl::MutexLock lock(&mu_);
    notifying_thread_ = std::this_thread::get_id();
    subscribers.assign(subscribers_.begin(), subscribers_.end());
  }
  for (const auto& [id, fn] : subscribers) {
    {
      absl::MutexLock lock(&mu_);
      if (!subscribers_.contains(id)) continue;  // unsubscribed by an earlier callback
    }
    (*fn)(snapshot);
  }
  absl::MutexLock lock(&mu_);
  notifying_thread_ = std::thread::id();
}

bool PolicyStore::InNotification() const {
  absl::MutexLock lock(&mu_);
  return notifying_thread_ == std::this_thread::get_id();
}

int PolicyStore::Subscribe(SubscriberFn fn) {
  // From within a callback this thread already holds notify_mu_ (and orders notifications).
  const bool nested = InNotification();
  if (!nested) notify_mu_.Lock();
  auto shared = std::make_shared<const SubscriberFn>(std::move(fn));
  int id;
  PolicySnapshotPtr current;
  {
    absl::MutexLock lock(&mu_);
    id = next_subscriber_id_++;
    subscribers_.emplace(id, shared);
    current = current_;
  }
  if (current != nullptr) (*shared)(current);
  if (!nested) notify_mu_.Unlock();
  return id;
}

void PolicyStore::Unsubscribe(int id) {
  // Waiting for notify_mu_ guarantees that no notification of `id` is still running afterwards.
  const bool nested = InNotification();
  if (!nested) notify_mu_.Lock();
  {
    absl::MutexLock lock(&mu_);
    subscribers_.erase(id);
  }
  if (!nested) notify_mu_.Unlock();
}

PolicySnapshotPtr PolicyStore::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

uint64_t PolicyStore::errors_total() const {
  absl::MutexLock lock(&mu_);
  return errors_total_;
}

absl::Status PolicyStore::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

bool PolicyStore::has_policy() const {
  absl::MutexLock lock(&mu_);
  return current_ != nullptr;
}

}  // namespace shunt::agent
