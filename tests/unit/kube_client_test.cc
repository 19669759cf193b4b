#include "controller/kube/kube_client.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fake_kube/fake_kube_server.h"
#include "tests/test_certs.h"
#include "tests/test_util.h"

namespace shunt::controller {
namespace {

using ::shunt::testing::FakeKubeServer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A unique directory under /tmp, removed with everything in it when the test ends.
class TempDir : public shunt::test::TempDir {
 public:
  TempDir() : shunt::test::TempDir("shunt-kube-client-test") {}
};

// Sets an environment variable for the scope, restoring the old value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = ::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

constexpr char kKubeconfig[] = R"(apiVersion: v1
kind: Config
current-context: dev
contexts:
- name: prod
  context: {cluster: prod-cluster, user: prod-user}
- name: dev
  context:
    cluster: dev-cluster
    user: dev-user
    namespace: team-a
clusters:
- name: prod-cluster
  cluster:
    server: https://prod.example:6443
- name: dev-cluster
  cluster:
    server: https://dev.example:6443/
    certificate-authority-data: Q0EgUEVN
users:
- name: prod-user
  user: {token: prod-token}
- name: dev-user
  user:
    token: dev-token
    client-certificate-data: Q0VSVCBQRU0=
    client-key-data: S0VZIFBFTQ==
)";

TEST(KubeConfigTest, CurrentContextWithInlineData) {
  auto config = ParseKubeConfig(kKubeconfig, "/etc/kube");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->server, "https://dev.example:6443/");
  EXPECT_EQ(config->ca_pem, "CA PEM");
  EXPECT_EQ(config->client_cert_pem, "CERT PEM");
  EXPECT_EQ(config->client_key_pem, "KEY PEM");
  EXPECT_EQ(config->token, "dev-token");
  EXPECT_EQ(config->ns, "team-a");
  EXPECT_TRUE(config->ca_file.empty());
  EXPECT_FALSE(config->insecure_skip_tls_verify);
}

TEST(KubeConfigTest, FilePathsAreRelativeToTheKubeconfig) {
  TempDir dir;
  const std::string path = dir.Write("config", R"(
current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "http://127.0.0.1:1", certificate-authority: ca.crt,
            insecure-skip-tls-verify: true}}]
users: [{name: u, user: {client-certificate: /abs/cert.pem, client-key: key.pem,
         tokenFile: tok}}]
)");
  auto config = KubeConfigFromFile(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->server, "http://127.0.0.1:1");
  EXPECT_EQ(config->ca_file, dir.path() + "/ca.crt");
  EXPECT_TRUE(config->insecure_skip_tls_verify);
  EXPECT_EQ(config->client_cert_file, "/abs/cert.pem");
  EXPECT_EQ(config->client_key_file, dir.path() + "/key.pem");
  EXPECT_EQ(config->token_file, dir.path() + "/tok");
}

TEST(KubeConfigTest, ErrorsAreStatusesNotExceptions) {
  EXPECT_EQ(ParseKubeConfig("{{{: [", "/").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseKubeConfig("- a\n- b\n", "/").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseKubeConfig("clusters: []\n", "/").status().code(),
            absl::StatusCode::kInvalidArgument);  // no current-context
  EXPECT_EQ(ParseKubeConfig("current-context: x\n", "/").status().code(),
            absl::StatusCode::kInvalidArgument);  // no such context
  EXPECT_EQ(ParseKubeConfig(R"(
current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://x", certificate-authority-data: "%%%"}}]
)",
                            "/")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto provider = ParseKubeConfig(R"(
current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://x"}}]
users: [{name: u, user: {auth-provider: {name: gcp}}}]
)",
                                  "/");
  EXPECT_EQ(provider.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(provider.status().message()), HasSubstr("exec plugin"));
  EXPECT_EQ(KubeConfigFromFile("/nonexistent/kubeconfig").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(KubeConfigTest, ExecPlugin) {
  auto config = ParseKubeConfig(R"(
current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://x"}}]
users:
- name: u
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: bin/get-token
      args: [eks, get-token, --cluster-name, prod]
      env: [{name: AWS_PROFILE, value: prod}]
      interactiveMode: Never
)",
                                "/etc/kube");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_TRUE(config->exec.has_value());
  EXPECT_EQ(config->exec->api_version, "client.authentication.k8s.io/v1beta1");
  EXPECT_EQ(config->exec->command, "/etc/kube/bin/get-token");  // relative to the kubeconfig
  EXPECT_THAT(config->exec->args, ElementsAre("eks", "get-token", "--cluster-name", "prod"));
  ASSERT_EQ(config->exec->env.size(), 1u);
  EXPECT_EQ(config->exec->env[0].first, "AWS_PROFILE");
  EXPECT_EQ(config->exec->env[0].second, "prod");
  EXPECT_EQ(config->exec->interactive_mode, "Never");
  // A bare name is looked up in PATH.
  config = ParseKubeConfig(R"(
current-context: c
contexts: [{name: c, context: {cluster: k, user: u}}]
clusters: [{name: k, cluster: {server: "https://x"}}]
users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}}}]
)",
                           "/etc/kube");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->exec->command, "aws");
}

TEST(ExecCredentialTest, ParsesTokenCertificateAndExpiry) {
  const std::string v1 = "client.authentication.k8s.io/v1";
  auto c = ParseExecCredential(
      R"({"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",
          "status":{"token":"t","expirationTimestamp":"2030-01-02T03:04:05Z"}})",
      v1);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->token, "t");
  EXPECT_EQ(c->expiry, absl::FromUnixSeconds(1893553445));
  c = ParseExecCredential(
      R"({"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",
          "status":{"clientCertificateData":"C","clientKeyData":"K"}})",
      v1);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->client_cert_pem, "C");
  EXPECT_EQ(c->expiry, absl::InfiniteFuture());
  for (const char* bad : {
           "not json",
           R"({"apiVersion":"client.authentication.k8s.io/v1","kind":"Other","status":{"token":"t"}})",
           R"({"apiVersion":"client.authentication.k8s.io/v1beta1","kind":"ExecCredential","status":{"token":"t"}})",
           R"({"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential"})",
           R"({"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{}})",
           R"({"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"clientKeyData":"K"}})",
           R"({"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"t","expirationTimestamp":"tomorrow"}})",
       }) {
    EXPECT_EQ(ParseExecCredential(bad, v1).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST(InClusterConfigTest, FromEnvironmentAndServiceAccount) {
  TempDir sa;
  sa.Write("token", "tok-1\n");
  sa.Write("ca.crt", "CA");
  sa.Write("namespace", "shunt-system");
  ScopedEnv host("KUBERNETES_SERVICE_HOST", "10.96.0.1");
  ScopedEnv port("KUBERNETES_SERVICE_PORT", "443");
  auto config = InClusterConfig(sa.path());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->server, "https://10.96.0.1:443");
  EXPECT_EQ(config->token_file, sa.path() + "/token");
  EXPECT_EQ(config->ca_file, sa.path() + "/ca.crt");
  EXPECT_EQ(config->ns, "shunt-system");
}

TEST(InClusterConfigTest, Ipv6HostIsBracketed) {
  TempDir sa;
  sa.Write("token", "t");
  sa.Write("ca.crt", "CA");
  ScopedEnv host("KUBERNETES_SERVICE_HOST", "fd00::1");
  ScopedEnv port("KUBERNETES_SERVICE_PORT", "6443");
  auto config = InClusterConfig(sa.path());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->server, "https://[fd00::1]:6443");
}

TEST(InClusterConfigTest, OutsideAClusterOrWithoutToken) {
  {
    ScopedEnv host("KUBERNETES_SERVICE_HOST", nullptr);
    EXPECT_EQ(InClusterConfig("/nonexistent").status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
  ScopedEnv host("KUBERNETES_SERVICE_HOST", "10.96.0.1");
  ScopedEnv port("KUBERNETES_SERVICE_PORT", "443");
  EXPECT_EQ(InClusterConfig("/nonexistent").status().code(), absl::StatusCode::kNotFound);
}

nlohmann::json Pod(const std::string& ns, const std::string& name) {
  return {{"apiVersion", "v1"},
          {"kind", "Pod"},
          {"metadata", {{"namespace", ns}, {"name", name}}},
          {"spec", {{"nodeName", "node-1"}}}};
}

class KubeClientTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.Start().ok()); }
  std::unique_ptr<KubeClient> Client(KubeConfig config = {}, KubeClientOptions options = {}) {
    config.server = server_.url();
    auto client = KubeClient::Create(std::move(config), options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }
  FakeKubeServer server_;
};

TEST_F(KubeClientTest, RejectsNonHttpServers) {
  KubeConfig config;
  config.server = "ftp://x";
  EXPECT_EQ(KubeClient::Create(config).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(KubeClientTest, ListReturnsItemsAndResourceVersion) {
  ASSERT_TRUE(server_.Create(Pod("default", "a")).ok());
  ASSERT_TRUE(server_.Create(Pod("other", "b")).ok());
  auto client = Client();
  auto list = client->List(ApiResourceOf(Kind::kPod));
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->items.size(), 2u);
  EXPECT_EQ(list->items[0]["metadata"]["name"], "a");
  EXPECT_EQ(list->resource_version, std::to_string(server_.resource_version()));
}

TEST_F(KubeClientTest, HttpErrorsKeepTheirCode) {
  server_.SetInstalled(Kind::kTrafficRoute, false);
  auto client = Client();
  auto list = client->List(ApiResourceOf(Kind::kTrafficRoute));
  EXPECT_EQ(list.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(HttpStatusOf(list.status()), 404);
  auto patch =
      client->MergePatchStatus(Kind::kAccessPolicy, "default", "missing", {{"status", {{"x", 1}}}});
  EXPECT_EQ(patch.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(KubeClientTest, ConnectionRefusedIsUnavailable) {
  KubeConfig config;
  config.server = "http://127.0.0.1:1";
  auto client = KubeClient::Create(config);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->List(ApiResourceOf(Kind::kPod)).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(KubeClientTest, TokenFileIsReadAgain) {
  TempDir dir;
  const std::string token = dir.Write("token", "first\n");
  KubeConfig config;
  config.token_file = token;
  KubeClientOptions options;
  options.token_reload_interval = absl::ZeroDuration();
  auto client = Client(config, options);
  ASSERT_TRUE(client->List(ApiResourceOf(Kind::kPod)).ok());
  EXPECT_EQ(server_.last_authorization(), "Bearer first");
  dir.Write("token", "second");
  ASSERT_TRUE(client->List(ApiResourceOf(Kind::kPod)).ok());
  EXPECT_EQ(server_.last_authorization(), "Bearer second");
}

TEST_F(KubeClientTest, StaticToken) {
  KubeConfig config;
  config.token = "static";
  auto client = Client(config);
  ASSERT_TRUE(client->List(ApiResourceOf(Kind::kPod)).ok());
  EXPECT_EQ(server_.last_authorization(), "Bearer static");
}

// Collects events from a watch running on its own thread.
class Watcher {
 public:
  Watcher(KubeClient& client, WatchOptions options) {
    thread_ = std::thread([this, &client, options] {
      absl::Status s = client.Watch(ApiResourceOf(Kind::kPod), options, [this](WatchEvent ev) {
        absl::MutexLock l(&mu_);
        types_.push_back(ev.type);
        return true;
      });
      absl::MutexLock l(&mu_);
      result_ = s;
      done_ = true;
    });
  }
  ~Watcher() { thread_.join(); }
  std::vector<std::string> types() {
    absl::MutexLock l(&mu_);
    return types_;
  }
  // Waits up to `timeout` for `n` events.
  bool WaitEvents(size_t n, absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock l(&mu_);
    auto enough = [this, n]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return types_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }
  std::optional<absl::Status> WaitDone(absl::Duration timeout = absl::Seconds(10)) {
    absl::MutexLock l(&mu_);
    if (!mu_.AwaitWithTimeout(absl::Condition(&done_), timeout)) return std::nullopt;
    return result_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> types_ ABSL_GUARDED_BY(mu_);
  absl::Status result_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

TEST_F(KubeClientTest, WatchStreamsEventsAsTheyHappen) {
  auto client = Client();
  const std::string rv = std::to_string(server_.resource_version());
  Watcher w(*client, WatchOptions{rv, true, 30});
  ASSERT_TRUE(server_.Create(Pod("default", "a")).ok());
  ASSERT_TRUE(w.WaitEvents(1));
  auto pod = Pod("default", "a");
  pod["spec"]["nodeName"] = "node-2";
  ASSERT_TRUE(server_.Update(pod).ok());
  ASSERT_TRUE(server_.Delete({Kind::kPod, "default", "a"}).ok());
  server_.SendBookmarks();
  ASSERT_TRUE(w.WaitEvents(4));
  EXPECT_THAT(w.types(), ElementsAre("ADDED", "MODIFIED", "DELETED", "BOOKMARK"));
  client->Stop();
  auto done = w.WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), absl::StatusCode::kCancelled);
}

TEST_F(KubeClientTest, StopEndsAnIdleWatchPromptly) {
  auto client = Client();
  Watcher w(*client, WatchOptions{std::to_string(server_.resource_version()), true, 300});
  absl::SleepFor(absl::Milliseconds(100));  // let it connect; Stop must work either way
  const absl::Time start = absl::Now();
  client->Stop();
  ASSERT_TRUE(w.WaitDone(absl::Seconds(5)).has_value());
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
  EXPECT_EQ(client->List(ApiResourceOf(Kind::kPod)).status().code(), absl::StatusCode::kCancelled);
}

TEST_F(KubeClientTest, DroppedWatchIsAnError) {
  auto client = Client();
  Watcher w(*client, WatchOptions{std::to_string(server_.resource_version()), true, 300});
  ASSERT_TRUE(server_.Create(Pod("default", "a")).ok());
  ASSERT_TRUE(w.WaitEvents(1));
  server_.DropWatches();
  auto done = w.WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), absl::StatusCode::kUnavailable) << *done;
}

TEST_F(KubeClientTest, WatchEndsCleanlyAtTimeoutSeconds) {
  auto client = Client();
  Watcher w(*client, WatchOptions{std::to_string(server_.resource_version()), true, 1});
  auto done = w.WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_TRUE(done->ok()) << *done;
}

TEST_F(KubeClientTest, TooOldResourceVersionIsAnErrorEvent) {
  ASSERT_TRUE(server_.Create(Pod("default", "a")).ok());
  server_.CompactHistory();
  auto client = Client();
  std::vector<WatchEvent> events;
  absl::Status s =
      client->Watch(ApiResourceOf(Kind::kPod), WatchOptions{"1", true, 30}, [&](WatchEvent ev) {
        events.push_back(std::move(ev));
        return true;
      });
  EXPECT_TRUE(s.ok()) << s;
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, "ERROR");
  EXPECT_EQ(events[0].object["code"], 410);
}

TEST_F(KubeClientTest, MergePatchStatus) {
  nlohmann::json policy = {{"apiVersion", "policy.shunt.dev/v1alpha1"},
                           {"kind", "AccessPolicy"},
                           {"metadata", {{"namespace", "default"}, {"name", "p"}}},
                           {"spec", {{"action", "Allow"}}},
                           {"status", {{"keep", "me"}}}};
  ASSERT_TRUE(server_.Create(policy).ok());
  auto client = Client();
  auto patched =
      client->MergePatchStatus(Kind::kAccessPolicy, "default", "p",
                               {{"status", {{"phase", "Ready"}}}, {"spec", {{"action", "Deny"}}}});
  ASSERT_TRUE(patched.ok()) << patched.status();
  auto stored = server_.Get({Kind::kAccessPolicy, "default", "p"});
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ((*stored)["status"]["phase"], "Ready");
  EXPECT_EQ((*stored)["status"]["keep"], "me");
  EXPECT_EQ((*stored)["spec"]["action"], "Allow");  // the status subresource ignores spec
  EXPECT_EQ(*patched, *stored);
}

TEST_F(KubeClientTest, ListIsReadInPagesOfOneSnapshot) {
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(server_.Create(Pod("default", absl::StrCat("p", i))).ok());
  const std::string rv = std::to_string(server_.resource_version());
  auto client = Client();
  auto list = client->List(ApiResourceOf(Kind::kPod), /*page_size=*/3);
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->items.size(), 7u);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(list->items[i]["metadata"]["name"], absl::StrCat("p", i));
  EXPECT_EQ(list->resource_version, rv);
  EXPECT_EQ(server_.list_requests(Kind::kPod), 3);  // 3 + 3 + 1
  EXPECT_EQ(server_.continue_requests(Kind::kPod), 2);
}

TEST_F(KubeClientTest, ExpiredContinueTokenListsAgainWhole) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(server_.Create(Pod("default", absl::StrCat("p", i))).ok());
  server_.ExpireListsAfterNextPage();
  auto client = Client();
  auto list = client->List(ApiResourceOf(Kind::kPod), /*page_size=*/2);
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->items.size(), 5u);  // not 2 + 5: the pages read before the 410 are dropped
  EXPECT_EQ(list->resource_version, std::to_string(server_.resource_version()));
  EXPECT_EQ(server_.list_requests(Kind::kPod), 3);  // page 1, page 2 (410), the whole list
}

TEST_F(KubeClientTest, UnauthorizedIsUnauthenticated) {
  server_.RequireToken("right");
  KubeConfig config;
  config.token = "wrong";
  auto client = Client(config);
  auto list = client->List(ApiResourceOf(Kind::kPod));
  EXPECT_EQ(list.status().code(), absl::StatusCode::kUnauthenticated) << list.status();
  EXPECT_EQ(HttpStatusOf(list.status()), 401);
  EXPECT_EQ(server_.unauthorized_requests(), 1);
}

// ---- HTTPS, as to a real API server ---------------------------------------------------------

class KubeClientTlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { certs_ = new shunt::test::Certs(); }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
  }
  void SetUp() override {
    ASSERT_EQ(certs_->error(), "");
    // civetweb takes the certificate and its key from one PEM file.
    const std::string pem = dir_.Write(
        "server.pem", shunt::test::ReadWholeFile(Cert("server.crt")) +
                          shunt::test::ReadWholeFile(Cert("server.key")));
    ASSERT_TRUE(server_.Start({pem, Cert("ca.crt")}).ok());
    ASSERT_THAT(server_.url(), ::testing::StartsWith("https://"));
    server_.RequireToken("sa-token-1");
    ASSERT_TRUE(server_.Create(Pod("default", "a")).ok());
  }
  static std::string Cert(const std::string& name) { return certs_->Path(name); }
  static std::string B64(const std::string& file) {
    return absl::Base64Escape(shunt::test::ReadWholeFile(Cert(file)));
  }

  static shunt::test::Certs* certs_;
  TempDir dir_;
  FakeKubeServer server_;
};
shunt::test::Certs* KubeClientTlsTest::certs_ = nullptr;

TEST_F(KubeClientTlsTest, InClusterServiceAccountOverHttps) {
  dir_.Write("token", "sa-token-1\n");
  dir_.Write("namespace", "shunt-system");
  std::filesystem::copy_file(Cert("ca.crt"), dir_.path() + "/ca.crt");
  ScopedEnv host("KUBERNETES_SERVICE_HOST", "127.0.0.1");
  const std::string port = std::to_string(server_.port());
  ScopedEnv port_env("KUBERNETES_SERVICE_PORT", port.c_str());
  auto config = InClusterConfig(dir_.path());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->server, server_.url());
  KubeClientOptions options;
  options.token_reload_interval = absl::ZeroDuration();
  auto client = KubeClient::Create(*config, options);
  ASSERT_TRUE(client.ok()) << client.status();
  auto list = (*client)->List(ApiResourceOf(Kind::kPod));
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->items.size(), 1u);
  EXPECT_EQ(server_.last_authorization(), "Bearer sa-token-1");

  // The kubelet rotates the projected token; the API server stops accepting the old one.
  server_.RequireToken("sa-token-2");
  EXPECT_EQ((*client)->List(ApiResourceOf(Kind::kPod)).status().code(),
            absl::StatusCode::kUnauthenticated);
  dir_.Write("token", "sa-token-2\n");
  list = (*client)->List(ApiResourceOf(Kind::kPod));
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(server_.last_authorization(), "Bearer sa-token-2");

  // A watch over TLS streams events as they happen.
  std::vector<std::string> types;
  std::thread writer([&] {
    absl::SleepFor(absl::Milliseconds(100));
    server_.Create(Pod("default", "b")).IgnoreError();
  });
  absl::Status s = (*client)->Watch(
      ApiResourceOf(Kind::kPod), WatchOptions{list->resource_version, true, 30},
      [&](WatchEvent ev) {
        types.push_back(ev.type);
        return false;  // one is enough
      });
  writer.join();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_THAT(types, ElementsAre("ADDED"));
}

TEST_F(KubeClientTlsTest, KubeconfigWithInlineCaAndClientCertificate) {
  const std::string kubeconfig = absl::StrCat(R"(apiVersion: v1
kind: Config
current-context: c
contexts:
- name: c
  context: {cluster: k, user: u}
clusters:
- name: k
  cluster:
    server: )", server_.url(), R"(
    certificate-authority-data: )", B64("ca.crt"), R"(
users:
- name: u
  user:
    client-certificate-data: )", B64("client.crt"), R"(
    client-key-data: )", B64("client.key"), "\n");
  auto config = ParseKubeConfig(kubeconfig, dir_.path());
  ASSERT_TRUE(config.ok()) << config.status();
  auto client = KubeClient::Create(*config);
  ASSERT_TRUE(client.ok()) << client.status();
  auto list = (*client)->List(ApiResourceOf(Kind::kPod));
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->items.size(), 1u);
  EXPECT_EQ(server_.last_authorization(), "");  // authenticated by the certificate alone
  EXPECT_THAT(server_.last_client_subject(), HasSubstr("node-a"));
}

TEST_F(KubeClientTlsTest, KubeconfigWithCaFileAndToken) {
  dir_.Write("kubeconfig", absl::StrCat("apiVersion: v1\nkind: Config\ncurrent-context: c\n",
                                        "contexts: [{name: c, context: {cluster: k, user: u}}]\n",
                                        "clusters: [{name: k, cluster: {server: '", server_.url(),
                                        "', certificate-authority: ", Cert("ca.crt"), "}}]\n",
                                        "users: [{name: u, user: {token: sa-token-1}}]\n"));
  auto config = KubeConfigFromFile(dir_.path() + "/kubeconfig");
  ASSERT_TRUE(config.ok()) << config.status();
  auto client = KubeClient::Create(*config);
  ASSERT_TRUE(client.ok());
  auto list = (*client)->List(ApiResourceOf(Kind::kPod), /*page_size=*/1);
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->items.size(), 1u);
}

TEST_F(KubeClientTlsTest, ServerCertificateIsVerified) {
  KubeConfig config;
  config.server = server_.url();
  config.token = "sa-token-1";
  config.ca_file = Cert("other_ca.crt");  // not the CA that signed the server's certificate
  auto client = KubeClient::Create(config);
  ASSERT_TRUE(client.ok());
  auto list = (*client)->List(ApiResourceOf(Kind::kPod));
  EXPECT_EQ(list.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(list.status().message()), HasSubstr("certificate")) << list.status();

  // The right CA, but the server is reached under a name its certificate does not carry.
  config.ca_file = Cert("ca.crt");
  config.server = absl::StrCat("https://localhost:", server_.port());
  client = KubeClient::Create(config);
  ASSERT_TRUE(client.ok());
  list = (*client)->List(ApiResourceOf(Kind::kPod));
  EXPECT_EQ(list.status().code(), absl::StatusCode::kUnavailable) << list.status();
  EXPECT_THAT(std::string(list.status().message()), HasSubstr("certificate")) << list.status();

  // insecure-skip-tls-verify: accepted, as kubectl would.
  config.ca_file.clear();
  config.insecure_skip_tls_verify = true;
  client = KubeClient::Create(config);
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE((*client)->List(ApiResourceOf(Kind::kPod)).ok());
}

TEST_F(KubeClientTlsTest, ClientCertificateFromAnotherCaIsNotAccepted) {
  KubeConfig config;
  config.server = server_.url();
  config.ca_file = Cert("ca.crt");
  config.client_cert_file = Cert("rogue_client.crt");
  config.client_key_file = Cert("rogue_client.key");
  auto client = KubeClient::Create(config);
  ASSERT_TRUE(client.ok());
  auto list = (*client)->List(ApiResourceOf(Kind::kPod));
  EXPECT_EQ(list.status().code(), absl::StatusCode::kUnavailable) << list.status();
  EXPECT_EQ(server_.list_requests(Kind::kPod), 0);  // the handshake failed: no request got in
}

// ---- exec credential plugins ------------------------------------------------------------------

// A plugin as a shell script: checks that it was given KUBERNETES_EXEC_INFO, counts its runs and
// prints credential.json (which the test rewrites to rotate credentials).
class ExecPluginTest : public KubeClientTlsTest {
 protected:
  void SetUp() override {
    KubeClientTlsTest::SetUp();
    if (HasFatalFailure()) return;
    dir_.Write("plugin.sh",
               "#!/bin/sh\n"
               "[ -n \"$KUBERNETES_EXEC_INFO\" ] || { echo 'no KUBERNETES_EXEC_INFO' >&2; exit 3; }\n"
               "[ -f \"$PLUGIN_DIR/fail\" ] && { cat \"$PLUGIN_DIR/fail\" >&2; exit 1; }\n"
               "[ -f \"$PLUGIN_DIR/hang\" ] && exec sleep 10\n"
               "[ -f \"$PLUGIN_DIR/quiet-hang\" ] && { exec >/dev/null 2>&1; exec sleep 10; }\n"
               "[ -f \"$PLUGIN_DIR/helper\" ] && { sleep 10 & echo $! > \"$PLUGIN_DIR/helper.pid\"; }\n"
               "cat \"$PLUGIN_DIR/credential.json\"\n");
    chmod((dir_.path() + "/plugin.sh").c_str(), 0755);
  }
  void WriteCredential(nlohmann::json status,
                       const std::string& api_version = "client.authentication.k8s.io/v1") {
    dir_.Write("credential.json", nlohmann::json{{"apiVersion", api_version},
                                                 {"kind", "ExecCredential"},
                                                 {"status", std::move(status)}}
                                      .dump());
  }
  std::unique_ptr<KubeClient> ExecClient(KubeClientOptions options = {}) {
    KubeConfig config;
    config.server = server_.url();
    config.ca_file = Cert("ca.crt");
    config.exec = ExecConfig{"client.authentication.k8s.io/v1", dir_.path() + "/plugin.sh", {},
                             {{"PLUGIN_DIR", dir_.path()}}, "IfAvailable"};
    auto client = KubeClient::Create(config, options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }
};

TEST_F(ExecPluginTest, TokenIsCachedUntilRefusedOrExpired) {
  WriteCredential({{"token", "sa-token-1"}, {"expirationTimestamp", "2099-01-01T00:00:00Z"}});
  auto client = ExecClient();
  ASSERT_TRUE(client->List(ApiResourceOf(Kind::kPod)).ok());
  ASSERT_TRUE(client->List(ApiResourceOf(Kind::kPod)).ok());
  EXPECT_EQ(client->exec_runs(), 1);  // cached until it expires
  EXPECT_EQ(server_.last_authorization(), "Bearer sa-token-1");

  // Revoked early: the 401 makes the client ask the plugin again, once, and the request passes.
  server_.RequireToken("sa-token-2");
  WriteCredential({{"token", "sa-token-2"}, {"expirationTimestamp", "2099-01-01T00:00:00Z"}});
  auto list = client->List(ApiResourceOf(Kind::kPod));
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(client->exec_runs(), 2);
  EXPECT_EQ(server_.unauthorized_requests(), 1);
  EXPECT_EQ(server_.last_authorization(), "Bearer sa-token-2");

  // An expired credential is renewed before it is used.
  WriteCredential({{"token", "sa-token-2"}, {"expirationTimestamp", "2020-01-01T00:00:00Z"}});
  auto fresh = ExecClient();
  ASSERT_TRUE(fresh->List(ApiResourceOf(Kind::kPod)).ok());
  ASSERT_TRUE(fresh->List(ApiResourceOf(Kind::kPod)).ok());
  EXPECT_EQ(fresh->exec_runs(), 2);
  EXPECT_EQ(server_.unauthorized_requests(), 1);  // it never sent a stale token
}

TEST_F(ExecPluginTest, ClientCertificateFromThePlugin) {
  WriteCredential({{"clientCertificateData", shunt::test::ReadWholeFile(Cert("client.crt"))},
                   {"clientKeyData", shunt::test::ReadWholeFile(Cert("client.key"))}});
  auto client = ExecClient();
  auto list = client->List(ApiResourceOf(Kind::kPod));
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_THAT(server_.last_client_subject(), HasSubstr("node-a"));
  EXPECT_EQ(server_.last_authorization(), "");
}

TEST_F(ExecPluginTest, PluginFailuresAreClearErrors) {
  KubeClientOptions options;
  options.exec_timeout = absl::Milliseconds(300);
  options.exec_failure_hold = absl::ZeroDuration();  // every request tries the plugin again
  auto client = ExecClient(options);

  dir_.Write("fail", "error: SSO session expired, run 'aws sso login'\n");
  auto list = client->List(ApiResourceOf(Kind::kPod));
  EXPECT_EQ(list.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(list.status().message()), HasSubstr("aws sso login"));
  EXPECT_THAT(std::string(list.status().message()), HasSubstr("exit 1"));
  std::filesystem::remove(dir_.path() + "/fail");

  WriteCredential({{"token", "sa-token-1"}}, "client.authentication.k8s.io/v1beta1");
  list = client->List(ApiResourceOf(Kind::kPod));
  EXPECT_EQ(list.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(list.status().message()), HasSubstr("apiVersion"));

  dir_.Write("hang", "");
  const absl::Time start = absl::Now();
  list = client->List(ApiResourceOf(Kind::kPod));
  EXPECT_EQ(list.status().code(), absl::StatusCode::kDeadlineExceeded) << list.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // killed at the timeout, not after 10 s
  std::filesystem::remove(dir_.path() + "/hang");

  // Closes its output, then never exits: killed at the timeout all the same.
  dir_.Write("quiet-hang", "");
  list = client->List(ApiResourceOf(Kind::kPod));
  EXPECT_EQ(list.status().code(), absl::StatusCode::kDeadlineExceeded) << list.status();
  std::filesystem::remove(dir_.path() + "/quiet-hang");

  WriteCredential({{"token", "sa-token-1"}});
  EXPECT_TRUE(client->List(ApiResourceOf(Kind::kPod)).ok());
  EXPECT_EQ(server_.list_requests(Kind::kPod), 1);  // no request went out without credentials
}

// Requests refused together, or failing together, run the plugin once.
TEST_F(ExecPluginTest, ConcurrentRequestsShareOnePluginRun) {
  WriteCredential({{"token", "sa-token-1"}, {"expirationTimestamp", "2099-01-01T00:00:00Z"}});
  auto client = ExecClient();
  ASSERT_TRUE(client->List(ApiResourceOf(Kind::kPod)).ok());
  ASSERT_EQ(client->exec_runs(), 1);
  server_.RequireToken("sa-token-2");
  WriteCredential({{"token", "sa-token-2"}, {"expirationTimestamp", "2099-01-01T00:00:00Z"}});
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] { ok += client->List(ApiResourceOf(Kind::kPod)).ok() ? 1 : 0; });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4);
  EXPECT_EQ(client->exec_runs(), 2);  // one run for the four 401s

  dir_.Write("fail", "no credentials\n");
  server_.RequireToken("sa-token-3");  // the next requests get 401, and the plugin fails
  threads.clear();
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] { client->List(ApiResourceOf(Kind::kPod)).IgnoreError(); });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(client->exec_runs(), 3);  // the failure is held for a second, not re-run 4 times
}

TEST_F(ExecPluginTest, StopEndsARunningPlugin) {
  dir_.Write("hang", "");
  auto client = ExecClient();  // 30 s timeout
  absl::Status result;
  std::thread t([&] { result = client->List(ApiResourceOf(Kind::kPod)).status(); });
  absl::SleepFor(absl::Milliseconds(200));  // the plugin is running (either way Stop must end it)
  const absl::Time start = absl::Now();
  client->Stop();
  t.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  EXPECT_EQ(result.code(), absl::StatusCode::kCancelled) << result;
}

// A plugin that leaves a helper behind holding its stdout (a token cache daemon, say) has
// answered when it exits, not when the helper goes.
TEST_F(ExecPluginTest, AnswerCountsWhenThePluginExits) {
  WriteCredential({{"token", "sa-token-1"}});
  dir_.Write("helper", "");
  KubeClientOptions options;
  options.exec_timeout = absl::Seconds(5);
  auto client = ExecClient(options);
  const absl::Time start = absl::Now();
  auto list = client->List(ApiResourceOf(Kind::kPod));
  EXPECT_TRUE(list.ok()) << list.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  // The helper is the plugin's, not ours to kill: stop it (it would otherwise linger 10 s).
  int helper = 0;
  std::ifstream(dir_.path() + "/helper.pid") >> helper;
  if (helper > 0) kill(helper, SIGKILL);
}

}  // namespace
}  // namespace shunt::controller
