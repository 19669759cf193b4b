#include "common/resources.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace shunt {

using shunt::v1::Resource;
using shunt::v1::ResourceKey;

std::string ResourceKeyString(const ResourceKey& key) {
  // A kind newer than this build has no name here: its number keeps the keys of such kinds apart.
  const std::string& kind = ResourceKey::Kind_Name(key.kind());
  return absl::StrCat(kind.empty() ? absl::StrCat(static_cast<int>(key.kind())) : kind, "/",
                      key.namespace_(), "/", key.name());
}

std::string Fnv1a64Hex(const std::string& bytes) {
  Fnv1a64 h;
  h.Update(bytes);
  return h.Hex();
}

std::string Fnv1a64::Hex() const {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h_));
  return buf;
}

std::string ResourceVersion(const Resource& resource) {
  Resource copy = resource;
  copy.clear_version();
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream sos(&bytes);
    google::protobuf::io::CodedOutputStream cos(&sos);
    cos.SetSerializationDeterministic(true);
    copy.SerializeToCodedStream(&cos);
  }
  return Fnv1a64Hex(bytes);
}

namespace {
void AddToBundle(const Resource& r, shunt::v1::PolicyBundle& b) {
  switch (r.body_case()) {
    case Resource::kWorkload:
      *b.add_workloads() = r.workload();
      break;
    case Resource::kService:
      *b.add_services() = r.service();
      break;
    case Resource::kTrafficRoute:
      *b.add_traffic_routes() = r.traffic_route();
      break;
    case Resource::kAccessPolicy:
      *b.add_access_policies() = r.access_policy();
      break;
    case Resource::kApiCostPolicy:
      *b.add_api_cost_policies() = r.api_cost_policy();
      break;
    case Resource::BODY_NOT_SET:
      break;
  }
}
}  // namespace

shunt::v1::PolicyBundle ToBundle(const std::map<std::string, Resource>& resources) {
  shunt::v1::PolicyBundle b;
  for (const auto& [k, r] : resources) AddToBundle(r, b);
  return b;
}

shunt::v1::PolicyBundle ToBundle(
    const std::map<std::string, std::shared_ptr<const Resource>>& resources) {
  shunt::v1::PolicyBundle b;
  for (const auto& [k, r] : resources) AddToBundle(*r, b);
  return b;
}

}  // namespace shunt
