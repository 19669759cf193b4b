#include "controller/controller.h"

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace shunt::controller {

Controller::Controller(Options options, ClusterState& state, PolicyServer& server,
                       StatusWriter* status_writer)
    : options_(options), state_(state), server_(server), status_writer_(status_writer) {}

Controller::~Controller() { Stop(); }

void Controller::Start() {
  subscription_ = state_.Subscribe([this] {
    absl::MutexLock l(&mu_);
    if (!dirty_) first_change_ = absl::Now();
    dirty_ = true;
  });
  thread_ = std::thread([this] { Loop(); });
}

void Controller::Stop() {
  {
    absl::MutexLock l(&mu_);
    if (stop_) return;
    stop_ = true;
  }
  if (subscription_ >= 0) state_.Unsubscribe(subscription_);
  if (thread_.joinable()) thread_.join();
}

void Controller::Loop() {
  while (true) {
    {
      absl::MutexLock l(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || dirty_; };
      mu_.Await(absl::Condition(&wake));
      if (stop_) return;
    }
    // Let a burst of changes (a re-list, a directory reload) land before rebuilding.
    absl::SleepFor(options_.coalesce);
    Rebuild();
  }
}

void Controller::Rebuild() {
  absl::Time changed_at;
  {
    absl::MutexLock l(&mu_);
    changed_at = first_change_;
    dirty_ = false;
  }
  const uint64_t generation = state_.generation();
  const absl::Time t0 = absl::Now();
  auto objects = state_.Objects();
  Snapshot snap = builder_.Build(*objects);
  const absl::Time t1 = absl::Now();
  for (const auto& w : snap.warnings) SHUNT_LOG_EVERY_N_SEC(WARNING, 30) << w;
  const size_t n = snap.resources.size();
  server_.Publish(std::move(snap.resources), changed_at);
  const absl::Time t2 = absl::Now();

  std::map<ObjectKey, std::string> written;
  {
    absl::MutexLock l(&mu_);
    written = written_status_;
  }
  std::map<ObjectKey, std::string> now;
  for (const auto& st : snap.statuses) {
    const std::string sig =
        absl::StrCat(st.accepted, "|", st.reason, "|", st.message, "|", st.observed_generation);
    now[st.key] = sig;
    if (written.count(st.key) && written[st.key] == sig) continue;
    if (!st.accepted) {
      SHUNT_LOG(WARNING) << ToString(st.key) << " not accepted (" << st.reason
                         << "): " << st.message;
    }
    if (status_writer_) {
      absl::Status s = status_writer_->Write(st);
      if (!s.ok()) {
        SHUNT_LOG_EVERY_N_SEC(WARNING, 10)
            << "status of " << ToString(st.key) << ": " << s.message();
        now.erase(st.key);  // retried on the next rebuild
      }
    }
  }
  absl::MutexLock l(&mu_);
  written_status_ = std::move(now);
  warnings_ = std::move(snap.warnings);
  built_generation_ = generation;
  ++rebuilds_;
  SHUNT_LOG(DEBUG) << "snapshot " << server_.current_version() << ": " << n << " resources, "
                   << "source change seen " << absl::FormatDuration(t0 - changed_at)
                   << " before the rebuild, build " << absl::FormatDuration(t1 - t0)
                   << ", publish " << absl::FormatDuration(t2 - t1);
}

uint64_t Controller::rebuilds() const {
  absl::MutexLock l(&mu_);
  return rebuilds_;
}

std::vector<std::string> Controller::last_warnings() const {
  absl::MutexLock l(&mu_);
  return warnings_;
}

}  // namespace shunt::controller
