// The controller's view of the cluster: the Kubernetes objects its sources (the API server's
// list/watch, or a directory of manifests) report, as their JSON, keyed by kind/namespace/name.
//
// Sources write; the snapshot builder reads an immutable copy. Every object remembers which source
// reported it, so a source can replace its whole set (a re-list after 410 Gone, a directory reload)
// without touching the others'.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"

namespace shunt::controller {

// The kinds the controller watches.
enum class Kind {
  kNamespace,
  kPod,
  kService,
  kEndpointSlice,
  kTrafficRoute,   // policy.shunt.dev/v1alpha1
  kAccessPolicy,   // policy.shunt.dev/v1alpha1
  kApiCostPolicy,  // policy.shunt.dev/v1alpha1
};
inline constexpr Kind kAllKinds[] = {Kind::kNamespace,    Kind::kPod,          Kind::kService,
                                     Kind::kEndpointSlice, Kind::kTrafficRoute, Kind::kAccessPolicy,
                                     Kind::kApiCostPolicy};

inline constexpr char kPolicyGroup[] = "policy.shunt.dev";
inline constexpr char kPolicyVersion[] = "v1alpha1";

// "Pod", "EndpointSlice", ... (the Kubernetes kind).
const char* KindName(Kind kind);
// From an object's apiVersion and kind; nullopt for kinds the controller does not handle.
std::optional<Kind> KindOf(absl::string_view api_version, absl::string_view kind);
// API path segments for list/watch: e.g. {"/api/v1", "pods"}, {"/apis/discovery.k8s.io/v1",
// "endpointslices"}, {"/apis/policy.shunt.dev/v1alpha1", "trafficroutes"}.
struct ApiResource {
  const char* group_version_path;
  const char* plural;
  bool namespaced;
};
ApiResource ApiResourceOf(Kind kind);

struct ObjectKey {
  Kind kind;
  std::string ns;  // empty for cluster-scoped objects (Namespace)
  std::string name;
  friend bool operator<(const ObjectKey& a, const ObjectKey& b) {
    return std::tie(a.kind, a.ns, a.name) < std::tie(b.kind, b.ns, b.name);
  }
  friend bool operator==(const ObjectKey& a, const ObjectKey& b) {
    return a.kind == b.kind && a.ns == b.ns && a.name == b.name;
  }
};
std::string ToString(const ObjectKey& key);  // "Pod/default/web-0"

// Objects are immutable and shared: a snapshot copy of the map copies pointers, and an object
// that a re-list or a directory reload reports unchanged keeps its pointer, so consumers can cache
// what they derive from it by pointer.
using ObjectPtr = std::shared_ptr<const nlohmann::json>;
struct StoredObject {
  std::string source;  // which source reported it
  ObjectPtr object;
  friend bool operator==(const StoredObject& a, const StoredObject& b) {
    return a.source == b.source &&
           (a.object == b.object || (a.object && b.object && *a.object == *b.object));
  }
};
using ObjectMap = std::map<ObjectKey, StoredObject>;

// Key of a Kubernetes object JSON (apiVersion, kind, metadata.namespace, metadata.name), or an
// InvalidArgument error naming what is missing.
absl::StatusOr<ObjectKey> KeyOf(const nlohmann::json& object);

class ClusterState {
 public:
  ClusterState() = default;
  ClusterState(const ClusterState&) = delete;
  ClusterState& operator=(const ClusterState&) = delete;

  // Adds or replaces one object. InvalidArgument (and no change) if it has no usable key.
  absl::Status Upsert(absl::string_view source, nlohmann::json object);
  void Remove(absl::string_view source, const ObjectKey& key);
  // Makes `objects` the whole set of `kind` objects from `source` (others' objects stay). Objects
  // without a usable key are skipped and counted in the returned status.
  absl::Status Replace(absl::string_view source, Kind kind, std::vector<nlohmann::json> objects);
  // Same, for every kind at once (a directory reload).
  absl::Status ReplaceAll(absl::string_view source, std::vector<nlohmann::json> objects);
  // Same, with objects the source already holds as shared pointers: an object whose pointer is
  // unchanged costs no comparison at all.
  absl::Status ReplaceAll(absl::string_view source, std::vector<ObjectPtr> objects);
  // Same, with the keys already known (KeyOf of each object, checked by the caller).
  absl::Status ReplaceAll(absl::string_view source,
                          std::vector<std::pair<ObjectKey, ObjectPtr>> objects);

  // An immutable copy and the generation it was taken at (bumped by every effective change).
  std::shared_ptr<const ObjectMap> Objects() const;
  uint64_t generation() const;

  // Called (outside the lock) after every effective change. Returns an id for Unsubscribe.
  int Subscribe(std::function<void()> fn);
  void Unsubscribe(int id);

 private:
  void Changed() ABSL_LOCKS_EXCLUDED(mu_);

  mutable absl::Mutex mu_;
  // Handed out as shared_ptr<const>; changed in place when no one holds it (a watch event costs
  // O(log n), not a copy of the cluster), else copied first.
  std::shared_ptr<ObjectMap> objects_ ABSL_GUARDED_BY(mu_) = std::make_shared<ObjectMap>();
  // objects_, made safe to change: a copy if someone else holds it.
  ObjectMap& MutableObjects() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int, std::function<void()>> subscribers_ ABSL_GUARDED_BY(mu_);
  int next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

// What a source of Kubernetes objects implements (Kubernetes API, manifests directory).
class ClusterSource {
 public:
  virtual ~ClusterSource() = default;
  virtual absl::string_view name() const = 0;
  // Starts feeding `state`; returns once the first complete set is in (or failed).
  virtual absl::Status Start(ClusterState& state) = 0;
  virtual void Stop() = 0;
  // True once every kind has been listed at least once.
  virtual bool synced() const = 0;
};

// Where the controller reports each CR's outcome (status.conditions). The Kubernetes source
// writes it to the status subresource; the manifests source logs it.
struct PolicyStatus {
  ObjectKey key;
  int64_t observed_generation = 0;
  bool accepted = false;
  std::string reason;   // CamelCase, e.g. "Accepted", "InvalidSpec", "ServiceNotFound"
  std::string message;  // for humans
  // Enforced (accepted ones only): nodes whose agent reports it does not enforce this policy as
  // written -> why (docs/controller.md, "What an ACK means"). Empty: every reporting agent does.
  std::string resource_key;  // ResourceKeyString of what the agents get
  std::map<std::string, std::string> not_enforced;
  // Reporting agents that have not ACKed a version with this generation yet: Enforced Unknown.
  size_t enforcement_pending = 0;
};
class StatusWriter {
 public:
  virtual ~StatusWriter() = default;
  virtual absl::Status Write(const PolicyStatus& status) = 0;
};

}  // namespace shunt::controller
