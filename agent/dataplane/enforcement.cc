#include "agent/dataplane/enforcement.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace shunt::agent {

Enforcement CurrentEnforcement(const PolicyStore& store, const Reconciler& fast_path,
                               const ServicePolicyReconciler& policy, absl::Duration grace) {
  Enforcement e;
  auto snapshot = store.Current();
  if (!snapshot) return e;
  e.version = snapshot->version;
  auto status = policy.status();
  const uint64_t fast_version = fast_path.pass_version();
  e.applied = fast_version >= e.version && status->version >= e.version;
  if (!e.applied && absl::Now() - snapshot->applied_at >= grace) {
    e.not_enforced.push_back(
        {"", absl::StrCat("policy version ", e.version, " is not applied to the kernel yet"),
         true});
  } else {
    e.not_enforced = status->not_enforced;
    if (absl::Status s = fast_path.last_error(); !s.ok()) {
      e.not_enforced.push_back({"", absl::StrCat("fast path: ", s.message())});
    }
    if (!fast_path.pending_written()) {
      e.not_enforced.push_back(
          {"", "pods not started yet are not enforced from their first connect(): their pending "
               "entries were not written in the last pass",
           true});
    }
  }
  std::sort(e.not_enforced.begin(), e.not_enforced.end());
  e.not_enforced.erase(std::unique(e.not_enforced.begin(), e.not_enforced.end()),
                       e.not_enforced.end());
  return e;
}

Enforcement AwaitEnforcement(const PolicyStore& store, const Reconciler& fast_path,
                             const ServicePolicyReconciler& policy, absl::Duration wait) {
  const absl::Time deadline = absl::Now() + wait;
  while (true) {
    Enforcement e = CurrentEnforcement(store, fast_path, policy);
    if (e.applied || absl::Now() >= deadline) return e;
    absl::SleepFor(absl::Milliseconds(2));
  }
}

shunt::v1::EnforcementReport ToReport(const Enforcement& e) {
  shunt::v1::EnforcementReport r;
  for (const auto& part : e.not_enforced) {
    auto* n = r.add_not_enforced();
    n->set_reason(part.reason);
    n->set_every_access_policy(part.every_access_policy);
    if (part.policy.empty()) continue;
    std::vector<std::string> ns_name = absl::StrSplit(part.policy, absl::MaxSplits('/', 1));
    if (ns_name.size() != 2) continue;
    n->mutable_key()->set_kind(part.cost ? shunt::v1::ResourceKey::API_COST_POLICY
                                         : shunt::v1::ResourceKey::ACCESS_POLICY);
    n->mutable_key()->set_namespace_(ns_name[0]);
    n->mutable_key()->set_name(ns_name[1]);
  }
  return r;
}

std::string DescribeNotEnforced(const std::vector<NotEnforcedPart>& parts, size_t max_parts) {
  std::string out;
  for (size_t i = 0; i < parts.size() && i < max_parts; ++i) {
    absl::StrAppend(&out, i ? "; " : "", parts[i].policy.empty() ? "node" : parts[i].policy, ": ",
                    parts[i].reason);
  }
  if (parts.size() > max_parts) absl::StrAppend(&out, " (+", parts.size() - max_parts, " more)");
  return out;
}

}  // namespace shunt::agent
