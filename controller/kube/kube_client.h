// A small Kubernetes REST client over libcurl: list, watch (newline-delimited JSON events) and
// merge-patch of the status subresource. It is what KubernetesSource and KubernetesStatusWriter
// talk through, and nothing else: no caching, no informers, no retries (callers own backoff).
//
// Configuration comes from the pod's service account (in-cluster) or a kubeconfig file. Every
// request runs on its own curl handle, so one client may be used from several threads at once;
// Stop() cancels every request in flight promptly and makes later ones fail with Cancelled.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "controller/cluster_state.h"
#include "controller/kube/exec_credential.h"
#include "nlohmann/json.hpp"

namespace shunt::controller {

inline constexpr char kServiceAccountDir[] = "/var/run/secrets/kubernetes.io/serviceaccount";

// Where the API server is and how to authenticate to it. File and inline ("-data", already
// base64-decoded: PEM bytes) forms may both be set; the inline form wins.
struct KubeConfig {
  std::string server;  // "https://10.0.0.1:443" or, for tests, "http://127.0.0.1:8080"
  std::string ca_file;
  std::string ca_pem;
  bool insecure_skip_tls_verify = false;
  std::string client_cert_file;
  std::string client_cert_pem;
  std::string client_key_file;
  std::string client_key_pem;
  std::string token;       // a static bearer token
  std::string token_file;  // re-read periodically (service-account tokens rotate); wins over token
  std::optional<ExecConfig> exec;  // credentials from a plugin command; win over the above
  std::string ns;          // the context's namespace, "" if none
};

// In-cluster: KUBERNETES_SERVICE_HOST/PORT and the service account's token and ca.crt in `sa_dir`.
absl::StatusOr<KubeConfig> InClusterConfig(const std::string& sa_dir = kServiceAccountDir);
// A kubeconfig file's current context. Relative file paths are taken from the file's directory.
absl::StatusOr<KubeConfig> KubeConfigFromFile(const std::string& path);
// Same, from the YAML text; `base_dir` resolves relative paths.
absl::StatusOr<KubeConfig> ParseKubeConfig(absl::string_view yaml, const std::string& base_dir);

struct KubeClientOptions {
  absl::Duration connect_timeout = absl::Seconds(10);
  absl::Duration request_timeout = absl::Seconds(60);  // list and patch; not watch
  absl::Duration token_reload_interval = absl::Minutes(1);
  absl::Duration exec_timeout = absl::Seconds(30);
  // An exec credential is renewed this long before it expires.
  absl::Duration exec_refresh_margin = absl::Seconds(10);
  // After the plugin failed, requests get that failure for this long without running it again.
  absl::Duration exec_failure_hold = absl::Seconds(1);
};

struct ListResult {
  std::vector<nlohmann::json> items;  // as the server sent them (often without apiVersion/kind)
  std::string resource_version;
};

struct WatchEvent {
  std::string type;  // ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
  nlohmann::json object;
};
// Called on the watching thread for every event as it arrives; return false to end the watch.
using WatchFn = std::function<bool(WatchEvent)>;

struct WatchOptions {
  std::string resource_version;
  bool allow_watch_bookmarks = true;
  int timeout_seconds = 300;  // the server ends the watch cleanly after this
};

// HTTP errors keep their status code as a payload on the absl::Status under this URL.
inline constexpr char kHttpStatusPayload[] = "shunt.dev/http-status";
// The HTTP status code carried by `status`, or 0.
int HttpStatusOf(const absl::Status& status);
// 410 Gone: the resourceVersion is older than the server's history; re-list.
inline bool IsGone(const absl::Status& status) { return HttpStatusOf(status) == 410; }

class KubeClient {
 public:
  static absl::StatusOr<std::unique_ptr<KubeClient>> Create(KubeConfig config,
                                                            KubeClientOptions options = {});
  ~KubeClient();
  KubeClient(const KubeClient&) = delete;
  KubeClient& operator=(const KubeClient&) = delete;

  // All objects of a resource in every namespace, and the list's resourceVersion. With
  // `page_size` > 0 the list is read in pages of that many objects (limit/continue), all from one
  // consistent snapshot; if the continue token expires midway (410), it is read again whole.
  absl::StatusOr<ListResult> List(const ApiResource& resource, int64_t page_size = 0);
  // Streams events after `options.resource_version` to `fn` until the server ends the watch
  // (OK), `fn` returns false (OK), Stop() (Cancelled), or an error: a non-2xx answer (its code as
  // payload), a dropped connection or a line that is not JSON (Unavailable / DataLoss).
  absl::Status Watch(const ApiResource& resource, const WatchOptions& options, const WatchFn& fn);
  // PATCH .../<name>/status with Content-Type application/merge-patch+json; the updated object.
  absl::StatusOr<nlohmann::json> MergePatchStatus(Kind kind, absl::string_view ns,
                                                  absl::string_view name,
                                                  const nlohmann::json& patch);

  // Cancels every request in flight; later requests fail with Cancelled. Idempotent.
  void Stop();

  const KubeConfig& config() const { return config_; }

 private:
  struct Request;
  KubeClient(KubeConfig config, KubeClientOptions options);

  struct Page {
    ListResult result;
    std::string next;  // continue token, "" on the last page
  };
  absl::StatusOr<Page> ListPage(const ApiResource& resource, int64_t limit,
                                const std::string& continue_token);
  // Runs one request to completion (or Stop), feeding the body to `request`.
  absl::Status Perform(Request& request);
  // `refused_generation`: see ExecCredentials; the generation used goes to *used_generation.
  absl::Status PerformOnce(Request& request, uint64_t refused_generation,
                           uint64_t* used_generation);
  absl::StatusOr<std::string> BearerToken() ABSL_LOCKS_EXCLUDED(token_mu_);
  // The exec plugin's credential and its generation. The plugin runs again when the credential
  // expired, or when `refused_generation` (the generation a request got 401 with; 0: none) is
  // still the current one: requests refused together run it once. A failure is remembered for
  // a second (no run per waiting request).
  absl::StatusOr<std::pair<ExecCredential, uint64_t>> ExecCredentials(uint64_t refused_generation)
      ABSL_LOCKS_EXCLUDED(token_mu_);

  const KubeConfig config_;
  const KubeClientOptions options_;

  mutable absl::Mutex token_mu_;
  std::string token_ ABSL_GUARDED_BY(token_mu_);
  absl::Time token_read_at_ ABSL_GUARDED_BY(token_mu_) = absl::InfinitePast();
  std::optional<ExecCredential> exec_credential_ ABSL_GUARDED_BY(token_mu_);
  uint64_t exec_generation_ ABSL_GUARDED_BY(token_mu_) = 0;
  absl::Status exec_error_ ABSL_GUARDED_BY(token_mu_);
  absl::Time exec_error_at_ ABSL_GUARDED_BY(token_mu_) = absl::InfinitePast();
  int exec_runs_ ABSL_GUARDED_BY(token_mu_) = 0;

 public:
  int exec_runs() const ABSL_LOCKS_EXCLUDED(token_mu_);  // times the plugin ran (tests)

 private:

  absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> cancel_exec_{false};  // Stop(): ends a running exec plugin
  std::set<void*> active_ ABSL_GUARDED_BY(mu_);  // CURLM* of requests in flight
};

}  // namespace shunt::controller
