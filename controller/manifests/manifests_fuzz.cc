// libFuzzer entry for what the controller does with a manifest file: parse it (YAML/JSON, Lists,
// the CRD schema checks) and build the mesh's policy snapshot from the objects. Any input must
// give objects or an error, and any set of accepted objects a snapshot: never a crash, a throw
// or a sanitizer report. Built only with clang (see CMakeLists.txt in this directory):
//   cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++
//   cmake --build build-fuzz --target manifests_fuzz
//   build-fuzz/controller/manifests/manifests_fuzz -max_len=65536 -timeout=10 \
//       corpus_dir/ docs/examples/
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/log.h"
#include "controller/cluster_state.h"
#include "controller/manifests/manifests_source.h"
#include "controller/snapshot_builder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = [] {
    shunt::log::SetMinLevel(shunt::log::Level::kError);
    return true;
  }();
  (void)quiet;
  using namespace shunt::controller;
  ManifestsOptions options;
  options.max_file_bytes = 1 << 20;
  auto objects = ParseManifests(std::string(reinterpret_cast<const char*>(data), size), options);
  if (!objects.ok()) return 0;
  ObjectMap map;
  for (auto& o : *objects) {
    auto key = KeyOf(o);
    if (!key.ok()) __builtin_trap();  // ParseManifests only returns objects with a key
    map[*key] = StoredObject{"fuzz", std::make_shared<const nlohmann::json>(std::move(o))};
  }
  // Twice through one builder: the cached path must agree with a fresh build.
  SnapshotBuilder builder;
  Snapshot a = builder.Build(map);
  Snapshot b = builder.Build(map);
  if (a.resources.size() != b.resources.size()) __builtin_trap();
  for (const auto& [k, r] : a.resources) {
    auto it = b.resources.find(k);
    if (it == b.resources.end() || it->second->version() != r->version()) __builtin_trap();
  }
  return 0;
}
