#include "agent/policy/policy_store.h"

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shunt::agent {
namespace {

using ::testing::ElementsAre;

shunt::v1::PolicyBundle Bundle(std::vector<std::pair<std::string, std::string>> uid_node) {
  shunt::v1::PolicyBundle b;
  for (const auto& [uid, node] : uid_node) {
    shunt::v1::Workload* w = b.add_workloads();
    w->set_uid(uid);
    w->set_namespace_("ns");
    w->set_name(uid);
    w->set_node(node);
  }
  return b;
}

// Records what a subscriber was given.
struct Recorder {
  absl::Mutex mu;
  std::vector<uint64_t> versions ABSL_GUARDED_BY(mu);

  PolicyStore::SubscriberFn Fn() {
    return [this](PolicySnapshotPtr s) {
      absl::MutexLock lock(&mu);
      versions.push_back(s->version);
    };
  }
  std::vector<uint64_t> Versions() {
    absl::MutexLock lock(&mu);
    return versions;
  }
};

TEST(PolicyStore, EmptyAtStart) {
  PolicyStore store;
  EXPECT_EQ(store.Current(), nullptr);
  EXPECT_FALSE(store.has_policy());
  EXPECT_EQ(store.errors_total(), 0u);
  EXPECT_TRUE(store.last_error().ok());
}

TEST(PolicyStore, GoodUpdatesReplaceTheSnapshot) {
  PolicyStore store;
  store.Apply("file:/p", Bundle({{"a", "n1"}}));
  PolicySnapshotPtr v1 = store.Current();
  ASSERT_NE(v1, nullptr);
  EXPECT_EQ(v1->version, 1u);
  EXPECT_EQ(v1->source, "file:/p");
  EXPECT_EQ(v1->bundle.workloads(0).uid(), "a");
  EXPECT_TRUE(store.has_policy());

  store.Apply("grpc:controller", Bundle({{"b", "n1"}}));
  PolicySnapshotPtr v2 = store.Current();
  EXPECT_EQ(v2->version, 2u);
  EXPECT_EQ(v2->source, "grpc:controller");
  EXPECT_EQ(v2->bundle.workloads(0).uid(), "b");
  // A reader that still holds v1 keeps a consistent, unchanged snapshot.
  EXPECT_EQ(v1->version, 1u);
  EXPECT_EQ(v1->bundle.workloads(0).uid(), "a");
}

TEST(PolicyStore, ErrorKeepsPreviousSnapshot) {
  PolicyStore store;
  Recorder rec;
  store.Subscribe(rec.Fn());
  store.Apply("file:/p", Bundle({{"a", "n1"}}));
  PolicySnapshotPtr good = store.Current();

  store.Apply("file:/p", absl::InvalidArgumentError("/p: workloads[0].uid: must not be empty"));
  EXPECT_EQ(store.Current(), good);  // the same snapshot object, still in force
  EXPECT_EQ(store.errors_total(), 1u);
  EXPECT_EQ(store.last_error(),
            absl::InvalidArgumentError("/p: workloads[0].uid: must not be empty"));
  EXPECT_TRUE(store.has_policy());

  store.Apply("file:/p", absl::NotFoundError("/p: No such file or directory"));
  EXPECT_EQ(store.Current(), good);
  EXPECT_EQ(store.errors_total(), 2u);
  EXPECT_EQ(store.last_error().code(), absl::StatusCode::kNotFound);

  // Subscribers heard only of the good update.
  EXPECT_THAT(rec.Versions(), ElementsAre(1u));

  // The next good update clears the error (the counter stays) and is version 2.
  store.Apply("file:/p", Bundle({{"b", "n1"}}));
  EXPECT_EQ(store.Current()->version, 2u);
  EXPECT_TRUE(store.last_error().ok());
  EXPECT_EQ(store.errors_total(), 2u);
  EXPECT_THAT(rec.Versions(), ElementsAre(1u, 2u));
}

TEST(PolicyStore, ErrorBeforeAnyPolicy) {
  PolicyStore store;
  Recorder rec;
  store.Subscribe(rec.Fn());
  store.Apply("file:/p", absl::InvalidArgumentError("bad"));
  EXPECT_EQ(store.Current(), nullptr);
  EXPECT_FALSE(store.has_policy());
  EXPECT_EQ(store.errors_total(), 1u);
  EXPECT_THAT(rec.Versions(), ElementsAre());
}

TEST(PolicyStore, LateSubscriberGetsTheCurrentSnapshot) {
  PolicyStore store;
  Recorder early;
  store.Subscribe(early.Fn());  // nothing yet: not called
  EXPECT_THAT(early.Versions(), ElementsAre());
  store.Apply("s", Bundle({{"a", "n1"}}));
  store.Apply("s", Bundle({{"a", "n2"}}));
  Recorder late;
  store.Subscribe(late.Fn());
  EXPECT_THAT(late.Versions(), ElementsAre(2u));
  store.Apply("s", Bundle({{"a", "n3"}}));
  EXPECT_THAT(early.Versions(), ElementsAre(1u, 2u, 3u));
  EXPECT_THAT(late.Versions(), ElementsAre(2u, 3u));
}

TEST(PolicyStore, Unsubscribe) {
  PolicyStore store;
  Recorder a, b;
  const int id_a = store.Subscribe(a.Fn());
  store.Subscribe(b.Fn());
  store.Apply("s", Bundle({}));
  store.Unsubscribe(id_a);
  store.Unsubscribe(12345);  // unknown: ignored
  store.Apply("s", Bundle({}));
  EXPECT_THAT(a.Versions(), ElementsAre(1u));
  EXPECT_THAT(b.Versions(), ElementsAre(1u, 2u));
}

TEST(PolicyStore, CallbacksMayUseTheStore) {
  PolicyStore store;
  std::vector<uint64_t> seen_current;
  int self_id = 0;
  int calls = 0;
  Recorder added;
  self_id = store.Subscribe([&](PolicySnapshotPtr s) {
    ++calls;
    seen_current.push_back(store.Current()->version);  // no lock held: no deadlock
    if (s->version == 1) store.Subscribe(added.Fn());  // subscribe from a callback
    if (s->version == 2) store.Unsubscribe(self_id);   // and unsubscribe oneself
  });
  store.Apply("s", Bundle({}));
  store.Apply("s", Bundle({}));
  store.Apply("s", Bundle({}));
  EXPECT_EQ(calls, 2);
  EXPECT_THAT(seen_current, ElementsAre(1u, 2u));
  EXPECT_THAT(added.Versions(), ElementsAre(1u, 2u, 3u));
}

TEST(PolicyStore, CallbackUnsubscribingAnotherStopsIt) {
  PolicyStore store;
  Recorder second;
  int second_id = 0;
  store.Subscribe([&](PolicySnapshotPtr) { store.Unsubscribe(second_id); });
  second_id = store.Subscribe(second.Fn());
  store.Apply("s", Bundle({}));
  EXPECT_THAT(second.Versions(), ElementsAre());
}

TEST(PolicyStore, ConcurrentAppliesAreNotifiedInVersionOrder) {
  PolicyStore store;
  Recorder rec;
  store.Subscribe(rec.Fn());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&store, t] {
      for (int i = 0; i < kPerThread; ++i) {
        if (i % 10 == 3) {
          store.Apply(absl::StrCat("t", t), absl::InvalidArgumentError("bad"));
        } else {
          store.Apply(absl::StrCat("t", t), Bundle({{absl::StrCat(t, "-", i), "n"}}));
        }
        (void)store.Current();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const uint64_t good = kThreads * (kPerThread - kPerThread / 10);
  EXPECT_EQ(store.Current()->version, good);
  EXPECT_EQ(store.errors_total(), static_cast<uint64_t>(kThreads * kPerThread / 10));
  std::vector<uint64_t> versions = rec.Versions();
  ASSERT_EQ(versions.size(), good);
  for (size_t i = 0; i < versions.size(); ++i) EXPECT_EQ(versions[i], i + 1);
}

TEST(PolicySnapshot, LocalWorkloads) {
  PolicyStore store;
  store.Apply("s", Bundle({{"a", "node-1"}, {"b", "node-2"}, {"c", "node-1"}, {"d", ""}}));
  PolicySnapshotPtr s = store.Current();
  std::vector<std::string> uids;
  for (const shunt::v1::Workload* w : s->LocalWorkloads("node-1")) uids.push_back(w->uid());
  EXPECT_THAT(uids, ElementsAre("a", "c"));
  EXPECT_TRUE(s->LocalWorkloads("node-3").empty());
}

}  // namespace
}  // namespace shunt::agent
