#include "controller/manifests/manifests_source.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "tests/test_util.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "controller/cluster_state.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shunt::controller {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;
using ::testing::StartsWith;

// A unique directory under /tmp, removed with everything in it when the test ends, pass or fail.
class TempDir : public shunt::test::TempDir {
 public:
  TempDir() : shunt::test::TempDir("shunt-manifests-test") {}
};

constexpr char kNamespace[] = R"(apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {shunt.dev/mesh: enabled}
)";

constexpr char kTwoServices[] = R"(# two services and a Deployment (ignored)
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec: {replicas: 2}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {ports: [{port: 8080}]}
)";

std::string Route(absl::string_view name, int weight) {
  return absl::StrCat(R"(apiVersion: policy.shunt.dev/v1alpha1
kind: TrafficRoute
metadata: {name: )",
                      name, R"(, namespace: shop}
spec:
  service: web
  rules:
  - backends:
    - {service: api, weight: )",
                      weight, "}\n");
}

class ManifestsSourceTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed"; }

  std::string PathOf(const std::string& name) const { return absl::StrCat(dir_.path(), "/", name); }

  void Write(const std::string& name, absl::string_view content) {
    std::ofstream out(PathOf(name), std::ios::trunc | std::ios::binary);
    out << content;
    ASSERT_TRUE(out.good()) << name;
  }
  // Writes a dotfile and renames it over `name`, as editors and kubectl-style tools do.
  void WriteAtomically(const std::string& name, absl::string_view content) {
    Write(".tmp-" + name, content);
    ASSERT_EQ(::rename(PathOf(".tmp-" + name).c_str(), PathOf(name).c_str()), 0);
  }
  void Remove(const std::string& name) { ASSERT_EQ(::unlink(PathOf(name).c_str()), 0); }

  std::unique_ptr<ManifestsSource> MakeSource(ManifestsOptions options = {}) {
    options.dir = dir_.path();
    options.poll_interval = absl::ZeroDuration();  // tests call Rescan()
    return std::make_unique<ManifestsSource>(options);
  }

  // "Kind/ns/name" of every object in the state.
  std::set<std::string> Keys() const {
    std::set<std::string> keys;
    for (const auto& [key, stored] : *state_.Objects()) {
      EXPECT_EQ(stored.source, "manifests");
      keys.insert(ToString(key));
    }
    return keys;
  }
  std::optional<nlohmann::json> Find(Kind kind, const std::string& ns,
                                     const std::string& name) const {
    std::shared_ptr<const ObjectMap> objects = state_.Objects();
    auto it = objects->find(ObjectKey{kind, ns, name});
    if (it == objects->end()) return std::nullopt;
    return *it->second.object;
  }
  std::string ErrorOf(const ManifestsSource& source, const std::string& file) const {
    auto errors = source.errors();
    auto it = errors.find(file);
    return it == errors.end() ? "" : std::string(it->second.message());
  }

  TempDir dir_;
  ClusterState state_;
};

TEST_F(ManifestsSourceTest, InitialLoad) {
  Write("00-namespace.yaml", kNamespace);
  Write("services.yml", kTwoServices);
  Write("route.yaml", Route("r", 5));
  Write("pods.json", R"({"apiVersion": "v1", "kind": "List", "items": [
      {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "shop"}},
      {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1"}},
      {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]})");
  Write("README.md", "not a manifest: [");
  Write(".hidden.yaml", "also: [ignored");
  ASSERT_EQ(::mkdir(PathOf("sub.yaml").c_str(), 0755), 0);  // a directory: ignored
  Write("sub.yaml/x.yaml", kNamespace);

  auto source = MakeSource();
  EXPECT_FALSE(source->synced());
  ASSERT_TRUE(source->Start(state_).ok());
  EXPECT_TRUE(source->synced());
  EXPECT_THAT(source->errors(), IsEmpty());
  EXPECT_EQ(source->malformed_total(), 0u);
  EXPECT_EQ(Keys(),
            (std::set<std::string>{"Namespace/shop", "Service/shop/web", "Service/shop/api",
                                   "TrafficRoute/shop/r", "Pod/shop/web-0", "Pod/default/web-1"}));
  // Typed as Kubernetes reads YAML: numbers are numbers.
  std::optional<nlohmann::json> route = Find(Kind::kTrafficRoute, "shop", "r");
  ASSERT_TRUE(route.has_value());
  EXPECT_EQ((*route)["spec"]["rules"][0]["backends"][0]["weight"], 5);
  source->Stop();
}

TEST_F(ManifestsSourceTest, AddModifyDeleteReachTheState) {
  Write("a.yaml", kNamespace);
  auto source = MakeSource();
  ASSERT_TRUE(source->Start(state_).ok());
  const uint64_t g0 = state_.generation();

  EXPECT_TRUE(source->Rescan().ok());  // nothing changed: no new generation
  EXPECT_EQ(state_.generation(), g0);

  Write("b.yaml", Route("r", 1));
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_EQ(Keys(), (std::set<std::string>{"Namespace/shop", "TrafficRoute/shop/r"}));

  Write("b.yaml", Route("r", 12345));  // modified in place (another size)
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_EQ((*Find(Kind::kTrafficRoute, "shop", "r"))["spec"]["rules"][0]["backends"][0]["weight"],
            12345);

  Write("b.yaml", Route("r2", 1));  // renamed object: the old one goes
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_EQ(Keys(), (std::set<std::string>{"Namespace/shop", "TrafficRoute/shop/r2"}));

  Remove("a.yaml");
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_EQ(Keys(), (std::set<std::string>{"TrafficRoute/shop/r2"}));
  EXPECT_THAT(source->errors(), IsEmpty());
}

TEST_F(ManifestsSourceTest, SameSizeRewriteIsSeen) {
  Write("b.yaml", Route("r", 1));
  auto source = MakeSource();
  ASSERT_TRUE(source->Start(state_).ok());
  Write("b.yaml", Route("r", 2));  // same size, likely the same timestamp tick
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_EQ((*Find(Kind::kTrafficRoute, "shop", "r"))["spec"]["rules"][0]["backends"][0]["weight"],
            2);
}

TEST_F(ManifestsSourceTest, RenameOverReplacesTheFile) {
  WriteAtomically("route.yaml", Route("r", 1));
  auto source = MakeSource();
  ASSERT_TRUE(source->Start(state_).ok());
  EXPECT_EQ(Keys(), (std::set<std::string>{"TrafficRoute/shop/r"}));
  WriteAtomically("route.yaml", Route("r", 7));
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_EQ((*Find(Kind::kTrafficRoute, "shop", "r"))["spec"]["rules"][0]["backends"][0]["weight"],
            7);
  EXPECT_THAT(source->errors(), IsEmpty());
}

TEST_F(ManifestsSourceTest, MalformedFileKeepsItsLastGoodContent) {
  Write("ns.yaml", kNamespace);
  Write("route.yaml", Route("r", 1));
  auto source = MakeSource();
  ASSERT_TRUE(source->Start(state_).ok());
  const uint64_t generation = state_.generation();

  Write("route.yaml", "apiVersion: policy.shunt.dev/v1alpha1\nkind: TrafficRoute\nspec: [\n");
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_EQ(Keys(), (std::set<std::string>{"Namespace/shop", "TrafficRoute/shop/r"}));
  EXPECT_EQ(state_.generation(), generation);
  EXPECT_THAT(ErrorOf(*source, "route.yaml"), StartsWith("YAML syntax error at line"));
  EXPECT_EQ(source->errors().size(), 1u);
  EXPECT_EQ(source->malformed_total(), 1u);
  ASSERT_TRUE(source->Rescan().ok());  // the same bad version is counted once
  EXPECT_EQ(source->malformed_total(), 1u);

  Write("route.yaml", Route("r", 3));  // fixed
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_THAT(source->errors(), IsEmpty());
  EXPECT_EQ((*Find(Kind::kTrafficRoute, "shop", "r"))["spec"]["rules"][0]["backends"][0]["weight"],
            3);

  Write("route.yaml", "");  // an emptied file is content: its objects go
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_EQ(Keys(), (std::set<std::string>{"Namespace/shop"}));
}

TEST_F(ManifestsSourceTest, FileBadFromTheStartContributesNothingAndOthersApply) {
  Write("a.yaml", kNamespace);
  Write("b.yaml", absl::StrCat(kTwoServices, "---\n- just\n- a list\n"));
  Write("c.yaml", Route("r", 1));
  auto source = MakeSource();
  ASSERT_TRUE(source->Start(state_).ok());
  EXPECT_EQ(Keys(), (std::set<std::string>{"Namespace/shop", "TrafficRoute/shop/r"}));
  EXPECT_EQ(ErrorOf(*source, "b.yaml"), "document 4: expected a mapping (a Kubernetes object)");
  EXPECT_EQ(source->malformed_total(), 1u);
}

TEST_F(ManifestsSourceTest, KindsAndApiVersions) {
  auto source = MakeSource();
  ASSERT_TRUE(source->Start(state_).ok());
  Write("deploy.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n");
  Write("crd.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n");
  Write("old.yaml", absl::StrCat(kNamespace, "---\n",
                                 "apiVersion: policy.shunt.dev/v1\nkind: TrafficRoute\n"
                                 "metadata: {name: r}\nspec: {}\n"));
  Write("unknown.yaml",
        "apiVersion: policy.shunt.dev/v1alpha1\nkind: RateLimit\nmetadata: {name: x}\n");
  Write("nokind.yaml", "apiVersion: v1\nmetadata: {name: x}\n");
  Write("noname.yaml", "apiVersion: v1\nkind: Service\nmetadata: {namespace: shop}\n");
  Write("scalar.yaml", "just text\n");
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_THAT(Keys(), IsEmpty());
  auto errors = source->errors();
  EXPECT_EQ(errors.count("deploy.yaml"), 0u);  // not ours: ignored, not an error
  EXPECT_EQ(errors.count("crd.yaml"), 0u);
  EXPECT_EQ(ErrorOf(*source, "old.yaml"),
            "document 2: unknown kind TrafficRoute of apiVersion policy.shunt.dev/v1 "
            "(policy.shunt.dev/v1alpha1 has TrafficRoute, AccessPolicy, ApiCostPolicy)");
  EXPECT_THAT(ErrorOf(*source, "unknown.yaml"), HasSubstr("unknown kind RateLimit"));
  EXPECT_EQ(ErrorOf(*source, "nokind.yaml"), "document 1: apiVersion and kind are required");
  EXPECT_EQ(ErrorOf(*source, "noname.yaml"), "document 1: Service has no metadata.name");
  EXPECT_EQ(ErrorOf(*source, "scalar.yaml"),
            "document 1: expected a mapping (a Kubernetes object)");
  EXPECT_EQ(errors.size(), 5u);
  EXPECT_EQ(source->malformed_total(), 5u);
}

TEST_F(ManifestsSourceTest, SchemaViolationsAreReportedWithTheFieldPath) {
  Write("ns.yaml", kNamespace);
  Write("routes.yaml", absl::StrCat(Route("ok", 1), "---\n", Route("bad", 1000001)));
  Write("policy.yaml", R"(apiVersion: policy.shunt.dev/v1alpha1
kind: AccessPolicy
metadata: {name: p, namespace: shop}
spec:
  action: ALLOW
  from:
  - ipBlocks: [10.0.0.0/33]
)");
  Write("cost.yaml", R"(apiVersion: policy.shunt.dev/v1alpha1
kind: ApiCostPolicy
metadata: {name: c, namespace: shop}
spec: {service: llm, currency: USD, routes: [{name: chat, perRequest: 0.002}]}
)");
  auto source = MakeSource();
  ASSERT_TRUE(source->Start(state_).ok());
  EXPECT_EQ(Keys(), (std::set<std::string>{"Namespace/shop"}));  // a file applies whole or not
  EXPECT_EQ(ErrorOf(*source, "routes.yaml"),
            "document 2: spec.rules[0].backends[0].weight: must be <= 1000000");
  EXPECT_EQ(ErrorOf(*source, "policy.yaml"),
            "document 1: spec.from[0].ipBlocks[0]: \"10.0.0.0/33\" is not a CIDR (e.g. "
            "10.0.0.0/8, fd00::/64)");
  EXPECT_EQ(ErrorOf(*source, "cost.yaml"),
            "document 1: spec.routes[0].perRequest: expected a string, got 0.002");
  EXPECT_EQ(source->malformed_total(), 3u);
}

TEST_F(ManifestsSourceTest, DuplicatesKeepTheFirstInFileNameOrder) {
  Write("a.yaml", absl::StrCat(kNamespace, "---\n", Route("r", 1)));
  Write("b.yaml", absl::StrCat(Route("r", 2), "---\n", Route("other", 1)));
  auto source = MakeSource();
  ASSERT_TRUE(source->Start(state_).ok());
  EXPECT_EQ(Keys(), (std::set<std::string>{"Namespace/shop", "TrafficRoute/shop/r",
                                           "TrafficRoute/shop/other"}));
  EXPECT_EQ((*Find(Kind::kTrafficRoute, "shop", "r"))["spec"]["rules"][0]["backends"][0]["weight"],
            1);
  auto errors = source->errors();
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(errors.at("b.yaml").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ErrorOf(*source, "b.yaml"),
            "TrafficRoute/shop/r is already defined in a.yaml; ignored here");
  EXPECT_EQ(source->malformed_total(), 1u);
  Write("c.yaml", kNamespace);  // another duplicate; the first is not counted again
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_EQ(source->malformed_total(), 2u);
  EXPECT_EQ(source->errors().size(), 2u);

  Remove("a.yaml");  // b's copy and c's namespace now apply
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_THAT(source->errors(), IsEmpty());
  EXPECT_EQ((*Find(Kind::kTrafficRoute, "shop", "r"))["spec"]["rules"][0]["backends"][0]["weight"],
            2);
  EXPECT_EQ(Keys(), (std::set<std::string>{"Namespace/shop", "TrafficRoute/shop/r",
                                           "TrafficRoute/shop/other"}));

  // Twice within one file: the first document wins.
  Write("d.yaml", absl::StrCat(Route("dup", 1), "---\n", Route("dup", 2)));
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_EQ(
      (*Find(Kind::kTrafficRoute, "shop", "dup"))["spec"]["rules"][0]["backends"][0]["weight"], 1);
  EXPECT_EQ(ErrorOf(*source, "d.yaml"),
            "TrafficRoute/shop/dup is already defined in d.yaml; ignored here");
}

TEST_F(ManifestsSourceTest, HugeFilesAndObjects) {
  Write("ns.yaml", kNamespace);
  // Over the default 4 MiB per file.
  Write("huge.yaml", absl::StrCat(kNamespace, "# ", std::string(size_t{5} << 20, 'x'), "\n"));
  // 1.5 MiB in one object (under the file limit, over the 1 MiB per object).
  Write("big.yaml", absl::StrCat("apiVersion: v1\nkind: Service\nmetadata:\n  name: big\n"
                                 "  annotations: {blob: \"",
                                 std::string(size_t{3} << 19, 'y'), "\"}\n"));
  auto source = MakeSource();
  ASSERT_TRUE(source->Start(state_).ok());
  EXPECT_EQ(Keys(), (std::set<std::string>{"Namespace/shop"}));
  auto errors = source->errors();
  ASSERT_EQ(errors.count("huge.yaml"), 1u);
  EXPECT_EQ(errors.at("huge.yaml").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrorOf(*source, "huge.yaml"),
            "file is over 4194304 bytes (the limit for one manifest file)");
  EXPECT_THAT(ErrorOf(*source, "big.yaml"), StartsWith("document 1: Service/default/big is 1572"));
  EXPECT_THAT(ErrorOf(*source, "big.yaml"),
              HasSubstr("bytes as JSON; at most 1048576 are allowed"));
}

TEST_F(ManifestsSourceTest, AliasBombIsAnError) {
  std::string yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nx0: &a0 [x, x, x, x]\n";
  for (int i = 1; i < 12; ++i) {
    absl::StrAppend(&yaml, "x", i, ": &a", i, " [*a", i - 1, ", *a", i - 1, ", *a", i - 1, ", *a",
                    i - 1, "]\n");
  }
  Write("bomb.yaml", yaml);
  auto source = MakeSource();
  ASSERT_TRUE(source->Start(state_).ok());
  EXPECT_THAT(ErrorOf(*source, "bomb.yaml"), HasSubstr("YAML aliases expand to more than"));
}

TEST_F(ManifestsSourceTest, MissingDirectory) {
  ManifestsOptions options;
  options.dir = dir_.path() + "/nope";
  options.poll_interval = absl::ZeroDuration();
  ManifestsSource source(options);
  absl::Status s = source.Start(state_);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr(options.dir));
  EXPECT_FALSE(source.synced());
  // A file, not a directory.
  Write("file.yaml", kNamespace);
  options.dir = PathOf("file.yaml");
  ManifestsSource not_a_dir(options);
  EXPECT_FALSE(not_a_dir.Start(state_).ok());
}

TEST_F(ManifestsSourceTest, DirectoryVanishingKeepsTheObjects) {
  TempDir other;
  ASSERT_FALSE(other.path().empty());
  const std::string sub = other.path() + "/manifests";
  ASSERT_EQ(::mkdir(sub.c_str(), 0755), 0);
  { std::ofstream(sub + "/ns.yaml") << kNamespace; }
  ManifestsOptions options;
  options.dir = sub;
  options.poll_interval = absl::ZeroDuration();
  ManifestsSource source(options);
  ASSERT_TRUE(source.Start(state_).ok());
  std::filesystem::remove_all(sub);
  EXPECT_EQ(source.Rescan().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Keys(), (std::set<std::string>{"Namespace/shop"}));
  EXPECT_EQ(source.errors().count(sub), 1u);
  ASSERT_EQ(::mkdir(sub.c_str(), 0755), 0);  // back, empty: the directory is the truth again
  ASSERT_TRUE(source.Rescan().ok());
  EXPECT_THAT(Keys(), IsEmpty());
  EXPECT_THAT(source.errors(), IsEmpty());
}

// A ConfigMap volume: files are symlinks through ..data, swapped atomically on update.
TEST_F(ManifestsSourceTest, ConfigMapVolumeLayout) {
  ASSERT_EQ(::mkdir(PathOf("..v1").c_str(), 0755), 0);
  Write("..v1/route.yaml", Route("r", 1));
  ASSERT_EQ(::symlink("..v1", PathOf("..data").c_str()), 0);
  ASSERT_EQ(::symlink("..data/route.yaml", PathOf("route.yaml").c_str()), 0);
  auto source = MakeSource();
  ASSERT_TRUE(source->Start(state_).ok());
  EXPECT_EQ(Keys(), (std::set<std::string>{"TrafficRoute/shop/r"}));
  ASSERT_EQ(::mkdir(PathOf("..v2").c_str(), 0755), 0);
  Write("..v2/route.yaml", Route("r", 2));
  ASSERT_EQ(::symlink("..v2", PathOf("..data_tmp").c_str()), 0);
  ASSERT_EQ(::rename(PathOf("..data_tmp").c_str(), PathOf("..data").c_str()), 0);
  ASSERT_TRUE(source->Rescan().ok());
  EXPECT_EQ((*Find(Kind::kTrafficRoute, "shop", "r"))["spec"]["rules"][0]["backends"][0]["weight"],
            2);
  EXPECT_THAT(source->errors(), IsEmpty());
}

TEST_F(ManifestsSourceTest, PollingThreadPicksUpChanges) {
  Write("ns.yaml", kNamespace);
  ManifestsOptions options;
  options.dir = dir_.path();
  options.poll_interval = absl::Milliseconds(10);
  ManifestsSource source(options);
  ASSERT_TRUE(source.Start(state_).ok());
  absl::Notification seen;
  const int id = state_.Subscribe([this, &seen] {
    if (!seen.HasBeenNotified() && Find(Kind::kTrafficRoute, "shop", "r").has_value()) {
      seen.Notify();
    }
  });
  Write("route.yaml", Route("r", 1));
  EXPECT_TRUE(seen.WaitForNotificationWithTimeout(absl::Seconds(30)));
  source.Stop();
  state_.Unsubscribe(id);
}

TEST_F(ManifestsSourceTest, DocsExamplesLoadCleanly) {
  ManifestsOptions options;
  options.dir = absl::StrCat(SHUNT_SOURCE_DIR, "/docs/examples");
  options.poll_interval = absl::ZeroDuration();
  ManifestsSource source(options);
  ASSERT_TRUE(source.Start(state_).ok());
  EXPECT_THAT(source.errors(), IsEmpty());
  EXPECT_EQ(Keys(), (std::set<std::string>{"Namespace/shop", "TrafficRoute/shop/checkout-canary",
                                           "AccessPolicy/shop/payments-ingress",
                                           "ApiCostPolicy/shop/llm-prices"}));
}

}  // namespace
}  // namespace shunt::controller
