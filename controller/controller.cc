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
  // An agent's report of what it does not enforce changes the policies' status only.
  server_.SetEnforcementListener([this] {
    absl::MutexLock l(&mu_);
    status_dirty_ = true;
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
  server_.SetEnforcementListener(nullptr);
  if (thread_.joinable()) thread_.join();
}

void Controller::Loop() {
  while (true) {
    bool rebuild = false;
    {
      absl::MutexLock l(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || dirty_ || status_dirty_;
      };
      mu_.Await(absl::Condition(&wake));
      if (stop_) return;
      rebuild = dirty_;
    }
    // Let a burst of changes (a re-list, a directory reload) land first.
    absl::SleepFor(options_.coalesce);
    if (rebuild) {
      Rebuild();
    } else {
      // Agents' reports: at most one status pass per status_interval (each is a PATCH per
      // changed CR; 1000 agents ACKing one version would otherwise each start one).
      {
        absl::MutexLock l(&mu_);
        auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || dirty_; };
        mu_.AwaitWithDeadline(absl::Condition(&woken), last_status_pass_ + options_.status_interval);
        if (stop_) return;
        if (dirty_) continue;  // a rebuild writes the statuses too
      }
      std::vector<PolicyStatus> statuses;
      {
        absl::MutexLock l(&mu_);
        status_dirty_ = false;
        statuses = statuses_;
        last_status_pass_ = absl::Now();
      }
      WriteStatuses(std::move(statuses));
    }
  }
}

void Controller::WriteStatuses(std::vector<PolicyStatus> statuses) {
  const PolicyServer::Enforcement enforcement = server_.NotEnforced();
  const auto& not_enforced = enforcement.not_enforced;
  std::map<ObjectKey, std::string> written;
  std::map<ObjectKey, int64_t> settled;
  {
    absl::MutexLock l(&mu_);
    written = written_status_;
    settled = settled_generation_;
  }
  std::map<ObjectKey, std::string> now;
  std::map<ObjectKey, int64_t> settled_now;
  for (auto& st : statuses) {
    // What agents report of the policies they enforce (AccessPolicy in the kernel,
    // ApiCostPolicy in the relay).
    if (st.accepted && (st.key.kind == Kind::kAccessPolicy || st.key.kind == Kind::kApiCostPolicy)) {
      if (auto it = not_enforced.find(st.resource_key); it != not_enforced.end()) {
        st.not_enforced = it->second;
      }
      // A node none of whose access policies is known enforced (its maps not written yet).
      if (auto it = not_enforced.find(PolicyServer::kEveryAccessPolicy);
          st.key.kind == Kind::kAccessPolicy && it != not_enforced.end()) {
        for (const auto& [node, why] : it->second) {
          std::string& r = st.not_enforced[node];
          absl::StrAppend(&r, r.empty() ? "" : "; ", why);
        }
      }
      // A generation no report covers yet (some agents have not ACKed the version that brought
      // it): Unknown, rather than True because nobody said otherwise. Once every reporting agent
      // ACKed a version with it, that generation is settled for good.
      auto s = settled.find(st.key);
      if (enforcement.pending_agents == 0) {
        settled_now[st.key] = st.observed_generation;
      } else if (s != settled.end() && s->second == st.observed_generation) {
        settled_now[st.key] = s->second;
      } else {
        st.enforcement_pending = enforcement.pending_agents;
      }
    }
    std::string sig = absl::StrCat(st.accepted, "|", st.reason, "|", st.message, "|",
                                   st.observed_generation, "|", st.enforcement_pending > 0);
    for (const auto& [node, why] : st.not_enforced) absl::StrAppend(&sig, "|", node, "=", why);
    now[st.key] = sig;
    if (written.count(st.key) && written[st.key] == sig) continue;
    if (!st.accepted) {
      SHUNT_LOG(WARNING) << ToString(st.key) << " not accepted (" << st.reason
                         << "): " << st.message;
    } else if (!st.not_enforced.empty()) {
      SHUNT_LOG(WARNING) << ToString(st.key) << " not enforced on " << st.not_enforced.size()
                         << " nodes, e.g. " << st.not_enforced.begin()->first << ": "
                         << st.not_enforced.begin()->second;
    }
    if (status_writer_) {
      absl::Status s = status_writer_->Write(st);
      if (!s.ok()) {
        SHUNT_LOG_EVERY_N_SEC(WARNING, 10)
            << "status of " << ToString(st.key) << ": " << s.message();
        now.erase(st.key);  // retried on the next rebuild or report
      }
    }
  }
  absl::MutexLock l(&mu_);
  written_status_ = std::move(now);
  settled_generation_ = std::move(settled_now);
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

  {
    absl::MutexLock l(&mu_);
    statuses_ = snap.statuses;
    status_dirty_ = false;
  }
  WriteStatuses(std::move(snap.statuses));
  // Never call the server with mu_ held: its enforcement listener takes mu_.
  SHUNT_LOG(DEBUG) << "snapshot " << server_.current_version() << ": " << n << " resources, "
                   << "source change seen " << absl::FormatDuration(t0 - changed_at)
                   << " before the rebuild, build " << absl::FormatDuration(t1 - t0)
                   << ", publish " << absl::FormatDuration(t2 - t1);
  absl::MutexLock l(&mu_);
  warnings_ = std::move(snap.warnings);
  built_generation_ = generation;
  ++rebuilds_;
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
