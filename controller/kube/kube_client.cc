#include "controller/kube/kube_client.h"

#include <curl/curl.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace shunt::controller {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return out.str();
}

std::string ResolvePath(const std::string& path, const std::string& base_dir) {
  if (path.empty() || path[0] == '/' || base_dir.empty()) return path;
  return absl::StrCat(base_dir, "/", path);
}

absl::Status HttpError(long code, absl::string_view body) {
  std::string message = absl::StrCat("HTTP ", code);
  // The API server answers errors with a Status object; its message is the useful part.
  nlohmann::json status = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (status.is_object() && status.contains("message") && status["message"].is_string()) {
    absl::StrAppend(&message, ": ", status["message"].get<std::string>());
  } else if (!body.empty()) {
    absl::StrAppend(&message, ": ", body.substr(0, 200));
  }
  absl::StatusCode code_of;
  switch (code) {
    case 400:
      code_of = absl::StatusCode::kInvalidArgument;
      break;
    case 401:
      code_of = absl::StatusCode::kUnauthenticated;
      break;
    case 403:
      code_of = absl::StatusCode::kPermissionDenied;
      break;
    case 404:
      code_of = absl::StatusCode::kNotFound;
      break;
    case 409:
      code_of = absl::StatusCode::kAborted;
      break;
    case 410:
      code_of = absl::StatusCode::kOutOfRange;
      break;
    case 422:
      code_of = absl::StatusCode::kInvalidArgument;
      break;
    case 429:
      code_of = absl::StatusCode::kResourceExhausted;
      break;
    default:
      code_of = code >= 500 ? absl::StatusCode::kUnavailable : absl::StatusCode::kUnknown;
  }
  absl::Status s(code_of, message);
  s.SetPayload(kHttpStatusPayload, absl::Cord(absl::StrCat(code)));
  return s;
}

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// node[key] as a string, "" if absent or not a scalar.
std::string Scalar(const YAML::Node& node, const char* key) {
  const YAML::Node v = node[key];
  if (!v || !v.IsScalar()) return "";
  return v.as<std::string>();
}

// The entry of a kubeconfig list (clusters, users, contexts) called `name`, and its `inner` map.
YAML::Node Named(const YAML::Node& root, const char* list, const std::string& name,
                 const char* inner) {
  const YAML::Node entries = root[list];
  if (!entries || !entries.IsSequence()) return YAML::Node();
  for (const YAML::Node& e : entries) {
    if (e.IsMap() && Scalar(e, "name") == name) return e[inner];
  }
  return YAML::Node();
}

absl::StatusOr<std::string> DecodeData(const std::string& b64, absl::string_view what) {
  std::string compact;
  for (char c : b64) {
    if (!absl::ascii_isspace(static_cast<unsigned char>(c))) compact.push_back(c);
  }
  std::string out;
  if (!absl::Base64Unescape(compact, &out)) {
    return absl::InvalidArgumentError(absl::StrCat("kubeconfig: ", what, " is not base64"));
  }
  return out;
}

// RFC 3986 percent-encoding of a query parameter value (continue tokens are base64).
std::string PercentEncode(absl::string_view in) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : in) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

}  // namespace

int HttpStatusOf(const absl::Status& status) {
  auto payload = status.GetPayload(kHttpStatusPayload);
  int code = 0;
  if (!payload || !absl::SimpleAtoi(std::string(*payload), &code)) return 0;
  return code;
}

absl::StatusOr<KubeConfig> InClusterConfig(const std::string& sa_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !*host || !port || !*port) {
    return absl::FailedPreconditionError(
        "not in a cluster: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set");
  }
  KubeConfig config;
  const bool ipv6 = absl::StrContains(host, ':');
  config.server = ipv6 ? absl::StrCat("https://[", host, "]:", port)
                       : absl::StrCat("https://", host, ":", port);
  config.token_file = absl::StrCat(sa_dir, "/token");
  config.ca_file = absl::StrCat(sa_dir, "/ca.crt");
  if (auto token = ReadFile(config.token_file); !token.ok()) return token.status();
  if (auto ca = ReadFile(config.ca_file); !ca.ok()) return ca.status();
  if (auto ns = ReadFile(absl::StrCat(sa_dir, "/namespace")); ns.ok()) {
    config.ns = std::string(absl::StripAsciiWhitespace(*ns));
  }
  return config;
}

absl::StatusOr<KubeConfig> KubeConfigFromFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  return ParseKubeConfig(text, dir.empty() ? "/" : dir);
}

absl::StatusOr<KubeConfig> ParseKubeConfig(absl::string_view yaml, const std::string& base_dir) {
  try {
    // One document only: YAML::LoadAll loops forever on some inputs in yaml-cpp 0.7.
    const YAML::Node root = YAML::Load(std::string(yaml));
    if (!root.IsMap()) return absl::InvalidArgumentError("kubeconfig is not a YAML mapping");
    const std::string context_name = Scalar(root, "current-context");
    if (context_name.empty())
      return absl::InvalidArgumentError("kubeconfig has no current-context");
    const YAML::Node context = Named(root, "contexts", context_name, "context");
    if (!context || !context.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat("kubeconfig: no context ", context_name));
    }
    const std::string cluster_name = Scalar(context, "cluster");
    const YAML::Node cluster = Named(root, "clusters", cluster_name, "cluster");
    if (!cluster || !cluster.IsMap()) {
      return absl::InvalidArgumentError(absl::StrCat("kubeconfig: no cluster ", cluster_name));
    }
    KubeConfig config;
    config.ns = Scalar(context, "namespace");
    config.server = Scalar(cluster, "server");
    if (config.server.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("kubeconfig: cluster ", cluster_name, " has no server"));
    }
    config.ca_file = ResolvePath(Scalar(cluster, "certificate-authority"), base_dir);
    if (std::string d = Scalar(cluster, "certificate-authority-data"); !d.empty()) {
      ASSIGN_OR_RETURN(config.ca_pem, DecodeData(d, "certificate-authority-data"));
    }
    config.insecure_skip_tls_verify = Scalar(cluster, "insecure-skip-tls-verify") == "true";

    const std::string user_name = Scalar(context, "user");
    const YAML::Node user = Named(root, "users", user_name, "user");
    if (user && user.IsMap()) {
      config.client_cert_file = ResolvePath(Scalar(user, "client-certificate"), base_dir);
      config.client_key_file = ResolvePath(Scalar(user, "client-key"), base_dir);
      if (std::string d = Scalar(user, "client-certificate-data"); !d.empty()) {
        ASSIGN_OR_RETURN(config.client_cert_pem, DecodeData(d, "client-certificate-data"));
      }
      if (std::string d = Scalar(user, "client-key-data"); !d.empty()) {
        ASSIGN_OR_RETURN(config.client_key_pem, DecodeData(d, "client-key-data"));
      }
      config.token = Scalar(user, "token");
      config.token_file = ResolvePath(Scalar(user, "tokenFile"), base_dir);
      if (const YAML::Node exec = user["exec"]; exec && exec.IsMap()) {
        ExecConfig e;
        e.api_version = Scalar(exec, "apiVersion");
        e.command = Scalar(exec, "command");
        // client-go: a command with a path separator is relative to the kubeconfig's directory.
        if (e.command.find('/') != std::string::npos) e.command = ResolvePath(e.command, base_dir);
        e.interactive_mode = Scalar(exec, "interactiveMode");
        if (e.command.empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat("kubeconfig: user ", user_name, ": exec has no command"));
        }
        if (const YAML::Node args = exec["args"]; args && args.IsSequence()) {
          for (const YAML::Node& a : args) e.args.push_back(a.as<std::string>());
        }
        if (const YAML::Node env = exec["env"]; env && env.IsSequence()) {
          for (const YAML::Node& v : env) {
            if (v.IsMap()) e.env.emplace_back(Scalar(v, "name"), Scalar(v, "value"));
          }
        }
        config.exec = std::move(e);
      }
      const bool has_credentials = !config.token.empty() || !config.token_file.empty() ||
                                   !config.client_cert_file.empty() ||
                                   !config.client_cert_pem.empty() || config.exec.has_value();
      if (!has_credentials && user["auth-provider"]) {
        return absl::UnimplementedError(absl::StrCat(
            "kubeconfig: user ", user_name,
            " authenticates with an auth-provider plugin (removed from kubectl in Kubernetes "
            "1.26), which is not supported; use its exec plugin, a token or a client "
            "certificate"));
      }
    } else if (!user_name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("kubeconfig: no user ", user_name));
    }
    return config;
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("kubeconfig: ", e.what()));
  }
}

// One request: its curl handle, its multi handle and what it does with the body.
struct KubeClient::Request {
  CURL* easy = nullptr;
  CURLM* multi = nullptr;
  curl_slist* headers = nullptr;
  std::string url;
  std::string send_body;
  long timeout_ms = 0;  // whole transfer; 0 = none
  std::string body;     // whole body (list, patch, and a watch's error answer)
  // Watch only.
  const WatchFn* watch_fn = nullptr;
  std::string pending;        // bytes after the last newline
  absl::Status stream_error;  // why the write callback aborted
  bool ended_by_callback = false;

  ~Request() { Reset(); }

  // Back to before Perform: no handles, nothing received (the URL and what to send stay).
  void Reset() {
    if (multi && easy) curl_multi_remove_handle(multi, easy);
    if (easy) curl_easy_cleanup(easy);
    if (multi) curl_multi_cleanup(multi);
    if (headers) curl_slist_free_all(headers);
    easy = nullptr;
    multi = nullptr;
    headers = nullptr;
    body.clear();
    pending.clear();
    stream_error = absl::OkStatus();
    ended_by_callback = false;
  }

  long ResponseCode() const {
    long code = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    return code;
  }

  // Feeds complete lines of a watch stream to `watch_fn`; false aborts the transfer.
  bool OnWatchBytes(const char* data, size_t n) {
    const long code = ResponseCode();
    if (code < 200 || code >= 300) {
      body.append(data, n);
      return body.size() < (1 << 20);
    }
    pending.append(data, n);
    size_t start = 0;
    for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      absl::string_view line(pending.data() + start, nl - start);
      if (absl::StripAsciiWhitespace(line).empty()) continue;
      nlohmann::json event = nlohmann::json::parse(line.begin(), line.end(), nullptr,
                                                   /*allow_exceptions=*/false);
      if (!event.is_object() || !event.contains("type") || !event["type"].is_string() ||
          !event.contains("object")) {
        stream_error = absl::DataLossError(
            absl::StrCat("watch ", url, ": not a watch event: ", line.substr(0, 200)));
        return false;
      }
      WatchEvent ev{event["type"].get<std::string>(), std::move(event["object"])};
      if (!(*watch_fn)(std::move(ev))) {
        ended_by_callback = true;
        return false;
      }
    }
    pending.erase(0, start);
    if (pending.size() > (64 << 20)) {
      stream_error = absl::DataLossError(absl::StrCat("watch ", url, ": event over 64 MiB"));
      return false;
    }
    return true;
  }

  static size_t Write(char* data, size_t size, size_t nmemb, void* user) {
    auto* r = static_cast<Request*>(user);
    const size_t n = size * nmemb;
    if (r->watch_fn) return r->OnWatchBytes(data, n) ? n : 0;
    r->body.append(data, n);
    return n;
  }
};

KubeClient::KubeClient(KubeConfig config, KubeClientOptions options)
    : config_(std::move(config)), options_(options) {}

KubeClient::~KubeClient() { Stop(); }

absl::StatusOr<std::unique_ptr<KubeClient>> KubeClient::Create(KubeConfig config,
                                                               KubeClientOptions options) {
  if (!absl::StartsWith(config.server, "https://") && !absl::StartsWith(config.server, "http://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("Kubernetes API server must be an http(s):// URL, not '", config.server, "'"));
  }
  while (absl::EndsWith(config.server, "/")) config.server.pop_back();
  GlobalInit();
  std::unique_ptr<KubeClient> client(new KubeClient(std::move(config), options));
  if (auto token = client->BearerToken(); !token.ok()) return token.status();
  return client;
}

absl::StatusOr<std::pair<ExecCredential, uint64_t>> KubeClient::ExecCredentials(
    uint64_t refused_generation) {
  absl::MutexLock l(&token_mu_);  // one run at a time; the others wait for its result
  const absl::Time now = absl::Now();
  const bool refused = refused_generation != 0 && refused_generation == exec_generation_;
  if (exec_credential_ && !refused && now + options_.exec_refresh_margin < exec_credential_->expiry) {
    return std::make_pair(*exec_credential_, exec_generation_);
  }
  if (!exec_error_.ok() && now - exec_error_at_ < options_.exec_failure_hold) return exec_error_;
  {
    absl::MutexLock s(&mu_);
    if (stopped_) return absl::CancelledError("kube client stopped");
  }
  ++exec_runs_;
  auto cred = RunExecCredential(*config_.exec, options_.exec_timeout, &cancel_exec_);
  if (!cred.ok()) {
    exec_credential_.reset();
    exec_error_ = cred.status();
    exec_error_at_ = absl::Now();
    return cred.status();
  }
  exec_error_ = absl::OkStatus();
  exec_credential_ = *std::move(cred);
  return std::make_pair(*exec_credential_, ++exec_generation_);
}

int KubeClient::exec_runs() const {
  absl::MutexLock l(&token_mu_);
  return exec_runs_;
}

absl::StatusOr<std::string> KubeClient::BearerToken() {
  if (config_.token_file.empty()) return config_.token;
  absl::MutexLock l(&token_mu_);
  const absl::Time now = absl::Now();
  if (now - token_read_at_ >= options_.token_reload_interval) {
    auto token = ReadFile(config_.token_file);
    if (!token.ok()) {
      if (token_.empty()) return token.status();
      // Keep the last token: a rotation in progress must not stop the controller.
      SHUNT_LOG_EVERY_N_SEC(WARNING, 60) << "kube: " << token.status() << "; keeping old token";
    } else {
      token_ = std::string(absl::StripAsciiWhitespace(*token));
      token_read_at_ = now;
    }
  }
  return token_;
}

absl::Status KubeClient::Perform(Request& r) {
  uint64_t generation = 0;
  absl::Status s = PerformOnce(r, /*refused_generation=*/0, &generation);
  if (config_.exec && HttpStatusOf(s) == 401) {
    // The plugin's credential was refused (revoked, or expired early): ask the plugin again,
    // once, as client-go does. Nothing of the refused answer was handed to the caller.
    r.Reset();
    s = PerformOnce(r, generation, &generation);
  }
  return s;
}

absl::Status KubeClient::PerformOnce(Request& r, uint64_t refused_generation,
                                     uint64_t* used_generation) {
  std::string token;
  std::string exec_cert, exec_key;
  if (config_.exec) {
    ASSIGN_OR_RETURN(auto cred, ExecCredentials(refused_generation));
    *used_generation = cred.second;
    token = std::move(cred.first.token);
    exec_cert = std::move(cred.first.client_cert_pem);
    exec_key = std::move(cred.first.client_key_pem);
  } else {
    ASSIGN_OR_RETURN(token, BearerToken());
  }
  r.easy = curl_easy_init();
  r.multi = curl_multi_init();
  if (!r.easy || !r.multi) return absl::ResourceExhaustedError("curl: cannot allocate handles");
  CURL* e = r.easy;
  curl_easy_setopt(e, CURLOPT_URL, r.url.c_str());
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, r.timeout_ms);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Request::Write);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &r);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "shunt-controller");
  if (config_.insecure_skip_tls_verify) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  // Blobs are copied by curl (CURL_BLOB_COPY), so the config's strings may stay const.
  auto blob = [e](CURLoption opt, const std::string& pem) {
    curl_blob b{const_cast<char*>(pem.data()), pem.size(), CURL_BLOB_COPY};
    curl_easy_setopt(e, opt, &b);
  };
  if (!config_.ca_pem.empty()) {
    blob(CURLOPT_CAINFO_BLOB, config_.ca_pem);
  } else if (!config_.ca_file.empty()) {
    curl_easy_setopt(e, CURLOPT_CAINFO, config_.ca_file.c_str());
  }
  if (!exec_cert.empty()) {
    blob(CURLOPT_SSLCERT_BLOB, exec_cert);
    curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
    blob(CURLOPT_SSLKEY_BLOB, exec_key);
    curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
  } else if (!config_.client_cert_pem.empty()) {
    blob(CURLOPT_SSLCERT_BLOB, config_.client_cert_pem);
    curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
  } else if (!config_.client_cert_file.empty()) {
    curl_easy_setopt(e, CURLOPT_SSLCERT, config_.client_cert_file.c_str());
  }
  if (!exec_key.empty()) {
    // set above with the certificate
  } else if (!config_.client_key_pem.empty()) {
    blob(CURLOPT_SSLKEY_BLOB, config_.client_key_pem);
    curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
  } else if (!config_.client_key_file.empty()) {
    curl_easy_setopt(e, CURLOPT_SSLKEY, config_.client_key_file.c_str());
  }
  r.headers = curl_slist_append(r.headers, "Accept: application/json");
  if (!token.empty()) {
    r.headers = curl_slist_append(r.headers, absl::StrCat("Authorization: Bearer ", token).c_str());
  }
  if (!r.send_body.empty()) {
    r.headers = curl_slist_append(r.headers, "Content-Type: application/merge-patch+json");
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PATCH");
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r.send_body.data());
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, static_cast<long>(r.send_body.size()));
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r.headers);
  curl_multi_add_handle(r.multi, e);

  {
    absl::MutexLock l(&mu_);
    if (stopped_) return absl::CancelledError("kube client stopped");
    active_.insert(r.multi);
  }
  bool cancelled = false;
  CURLMcode mc = CURLM_OK;
  for (;;) {
    int running = 0;
    mc = curl_multi_perform(r.multi, &running);
    if (mc != CURLM_OK || running == 0) break;
    {
      absl::MutexLock l(&mu_);
      if (stopped_) {
        cancelled = true;
        break;
      }
    }
    mc = curl_multi_poll(r.multi, nullptr, 0, 1000, nullptr);
    if (mc != CURLM_OK) break;
  }
  {
    absl::MutexLock l(&mu_);
    active_.erase(r.multi);
    if (stopped_) cancelled = true;
  }
  if (cancelled) return absl::CancelledError("kube client stopped");
  if (mc != CURLM_OK) {
    return absl::InternalError(absl::StrCat("curl multi: ", curl_multi_strerror(mc)));
  }
  CURLcode result = CURLE_OK;
  int queued = 0;
  while (CURLMsg* msg = curl_multi_info_read(r.multi, &queued)) {
    if (msg->msg == CURLMSG_DONE && msg->easy_handle == e) result = msg->data.result;
  }
  if (result == CURLE_WRITE_ERROR && r.ended_by_callback) return absl::OkStatus();
  if (result == CURLE_WRITE_ERROR && !r.stream_error.ok()) return r.stream_error;
  const long code = r.ResponseCode();
  if (code != 0 && (code < 200 || code >= 300)) return HttpError(code, r.body);
  if (result != CURLE_OK) {
    return absl::UnavailableError(absl::StrCat(r.url, ": ", curl_easy_strerror(result)));
  }
  return absl::OkStatus();
}

absl::StatusOr<ListResult> KubeClient::List(const ApiResource& resource, int64_t page_size) {
  ListResult out;
  std::string next;
  for (bool first = true; first || !next.empty(); first = false) {
    absl::StatusOr<Page> page = ListPage(resource, page_size, next);
    if (!page.ok() && !next.empty() && IsGone(page.status())) {
      // The snapshot the pages come from was compacted away: as client-go's pager does, read
      // the list whole (one request: consistent by construction).
      SHUNT_LOG(INFO) << "kube: list of " << resource.plural << " expired after "
                      << out.items.size() << " objects; listing again in one request";
      ASSIGN_OR_RETURN(page, ListPage(resource, 0, ""));
      return std::move(page->result);
    }
    if (!page.ok()) return page.status();
    if (first) out.resource_version = page->result.resource_version;
    for (auto& item : page->result.items) out.items.push_back(std::move(item));
    next = std::move(page->next);
  }
  return out;
}

absl::StatusOr<KubeClient::Page> KubeClient::ListPage(const ApiResource& resource, int64_t limit,
                                                      const std::string& continue_token) {
  Request r;
  r.url = absl::StrCat(config_.server, resource.group_version_path, "/", resource.plural);
  if (limit > 0) absl::StrAppend(&r.url, "?limit=", limit);
  if (!continue_token.empty()) {
    absl::StrAppend(&r.url, limit > 0 ? "&" : "?", "continue=", PercentEncode(continue_token));
  }
  r.timeout_ms = absl::ToInt64Milliseconds(options_.request_timeout);
  RETURN_IF_ERROR(Perform(r));
  nlohmann::json list = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (!list.is_object() || !list.contains("items")) {
    return absl::DataLossError(absl::StrCat(r.url, ": answer is not a list"));
  }
  Page out;
  if (list["items"].is_array()) {
    for (auto& item : list["items"]) out.result.items.push_back(std::move(item));
  }
  const nlohmann::json& md = list.contains("metadata") ? list["metadata"] : nlohmann::json();
  if (md.is_object() && md.contains("resourceVersion") && md["resourceVersion"].is_string()) {
    out.result.resource_version = md["resourceVersion"].get<std::string>();
  }
  if (md.is_object() && md.contains("continue") && md["continue"].is_string()) {
    out.next = md["continue"].get<std::string>();
  }
  return out;
}

absl::Status KubeClient::Watch(const ApiResource& resource, const WatchOptions& options,
                               const WatchFn& fn) {
  Request r;
  r.url = absl::StrCat(
      config_.server, resource.group_version_path, "/", resource.plural,
      "?watch=1&allowWatchBookmarks=", options.allow_watch_bookmarks ? "true" : "false");
  if (!options.resource_version.empty()) {
    absl::StrAppend(&r.url, "&resourceVersion=", options.resource_version);
  }
  if (options.timeout_seconds > 0) {
    absl::StrAppend(&r.url, "&timeoutSeconds=", options.timeout_seconds);
    // A server that never ends the watch it promised to end is as good as a dropped one.
    r.timeout_ms = (options.timeout_seconds + 60) * 1000L;
  }
  r.watch_fn = &fn;
  return Perform(r);
}

absl::StatusOr<nlohmann::json> KubeClient::MergePatchStatus(Kind kind, absl::string_view ns,
                                                            absl::string_view name,
                                                            const nlohmann::json& patch) {
  const ApiResource resource = ApiResourceOf(kind);
  Request r;
  r.url = resource.namespaced
              ? absl::StrCat(config_.server, resource.group_version_path, "/namespaces/", ns, "/",
                             resource.plural, "/", name, "/status")
              : absl::StrCat(config_.server, resource.group_version_path, "/", resource.plural, "/",
                             name, "/status");
  // Replace, not throw, on invalid UTF-8 (a message may quote a file name).
  r.send_body = patch.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  r.timeout_ms = absl::ToInt64Milliseconds(options_.request_timeout);
  RETURN_IF_ERROR(Perform(r));
  nlohmann::json out = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (out.is_discarded()) return absl::DataLossError(absl::StrCat(r.url, ": answer is not JSON"));
  return out;
}

void KubeClient::Stop() {
  cancel_exec_ = true;
  absl::MutexLock l(&mu_);
  stopped_ = true;
  for (void* multi : active_) curl_multi_wakeup(static_cast<CURLM*>(multi));
}

}  // namespace shunt::controller
