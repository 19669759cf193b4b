#include "controller/kube/kube_source.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/log.h"

namespace shunt::controller {
namespace {

// "/api/v1" -> "v1", "/apis/discovery.k8s.io/v1" -> "discovery.k8s.io/v1".
std::string ApiVersionOf(const ApiResource& resource) {
  absl::string_view path = resource.group_version_path;
  if (!absl::ConsumePrefix(&path, "/apis/")) absl::ConsumePrefix(&path, "/api/");
  return std::string(path);
}

// List items (and, defensively, events) may come without apiVersion/kind; KeyOf needs them.
void FillTypeMeta(nlohmann::json& object, const std::string& api_version, Kind kind) {
  if (!object.is_object()) return;
  if (!object.contains("apiVersion") || !object["apiVersion"].is_string()) {
    object["apiVersion"] = api_version;
  }
  if (!object.contains("kind") || !object["kind"].is_string()) object["kind"] = KindName(kind);
}

std::string ResourceVersionOf(const nlohmann::json& object) {
  if (!object.is_object() || !object.contains("metadata")) return "";
  const nlohmann::json& md = object["metadata"];
  if (!md.is_object() || !md.contains("resourceVersion") || !md["resourceVersion"].is_string()) {
    return "";
  }
  return md["resourceVersion"].get<std::string>();
}

}  // namespace

KubernetesSource::KubernetesSource(std::unique_ptr<KubeClient> client,
                                   KubernetesSourceOptions options)
    : client_(std::move(client)), options_(std::move(options)) {}

KubernetesSource::~KubernetesSource() { Stop(); }

absl::Status KubernetesSource::Start(ClusterState& state) {
  {
    absl::MutexLock l(&mu_);
    if (started_) return absl::FailedPreconditionError("KubernetesSource already started");
    started_ = true;
  }
  state_ = &state;
  for (Kind kind : options_.kinds) threads_.emplace_back([this, kind] { Run(kind); });

  absl::MutexLock l(&mu_);
  auto done = [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return stopping_ || listed_kinds_ >= options_.kinds.size();
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), options_.start_timeout)) {
    return absl::DeadlineExceededError(absl::StrCat("Kubernetes: ", listed_kinds_, " of ",
                                                    options_.kinds.size(), " kinds listed after ",
                                                    absl::FormatDuration(options_.start_timeout)));
  }
  if (stopping_) return absl::CancelledError("KubernetesSource stopped while starting");
  SHUNT_LOG(INFO) << "kube: listed " << listed_kinds_ << " kinds; watching";
  return absl::OkStatus();
}

void KubernetesSource::Stop() {
  {
    absl::MutexLock l(&mu_);
    stopping_ = true;
  }
  client_->Stop();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

bool KubernetesSource::synced() const {
  absl::MutexLock l(&mu_);
  return listed_kinds_ >= options_.kinds.size();
}

std::string KubernetesSource::resource_version(Kind kind) const {
  absl::MutexLock l(&mu_);
  auto it = resource_versions_.find(kind);
  return it == resource_versions_.end() ? "" : it->second;
}

bool KubernetesSource::stopping() const {
  absl::MutexLock l(&mu_);
  return stopping_;
}

bool KubernetesSource::SleepUnlessStopped(absl::Duration d) {
  absl::MutexLock l(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&stopping_), d);
  return !stopping_;
}

void KubernetesSource::SetResourceVersion(Kind kind, const std::string& rv) {
  absl::MutexLock l(&mu_);
  resource_versions_[kind] = rv;
}

void KubernetesSource::Run(Kind kind) {
  const ApiResource resource = ApiResourceOf(kind);
  const std::string api_version = ApiVersionOf(resource);
  const std::string what = absl::StrCat(resource.group_version_path, "/", resource.plural);
  std::mt19937_64 rng(std::random_device{}());
  absl::Duration backoff = options_.initial_backoff;
  auto back_off = [&]() {
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    const absl::Duration d = backoff * jitter(rng);
    backoff = std::min(backoff * 2, options_.max_backoff);
    return SleepUnlessStopped(d);
  };
  bool counted_for_sync = false;
  auto mark_listed = [&] {
    if (counted_for_sync) return;
    counted_for_sync = true;
    absl::MutexLock l(&mu_);
    ++listed_kinds_;
  };

  bool listed_once = false;
  bool need_list = true;
  bool logged_missing = false;
  std::string rv;
  while (!stopping()) {
    if (need_list) {
      auto list = client_->List(resource, options_.list_page_size);
      if (stopping()) break;
      if (!list.ok()) {
        if (list.status().code() == absl::StatusCode::kNotFound) {
          // Not served (a CRD not installed yet): no objects of this kind; keep asking.
          if (!logged_missing) {
            SHUNT_LOG(WARNING) << "kube: " << what << " is not served (CRD not installed?); "
                               << "retrying until it is";
            logged_missing = true;
          }
          state_->Replace(options_.name, kind, {}).IgnoreError();
          mark_listed();
        } else {
          ++counters_.errors;
          SHUNT_LOG_EVERY_N_SEC(WARNING, 10) << "kube: list " << what << ": " << list.status();
        }
        if (!back_off()) break;
        continue;
      }
      if (logged_missing) {
        SHUNT_LOG(INFO) << "kube: " << what << " is served now";
      }
      logged_missing = false;
      for (auto& item : list->items) FillTypeMeta(item, api_version, kind);
      const size_t n = list->items.size();
      if (absl::Status s = state_->Replace(options_.name, kind, std::move(list->items)); !s.ok()) {
        SHUNT_LOG(WARNING) << "kube: list " << what << ": skipped objects: " << s;
      }
      ++counters_.lists;
      if (listed_once) ++counters_.relists;
      listed_once = true;
      rv = list->resource_version;
      SetResourceVersion(kind, rv);
      mark_listed();
      need_list = false;
      backoff = options_.initial_backoff;
      SHUNT_LOG(DEBUG) << "kube: listed " << n << " " << what << " at resourceVersion " << rv;
    }

    bool gone = false;
    bool progressed = false;
    absl::Status event_error;
    const WatchOptions watch{rv, /*allow_watch_bookmarks=*/true, options_.watch_timeout_seconds};
    absl::Status s = client_->Watch(resource, watch, [&](WatchEvent ev) -> bool {
      if (ev.type == "ERROR") {
        const nlohmann::json& o = ev.object;
        const int code = o.is_object() && o.contains("code") && o["code"].is_number_integer()
                             ? o["code"].get<int>()
                             : 0;
        if (code == 410) {
          gone = true;
        } else {
          event_error = absl::UnknownError(absl::StrCat(
              "watch ", what, ": error event ",
              o.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).substr(0, 300)));
        }
        return false;
      }
      const std::string event_rv = ResourceVersionOf(ev.object);
      if (ev.type == "BOOKMARK") {
        ++counters_.bookmarks;
      } else if (ev.type == "ADDED" || ev.type == "MODIFIED" || ev.type == "DELETED") {
        FillTypeMeta(ev.object, api_version, kind);
        if (ev.type == "DELETED") {
          if (auto key = KeyOf(ev.object); key.ok()) {
            state_->Remove(options_.name, *key);
          } else {
            SHUNT_LOG_EVERY_N_SEC(WARNING, 10) << "kube: watch " << what << ": " << key.status();
          }
        } else if (absl::Status u = state_->Upsert(options_.name, std::move(ev.object)); !u.ok()) {
          SHUNT_LOG_EVERY_N_SEC(WARNING, 10) << "kube: watch " << what << ": " << u;
        }
        ++counters_.events;
      } else {
        SHUNT_LOG_EVERY_N_SEC(WARNING, 10)
            << "kube: watch " << what << ": unknown event type " << ev.type;
        return true;
      }
      if (!event_rv.empty()) {
        rv = event_rv;
        SetResourceVersion(kind, rv);
      }
      progressed = true;
      return true;
    });
    if (stopping()) break;
    if (gone || IsGone(s)) {
      SHUNT_LOG(INFO) << "kube: watch " << what << " from resourceVersion " << rv
                      << ": 410 Gone; re-listing";
      need_list = true;
      continue;
    }
    ++counters_.watch_restarts;
    if (s.ok()) s = event_error;
    if (s.ok() && progressed) {
      backoff = options_.initial_backoff;  // the server ended the watch (timeoutSeconds)
      continue;
    }
    if (!s.ok()) {
      ++counters_.errors;
      SHUNT_LOG_EVERY_N_SEC(WARNING, 10)
          << "kube: watch " << what << ": " << s << "; resuming from resourceVersion " << rv;
    }
    if (progressed) backoff = options_.initial_backoff;
    if (!back_off()) break;
  }
}

KubernetesStatusWriter::KubernetesStatusWriter(std::shared_ptr<KubeClient> client,
                                               std::function<absl::Time()> now)
    : client_(std::move(client)), now_(std::move(now)) {}

nlohmann::json KubernetesStatusWriter::ConditionsPatch(const PolicyStatus& status,
                                                       absl::Time transition,
                                                       absl::Time enforced_transition) {
  auto time = [](absl::Time t) {
    return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
  };
  nlohmann::json condition = nlohmann::json::object();
  condition["type"] = "Accepted";
  condition["status"] = status.accepted ? "True" : "False";
  condition["reason"] =
      !status.reason.empty() ? status.reason : (status.accepted ? "Accepted" : "Invalid");
  condition["message"] = status.message;
  condition["observedGeneration"] = status.observed_generation;
  condition["lastTransitionTime"] = time(transition);
  nlohmann::json conditions = nlohmann::json::array({condition});
  // Agents report what they do not enforce of access policies (in the kernel) and of API cost
  // policies (in the relay); for the other kinds Enforced would say nothing.
  if (status.accepted &&
      (status.key.kind == Kind::kAccessPolicy || status.key.kind == Kind::kApiCostPolicy)) {
    nlohmann::json enforced = nlohmann::json::object();
    enforced["type"] = "Enforced";
    enforced["observedGeneration"] = status.observed_generation;
    enforced["lastTransitionTime"] =
        time(enforced_transition == absl::InfinitePast() ? transition : enforced_transition);
    if (status.enforcement_pending > 0 && status.not_enforced.empty()) {
      enforced["status"] = "Unknown";
      enforced["reason"] = "Pending";
      enforced["message"] = absl::StrCat(status.enforcement_pending,
                                         " agents have not applied this generation yet");
    } else if (status.not_enforced.empty()) {
      enforced["status"] = "True";
      enforced["reason"] = "Enforced";
      enforced["message"] = "no connected agent reports a part of it not enforced";
    } else {
      // Bounded: a policy over a cap on every node of a large cluster names a few of them.
      constexpr size_t kMaxNodes = 5;
      std::string message;
      size_t i = 0;
      for (const auto& [node, why] : status.not_enforced) {
        if (i++ == kMaxNodes) break;
        absl::StrAppend(&message, message.empty() ? "" : "; ", node, ": ", why);
      }
      if (status.not_enforced.size() > kMaxNodes) {
        absl::StrAppend(&message, " (and ", status.not_enforced.size() - kMaxNodes,
                        " more nodes)");
      }
      enforced["status"] = "False";
      enforced["reason"] = "NotEnforced";
      enforced["message"] = absl::StrCat("not enforced as written on ",
                                         status.not_enforced.size(), " nodes: ", message);
    }
    conditions.push_back(std::move(enforced));
  }
  nlohmann::json patch = nlohmann::json::object();
  // A merge patch replaces the list as a whole: these are the only conditions we own.
  patch["status"]["conditions"] = std::move(conditions);
  return patch;
}

absl::Status KubernetesStatusWriter::Write(const PolicyStatus& status) {
  const std::string enforced = !status.not_enforced.empty()      ? "False"
                               : status.enforcement_pending > 0 ? "Unknown"
                                                                : "True";
  absl::Time transition, enforced_transition;
  {
    absl::MutexLock l(&mu_);
    auto it = last_.find(status.key);
    const absl::Time now = now_();
    transition = it != last_.end() && it->second.accepted == status.accepted
                     ? it->second.accepted_at
                     : now;
    enforced_transition = it != last_.end() && it->second.accepted &&
                                  it->second.enforced == enforced
                              ? it->second.enforced_at
                              : now;
  }
  auto patched = client_->MergePatchStatus(
      status.key.kind, status.key.ns, status.key.name,
      ConditionsPatch(status, transition, enforced_transition));
  if (!patched.ok()) {
    return absl::Status(patched.status().code(), absl::StrCat("status of ", ToString(status.key),
                                                              ": ", patched.status().message()));
  }
  absl::MutexLock l(&mu_);
  last_[status.key] = {status.accepted, transition, enforced, enforced_transition};
  return absl::OkStatus();
}

}  // namespace shunt::controller
