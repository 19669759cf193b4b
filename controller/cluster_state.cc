#include "controller/cluster_state.h"

#include "absl/strings/str_cat.h"

namespace shunt::controller {

const char* KindName(Kind kind) {
  switch (kind) {
    case Kind::kNamespace: return "Namespace";
    case Kind::kPod: return "Pod";
    case Kind::kService: return "Service";
    case Kind::kEndpointSlice: return "EndpointSlice";
    case Kind::kTrafficRoute: return "TrafficRoute";
    case Kind::kAccessPolicy: return "AccessPolicy";
    case Kind::kApiCostPolicy: return "ApiCostPolicy";
  }
  return "Unknown";
}

std::optional<Kind> KindOf(absl::string_view api_version, absl::string_view kind) {
  const std::string policy_gv = absl::StrCat(kPolicyGroup, "/", kPolicyVersion);
  if (api_version == "v1") {
    if (kind == "Namespace") return Kind::kNamespace;
    if (kind == "Pod") return Kind::kPod;
    if (kind == "Service") return Kind::kService;
  } else if (api_version == "discovery.k8s.io/v1") {
    if (kind == "EndpointSlice") return Kind::kEndpointSlice;
  } else if (api_version == policy_gv) {
    if (kind == "TrafficRoute") return Kind::kTrafficRoute;
    if (kind == "AccessPolicy") return Kind::kAccessPolicy;
    if (kind == "ApiCostPolicy") return Kind::kApiCostPolicy;
  }
  return std::nullopt;
}

ApiResource ApiResourceOf(Kind kind) {
  switch (kind) {
    case Kind::kNamespace: return {"/api/v1", "namespaces", false};
    case Kind::kPod: return {"/api/v1", "pods", true};
    case Kind::kService: return {"/api/v1", "services", true};
    case Kind::kEndpointSlice: return {"/apis/discovery.k8s.io/v1", "endpointslices", true};
    case Kind::kTrafficRoute: return {"/apis/policy.shunt.dev/v1alpha1", "trafficroutes", true};
    case Kind::kAccessPolicy: return {"/apis/policy.shunt.dev/v1alpha1", "accesspolicies", true};
    case Kind::kApiCostPolicy: return {"/apis/policy.shunt.dev/v1alpha1", "apicostpolicies", true};
  }
  return {"", "", false};
}

std::string ToString(const ObjectKey& key) {
  return key.ns.empty() ? absl::StrCat(KindName(key.kind), "/", key.name)
                        : absl::StrCat(KindName(key.kind), "/", key.ns, "/", key.name);
}

absl::StatusOr<ObjectKey> KeyOf(const nlohmann::json& o) {
  if (!o.is_object()) return absl::InvalidArgumentError("object is not a JSON/YAML mapping");
  auto str = [&o](const char* a, const char* b = nullptr) -> std::string {
    const nlohmann::json* v = &o;
    for (const char* k : {a, b}) {
      if (!k) break;
      if (!v->is_object() || !v->contains(k)) return "";
      v = &(*v)[k];
    }
    return v->is_string() ? v->get<std::string>() : "";
  };
  const std::string api_version = str("apiVersion"), kind = str("kind");
  if (api_version.empty() || kind.empty()) {
    return absl::InvalidArgumentError("object has no apiVersion or kind");
  }
  auto k = KindOf(api_version, kind);
  if (!k) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported kind ", kind, " of apiVersion ", api_version));
  }
  ObjectKey key{*k, str("metadata", "namespace"), str("metadata", "name")};
  if (key.name.empty()) return absl::InvalidArgumentError(absl::StrCat(kind, " has no metadata.name"));
  if (*k == Kind::kNamespace) {
    key.ns.clear();
  } else if (key.ns.empty()) {
    key.ns = "default";  // as kubectl does for namespaced objects without a namespace
  }
  return key;
}

namespace {

// The stored object for `key`: the existing one when the source reports it unchanged (so its
// pointer, and what consumers cached for it, survive), else a new one.
StoredObject Keep(const ObjectMap& current, const ObjectKey& key, absl::string_view source,
                  nlohmann::json object) {
  auto it = current.find(key);
  if (it != current.end() && it->second.source == source && *it->second.object == object) {
    return it->second;
  }
  return StoredObject{std::string(source),
                      std::make_shared<const nlohmann::json>(std::move(object))};
}

}  // namespace

ObjectMap& ClusterState::MutableObjects() {
  // Readers get their pointer under mu_ (Objects()), so with the count at 1 under mu_ no one
  // else holds this map or can get it meanwhile.
  if (objects_.use_count() > 1) objects_ = std::make_shared<ObjectMap>(*objects_);
  return *objects_;
}

absl::Status ClusterState::Upsert(absl::string_view source, nlohmann::json object) {
  auto key = KeyOf(object);
  if (!key.ok()) return key.status();
  {
    absl::MutexLock l(&mu_);
    auto it = objects_->find(*key);
    if (it != objects_->end() && it->second.source == source && *it->second.object == object) {
      return absl::OkStatus();  // no change
    }
    MutableObjects()[*key] = StoredObject{
        std::string(source), std::make_shared<const nlohmann::json>(std::move(object))};
    ++generation_;
  }
  Changed();
  return absl::OkStatus();
}

void ClusterState::Remove(absl::string_view source, const ObjectKey& key) {
  {
    absl::MutexLock l(&mu_);
    auto it = objects_->find(key);
    if (it == objects_->end() || it->second.source != source) return;
    MutableObjects().erase(key);
    ++generation_;
  }
  Changed();
}

absl::Status ClusterState::Replace(absl::string_view source, Kind kind,
                                   std::vector<nlohmann::json> objects) {
  std::vector<nlohmann::json> of_kind;
  for (auto& o : objects) {
    auto key = KeyOf(o);
    if (key.ok() && key->kind != kind) continue;
    of_kind.push_back(std::move(o));
  }
  absl::Status first;
  bool changed = false;
  {
    absl::MutexLock l(&mu_);
    auto next = std::make_shared<ObjectMap>();
    for (const auto& [k, v] : *objects_) {
      if (!(k.kind == kind && v.source == source)) next->emplace(k, v);
    }
    for (auto& o : of_kind) {
      auto key = KeyOf(o);
      if (!key.ok()) {
        if (first.ok()) first = key.status();
        continue;
      }
      (*next)[*key] = Keep(*objects_, *key, source, std::move(o));
    }
    if (*next != *objects_) {
      objects_ = std::move(next);
      ++generation_;
      changed = true;
    }
  }
  if (changed) Changed();
  return first;
}

absl::Status ClusterState::ReplaceAll(absl::string_view source,
                                      std::vector<nlohmann::json> objects) {
  std::vector<ObjectPtr> ptrs;
  ptrs.reserve(objects.size());
  for (auto& o : objects) ptrs.push_back(std::make_shared<const nlohmann::json>(std::move(o)));
  return ReplaceAll(source, std::move(ptrs));
}

absl::Status ClusterState::ReplaceAll(absl::string_view source, std::vector<ObjectPtr> objects) {
  absl::Status first;
  std::vector<std::pair<ObjectKey, ObjectPtr>> keyed;
  keyed.reserve(objects.size());
  for (auto& o : objects) {
    if (!o) continue;
    auto key = KeyOf(*o);
    if (!key.ok()) {
      if (first.ok()) first = key.status();
      continue;
    }
    keyed.emplace_back(*std::move(key), std::move(o));
  }
  absl::Status s = ReplaceAll(source, std::move(keyed));
  return first.ok() ? s : first;
}

absl::Status ClusterState::ReplaceAll(absl::string_view source,
                                      std::vector<std::pair<ObjectKey, ObjectPtr>> objects) {
  bool changed = false;
  {
    absl::MutexLock l(&mu_);
    auto next = std::make_shared<ObjectMap>();
    for (const auto& [k, v] : *objects_) {
      if (v.source != source) next->emplace(k, v);
    }
    for (auto& [key, o] : objects) {
      if (!o) continue;
      auto it = objects_->find(key);
      if (it != objects_->end() && it->second.source == source &&
          (it->second.object == o || *it->second.object == *o)) {
        (*next)[key] = it->second;  // unchanged: keep the pointer consumers cached
      } else {
        (*next)[key] = StoredObject{std::string(source), std::move(o)};
      }
    }
    if (*next != *objects_) {
      objects_ = std::move(next);
      ++generation_;
      changed = true;
    }
  }
  if (changed) Changed();
  return absl::OkStatus();
}

std::shared_ptr<const ObjectMap> ClusterState::Objects() const {
  absl::MutexLock l(&mu_);
  return objects_;
}

uint64_t ClusterState::generation() const {
  absl::MutexLock l(&mu_);
  return generation_;
}

int ClusterState::Subscribe(std::function<void()> fn) {
  absl::MutexLock l(&mu_);
  subscribers_[next_id_] = std::move(fn);
  return next_id_++;
}

void ClusterState::Unsubscribe(int id) {
  absl::MutexLock l(&mu_);
  subscribers_.erase(id);
}

void ClusterState::Changed() {
  std::vector<std::function<void()>> fns;
  {
    absl::MutexLock l(&mu_);
    for (const auto& [id, fn] : subscribers_) fns.push_back(fn);
  }
  for (auto& fn : fns) fn();
}

}  // namespace shunt::controller
