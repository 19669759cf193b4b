// ClusterState: what sources write and the snapshot builder reads. Snapshots handed out are
// immutable; a change made while none is held is made in place (a watch event must not copy a
// cluster of 15000 objects).
#include "controller/cluster_state.h"

#include <gtest/gtest.h>

#include "nlohmann/json.hpp"

namespace shunt::controller {
namespace {

nlohmann::json Pod(const std::string& name, const std::string& node) {
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata", {{"namespace", "default"}, {"name", name}}},
          {"spec", {{"nodeName", node}}}};
}

TEST(ClusterState, SnapshotsHeldAreNotChangedByLaterWrites) {
  ClusterState state;
  ASSERT_TRUE(state.Upsert("kubernetes", Pod("a", "n1")).ok());
  auto held = state.Objects();
  const uint64_t generation = state.generation();
  ASSERT_TRUE(state.Upsert("kubernetes", Pod("a", "n2")).ok());
  ASSERT_TRUE(state.Upsert("kubernetes", Pod("b", "n1")).ok());
  state.Remove("kubernetes", ObjectKey{Kind::kPod, "default", "a"});
  ASSERT_EQ(held->size(), 1u);
  EXPECT_EQ((*held->begin()->second.object)["spec"]["nodeName"], "n1");
  auto now = state.Objects();
  EXPECT_EQ(now->size(), 1u);
  EXPECT_EQ(now->begin()->first.name, "b");
  EXPECT_EQ(state.generation(), generation + 3);
}

TEST(ClusterState, WritesWithNoSnapshotHeldChangeTheMapInPlace) {
  ClusterState state;
  ASSERT_TRUE(state.Upsert("kubernetes", Pod("a", "n1")).ok());
  const ObjectMap* before = state.Objects().get();  // released at once
  ASSERT_TRUE(state.Upsert("kubernetes", Pod("b", "n1")).ok());
  state.Remove("kubernetes", ObjectKey{Kind::kPod, "default", "a"});
  auto after = state.Objects();
  EXPECT_EQ(after.get(), before);
  EXPECT_EQ(after->size(), 1u);
}

TEST(ClusterState, AnUnchangedObjectIsNotAChange) {
  ClusterState state;
  ASSERT_TRUE(state.Upsert("kubernetes", Pod("a", "n1")).ok());
  auto first = state.Objects();
  const uint64_t generation = state.generation();
  ASSERT_TRUE(state.Upsert("kubernetes", Pod("a", "n1")).ok());
  EXPECT_EQ(state.generation(), generation);
  EXPECT_EQ(state.Objects()->begin()->second.object, first->begin()->second.object);
  // Another source's write does not replace it either.
  state.Remove("manifests", ObjectKey{Kind::kPod, "default", "a"});
  EXPECT_EQ(state.Objects()->size(), 1u);
}

}  // namespace
}  // namespace shunt::controller
