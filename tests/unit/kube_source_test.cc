#include "controller/kube/kube_source.h"

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "controller/cluster_state.h"
#include "controller/kube/kube_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fake_kube/fake_kube_server.h"

namespace shunt::controller {
namespace {

using ::shunt::testing::FakeKubeServer;
using ::testing::Contains;

// Polls `pred` every few milliseconds for up to `timeout`.
bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return pred();
}

std::string ApiVersion(Kind kind) {
  std::string path = ApiResourceOf(kind).group_version_path;
  return path.substr(path.find('/', 1) + 1);
}

nlohmann::json Object(Kind kind, const std::string& ns, const std::string& name,
                      nlohmann::json spec = {{"v", 1}}) {
  nlohmann::json o = {{"apiVersion", ApiVersion(kind)},
                      {"kind", KindName(kind)},
                      {"metadata", {{"name", name}}},
                      {"spec", std::move(spec)}};
  if (kind != Kind::kNamespace) o["metadata"]["namespace"] = ns;
  return o;
}

ObjectKey Key(Kind kind, const std::string& ns, const std::string& name) {
  return {kind, kind == Kind::kNamespace ? "" : ns, name};
}

class KubeSourceTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.Start().ok()); }
  void TearDown() override {
    if (source_) source_->Stop();
  }

  std::unique_ptr<KubeClient> Client() {
    KubeConfig config;
    config.server = server_.url();
    auto client = KubeClient::Create(config);
    EXPECT_TRUE(client.ok()) << client.status();
    return std::move(*client);
  }
  KubernetesSourceOptions Options() {
    KubernetesSourceOptions options;
    options.initial_backoff = absl::Milliseconds(5);
    options.max_backoff = absl::Milliseconds(50);
    options.start_timeout = absl::Seconds(10);
    options.watch_timeout_seconds = 60;
    return options;
  }
  // Starts the source and waits until every kind served has its watch open.
  void StartSource(KubernetesSourceOptions options, int installed_kinds = std::size(kAllKinds)) {
    const int watches = std::min<int>(installed_kinds, options.kinds.size());
    source_ = std::make_unique<KubernetesSource>(Client(), std::move(options));
    ASSERT_TRUE(source_->Start(state_).ok());
    ASSERT_TRUE(WaitFor([&] { return server_.open_watches() == watches; }));
  }
  void StartSource() { StartSource(Options()); }

  std::optional<nlohmann::json> InState(const ObjectKey& key) {
    auto objects = state_.Objects();
    auto it = objects->find(key);
    if (it == objects->end()) return std::nullopt;
    EXPECT_EQ(it->second.source, "kubernetes");
    return *it->second.object;
  }
  bool Has(const ObjectKey& key) { return InState(key).has_value(); }

  FakeKubeServer server_;
  ClusterState state_;
  std::unique_ptr<KubernetesSource> source_;
};

TEST_F(KubeSourceTest, InitialListOfEveryKindLandsInState) {
  for (Kind kind : kAllKinds) ASSERT_TRUE(server_.Create(Object(kind, "default", "one")).ok());
  StartSource();
  EXPECT_TRUE(source_->synced());
  for (Kind kind : kAllKinds) {
    auto got = InState(Key(kind, "default", "one"));
    ASSERT_TRUE(got.has_value()) << KindName(kind);
    // List items come without apiVersion/kind; the source puts them back.
    EXPECT_EQ((*got)["kind"], KindName(kind));
    EXPECT_EQ((*got)["apiVersion"], ApiVersion(kind));
    EXPECT_EQ(server_.list_requests(kind), 1) << KindName(kind);
    EXPECT_FALSE(source_->resource_version(kind).empty());
  }
  EXPECT_EQ(state_.Objects()->size(), std::size(kAllKinds));
  EXPECT_EQ(source_->counters().relists, 0u);
}

TEST_F(KubeSourceTest, LargeListsArriveInPages) {
  for (int i = 0; i < 7; ++i) {
    ASSERT_TRUE(server_.Create(Object(Kind::kPod, "default", absl::StrCat("pod-", i))).ok());
  }
  const std::string rv = std::to_string(server_.resource_version());
  KubernetesSourceOptions options = Options();
  options.list_page_size = 3;
  StartSource(std::move(options));
  for (int i = 0; i < 7; ++i) EXPECT_TRUE(Has(Key(Kind::kPod, "default", absl::StrCat("pod-", i))));
  EXPECT_EQ(server_.continue_requests(Kind::kPod), 2);
  // The watch resumes from the list's resourceVersion: nothing is listed twice or missed.
  EXPECT_EQ(source_->resource_version(Kind::kPod), rv);
  ASSERT_TRUE(server_.Create(Object(Kind::kPod, "default", "late")).ok());
  EXPECT_TRUE(WaitFor([&] { return Has(Key(Kind::kPod, "default", "late")); }));
}

TEST_F(KubeSourceTest, EveryEventOfEveryKindReachesState) {
  StartSource();
  for (Kind kind : kAllKinds) {
    SCOPED_TRACE(KindName(kind));
    const ObjectKey key = Key(kind, "ns1", "x");
    ASSERT_TRUE(server_.Create(Object(kind, "ns1", "x", {{"v", 1}})).ok());
    ASSERT_TRUE(WaitFor([&] { return Has(key); }));
    ASSERT_TRUE(server_.Update(Object(kind, "ns1", "x", {{"v", 2}})).ok());
    ASSERT_TRUE(WaitFor([&] {
      auto o = InState(key);
      return o && (*o)["spec"]["v"] == 2;
    }));
    EXPECT_EQ((*InState(key))["metadata"]["generation"], 2);
    ASSERT_TRUE(server_.Delete(key).ok());
    ASSERT_TRUE(WaitFor([&] { return !Has(key); }));
    EXPECT_EQ(server_.list_requests(kind), 1);
  }
  EXPECT_EQ(source_->counters().events, 3 * std::size(kAllKinds));
  EXPECT_EQ(source_->counters().relists, 0u);
}

TEST_F(KubeSourceTest, BookmarksMoveTheResumeVersion) {
  StartSource();
  const std::string listed = source_->resource_version(Kind::kPod);
  // Changes to other kinds move the global resourceVersion past the pods' list.
  ASSERT_TRUE(server_.Create(Object(Kind::kNamespace, "", "ns-a")).ok());
  ASSERT_TRUE(server_.Create(Object(Kind::kService, "default", "svc")).ok());
  const std::string latest = std::to_string(server_.resource_version());
  ASSERT_NE(listed, latest);
  server_.SendBookmarks();
  ASSERT_TRUE(WaitFor([&] { return source_->resource_version(Kind::kPod) == latest; }));
  EXPECT_GE(source_->counters().bookmarks, 1u);

  server_.DropWatches();
  ASSERT_TRUE(WaitFor([&] { return server_.watch_requests(Kind::kPod) >= 2; }));
  EXPECT_EQ(server_.watch_resource_versions(Kind::kPod)[1], latest);
  EXPECT_EQ(server_.list_requests(Kind::kPod), 1);
}

TEST_F(KubeSourceTest, PeriodicBookmarks) {
  server_.SetBookmarkInterval(absl::Milliseconds(20));
  StartSource();
  ASSERT_TRUE(server_.Create(Object(Kind::kNamespace, "", "ns-a")).ok());
  const std::string latest = std::to_string(server_.resource_version());
  ASSERT_TRUE(WaitFor([&] { return source_->resource_version(Kind::kApiCostPolicy) == latest; }));
}

TEST_F(KubeSourceTest, DroppedWatchResumesWithoutRelist) {
  StartSource();
  const std::string listed = source_->resource_version(Kind::kPod);
  server_.DropWatches();
  ASSERT_TRUE(server_.Create(Object(Kind::kPod, "default", "after-drop")).ok());
  ASSERT_TRUE(WaitFor([&] { return Has(Key(Kind::kPod, "default", "after-drop")); }));
  EXPECT_EQ(server_.list_requests(Kind::kPod), 1);
  EXPECT_GE(source_->counters().watch_restarts, 1u);
  EXPECT_EQ(source_->counters().relists, 0u);
  const auto rvs = server_.watch_resource_versions(Kind::kPod);
  ASSERT_GE(rvs.size(), 2u);
  EXPECT_EQ(rvs[0], listed);
  EXPECT_EQ(rvs[1], listed);  // nothing happened to pods in between
}

TEST_F(KubeSourceTest, CompactedHistoryRelistsAndDropsWhatWasDeletedMeanwhile) {
  ASSERT_TRUE(server_.Create(Object(Kind::kPod, "default", "gone")).ok());
  StartSource();
  ASSERT_TRUE(Has(Key(Kind::kPod, "default", "gone")));
  // The open watches fall behind a compaction: they get 410 Gone and must re-list.
  server_.PauseWatches(true);
  ASSERT_TRUE(server_.Delete(Key(Kind::kPod, "default", "gone")).ok());
  ASSERT_TRUE(server_.Create(Object(Kind::kPod, "default", "new")).ok());
  server_.CompactHistory();
  server_.PauseWatches(false);
  ASSERT_TRUE(WaitFor([&] { return server_.list_requests(Kind::kPod) == 2; }));
  ASSERT_TRUE(WaitFor([&] {
    return !Has(Key(Kind::kPod, "default", "gone")) && Has(Key(Kind::kPod, "default", "new"));
  }));
  EXPECT_GE(source_->counters().relists, 1u);
}

TEST_F(KubeSourceTest, ReconnectAfterCompactionRelists) {
  ASSERT_TRUE(server_.Create(Object(Kind::kService, "default", "gone")).ok());
  StartSource();
  const std::string listed = source_->resource_version(Kind::kService);
  server_.PauseWatches(true);
  server_.DropWatches();
  ASSERT_TRUE(server_.Delete(Key(Kind::kService, "default", "gone")).ok());
  ASSERT_TRUE(server_.Create(Object(Kind::kService, "default", "new")).ok());
  server_.CompactHistory();
  server_.PauseWatches(false);
  ASSERT_TRUE(WaitFor([&] {
    return !Has(Key(Kind::kService, "default", "gone")) &&
           Has(Key(Kind::kService, "default", "new"));
  }));
  EXPECT_EQ(server_.list_requests(Kind::kService), 2);
  // The watch came back asking for the old version, and was told it is gone.
  EXPECT_THAT(server_.watch_resource_versions(Kind::kService), Contains(listed));
}

TEST_F(KubeSourceTest, CrdInstalledLaterIsPickedUp) {
  server_.SetInstalled(Kind::kTrafficRoute, false);
  StartSource(Options(), std::size(kAllKinds) - 1);  // a missing CRD does not hold up the start
  EXPECT_TRUE(source_->synced());
  EXPECT_GE(server_.list_requests(Kind::kTrafficRoute), 1);
  // Still retried while missing.
  const int before = server_.list_requests(Kind::kTrafficRoute);
  ASSERT_TRUE(WaitFor([&] { return server_.list_requests(Kind::kTrafficRoute) > before; }));

  server_.SetInstalled(Kind::kTrafficRoute, true);
  ASSERT_TRUE(server_.Create(Object(Kind::kTrafficRoute, "default", "split")).ok());
  ASSERT_TRUE(WaitFor([&] { return Has(Key(Kind::kTrafficRoute, "default", "split")); }));
  // And watched from then on.
  ASSERT_TRUE(server_.Create(Object(Kind::kTrafficRoute, "default", "split2")).ok());
  ASSERT_TRUE(WaitFor([&] { return Has(Key(Kind::kTrafficRoute, "default", "split2")); }));
}

TEST_F(KubeSourceTest, WatchThatEndsIsResumed) {
  KubernetesSourceOptions options = Options();
  options.watch_timeout_seconds = 1;
  options.kinds = {Kind::kPod};
  StartSource(options);
  ASSERT_TRUE(WaitFor([&] { return server_.watch_requests(Kind::kPod) >= 2; }, absl::Seconds(5)));
  ASSERT_TRUE(server_.Create(Object(Kind::kPod, "default", "late")).ok());
  ASSERT_TRUE(WaitFor([&] { return Has(Key(Kind::kPod, "default", "late")); }));
  EXPECT_EQ(server_.list_requests(Kind::kPod), 1);
}

TEST_F(KubeSourceTest, StartTimesOutAndStopIsPrompt) {
  KubeConfig config;
  config.server = "http://127.0.0.1:1";  // nothing listens
  auto client = KubeClient::Create(config);
  ASSERT_TRUE(client.ok());
  KubernetesSourceOptions options = Options();
  options.start_timeout = absl::Milliseconds(200);
  KubernetesSource source(std::move(*client), options);
  EXPECT_EQ(source.Start(state_).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(source.synced());
  const absl::Time start = absl::Now();
  source.Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_GT(source.counters().errors, 0u);
}

TEST_F(KubeSourceTest, StopWhileWatchingIsPrompt) {
  StartSource();
  const absl::Time start = absl::Now();
  source_->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  // Nothing arrives after Stop().
  ASSERT_TRUE(server_.Create(Object(Kind::kPod, "default", "after-stop")).ok());
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(Has(Key(Kind::kPod, "default", "after-stop")));
}

TEST_F(KubeSourceTest, StatusWriterSetsAcceptedAndEnforcedConditions) {
  ASSERT_TRUE(server_.Create(Object(Kind::kAccessPolicy, "default", "p")).ok());
  absl::Time now = absl::FromUnixSeconds(1700000000);
  KubernetesStatusWriter writer(std::shared_ptr<KubeClient>(Client()), [&now] { return now; });
  const ObjectKey key = Key(Kind::kAccessPolicy, "default", "p");

  PolicyStatus status{key, 1, true, "Accepted", "ok"};
  ASSERT_TRUE(writer.Write(status).ok());
  auto stored = server_.Get(key);
  ASSERT_TRUE(stored.ok());
  const nlohmann::json& conditions = (*stored)["status"]["conditions"];
  ASSERT_EQ(conditions.size(), 2u);
  EXPECT_EQ(conditions[0]["type"], "Accepted");
  EXPECT_EQ(conditions[0]["status"], "True");
  EXPECT_EQ(conditions[0]["reason"], "Accepted");
  EXPECT_EQ(conditions[0]["message"], "ok");
  EXPECT_EQ(conditions[0]["observedGeneration"], 1);
  EXPECT_EQ(conditions[0]["lastTransitionTime"], "2023-11-14T22:13:20Z");
  EXPECT_EQ(conditions[1]["type"], "Enforced");
  EXPECT_EQ(conditions[1]["status"], "True");

  // An agent reports it does not enforce it: Enforced flips (with its own transition time),
  // Accepted stays.
  now += absl::Seconds(30);
  status.not_enforced = {{"node-b", "over the cap of 63"}};
  ASSERT_TRUE(writer.Write(status).ok());
  {
    const nlohmann::json cs = (*server_.Get(key))["status"]["conditions"];
    EXPECT_EQ(cs[0]["lastTransitionTime"], "2023-11-14T22:13:20Z");
    EXPECT_EQ(cs[1]["status"], "False");
    EXPECT_EQ(cs[1]["reason"], "NotEnforced");
    EXPECT_EQ(cs[1]["message"], "not enforced as written on 1 nodes: node-b: over the cap of 63");
    EXPECT_EQ(cs[1]["lastTransitionTime"], "2023-11-14T22:13:50Z");
  }
  status.not_enforced.clear();
  now -= absl::Seconds(30);

  // Same outcome later: the transition time stays; a flip moves it.
  now += absl::Minutes(1);
  status.observed_generation = 2;
  ASSERT_TRUE(writer.Write(status).ok());
  EXPECT_EQ((*server_.Get(key))["status"]["conditions"][0]["lastTransitionTime"],
            "2023-11-14T22:13:20Z");
  EXPECT_EQ((*server_.Get(key))["status"]["conditions"][0]["observedGeneration"], 2);
  now += absl::Minutes(1);
  status.accepted = false;
  status.reason = "ServiceNotFound";
  status.message = "no Service default/web";
  ASSERT_TRUE(writer.Write(status).ok());
  ASSERT_EQ((*server_.Get(key))["status"]["conditions"].size(), 1u) << "not accepted: no Enforced";
  const nlohmann::json c = (*server_.Get(key))["status"]["conditions"][0];
  EXPECT_EQ(c["status"], "False");
  EXPECT_EQ(c["reason"], "ServiceNotFound");
  EXPECT_EQ(c["lastTransitionTime"], "2023-11-14T22:15:20Z");

  // A message that is not UTF-8 is sent with replacement characters, not thrown on.
  status.message = "file \xff.yaml";
  ASSERT_TRUE(writer.Write(status).ok());

  PolicyStatus missing{Key(Kind::kAccessPolicy, "default", "nope"), 1, true, "Accepted", ""};
  EXPECT_EQ(writer.Write(missing).code(), absl::StatusCode::kNotFound);
}

TEST_F(KubeSourceTest, StatusWritesAreSeenByTheWatch) {
  ASSERT_TRUE(server_.Create(Object(Kind::kTrafficRoute, "default", "r")).ok());
  StartSource();
  KubernetesStatusWriter writer{std::shared_ptr<KubeClient>(Client())};
  const ObjectKey key = Key(Kind::kTrafficRoute, "default", "r");
  ASSERT_TRUE(writer.Write(PolicyStatus{key, 1, false, "InvalidSpec", "bad weight"}).ok());
  ASSERT_TRUE(WaitFor([&] {
    auto o = InState(key);
    return o && o->contains("status") && (*o)["status"]["conditions"][0]["status"] == "False";
  }));
}

}  // namespace
}  // namespace shunt::controller
