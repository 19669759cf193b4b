#include "tests/fake_kube/fake_kube_server.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace shunt::testing {
namespace {

using controller::ApiResource;
using controller::ApiResourceOf;
using controller::kAllKinds;
using controller::Kind;
using controller::KindName;
using controller::ObjectKey;

nlohmann::json StatusObject(int code, const std::string& reason, const std::string& message) {
  return {{"kind", "Status"},    {"apiVersion", "v1"}, {"metadata", nlohmann::json::object()},
          {"status", "Failure"}, {"message", message}, {"reason", reason},
          {"code", code}};
}

void SendJson(mg_connection* conn, int code, const nlohmann::json& body) {
  const std::string s = body.dump();
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n",
            code, mg_get_response_code_text(conn, code), s.size());
  mg_write(conn, s.data(), s.size());
}

int SendError(mg_connection* conn, int code, const std::string& reason,
              const std::string& message) {
  SendJson(conn, code, StatusObject(code, reason, message));
  return code;
}

// One chunk of a chunked response; false once the peer is gone.
bool WriteChunk(mg_connection* conn, const std::string& data) {
  if (data.empty()) return true;
  char head[32];
  const int n = std::snprintf(head, sizeof(head), "%zx\r\n", data.size());
  return mg_write(conn, head, n) > 0 &&
         mg_write(conn, data.data(), data.size()) == static_cast<int>(data.size()) &&
         mg_write(conn, "\r\n", 2) > 0;
}

std::string EventLine(const std::string& type, const nlohmann::json& object) {
  return nlohmann::json{{"type", type}, {"object", object}}.dump() + "\n";
}

std::string Query(const std::string& query, const char* name) {
  char buf[256];
  const int n = mg_get_var(query.data(), query.size(), name, buf, sizeof(buf));
  return n < 0 ? "" : std::string(buf, n);
}

bool InNamespace(const nlohmann::json& object, const std::string& ns) {
  if (ns.empty()) return true;
  auto md = object.find("metadata");
  return md != object.end() && md->is_object() && md->value("namespace", "") == ns;
}

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

}  // namespace

FakeKubeServer::~FakeKubeServer() { Stop(); }

std::string FakeKubeServer::url() const {
  return absl::StrCat(tls_ ? "https" : "http", "://127.0.0.1:", port_);
}

absl::Status FakeKubeServer::Start() { return Start(TlsOptions{}); }

absl::Status FakeKubeServer::Start(const TlsOptions& tls) {
  if (ctx_) return absl::FailedPreconditionError("already started");
  const char* options[] = {"listening_ports",   "127.0.0.1:0", "num_threads", "128",
                           "enable_keep_alive", "no",          nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  ctx_ = mg_start(&callbacks, this, options);
  if (!ctx_) return absl::InternalError("civetweb: mg_start failed");
  mg_set_request_handler(ctx_, "/api", &FakeKubeServer::Handle, this);
  mg_set_request_handler(ctx_, "/apis", &FakeKubeServer::Handle, this);
  mg_server_port ports[4];
  std::memset(ports, 0, sizeof(ports));
  const int n = mg_get_server_ports(ctx_, 4, ports);
  if (n < 1 || ports[0].port == 0) {
    Stop();
    return absl::InternalError("civetweb: no listening port");
  }
  port_ = ports[0].port;
  backend_port_ = port_;
  if (!tls.cert_chain_and_key_file.empty()) {
    tls_front_ = std::make_unique<TlsFront>();
    if (absl::Status s =
            tls_front_->Start(tls.cert_chain_and_key_file, tls.client_ca_file, backend_port_);
        !s.ok()) {
      Stop();
      return s;
    }
    tls_ = true;
    port_ = tls_front_->port();
  }
  return absl::OkStatus();
}

void FakeKubeServer::Stop() {
  if (tls_front_) tls_front_->Stop();  // first: it holds connections to civetweb
  if (!ctx_) return;
  {
    absl::MutexLock l(&mu_);
    stopping_ = true;
  }
  // mg_stop waits for the handlers (they see stopping_) and for civetweb's accept loop, which
  // only notices the stop flag between polls of up to 2 s: connections wake it sooner.
  std::atomic<bool> stopped{false};
  std::thread stopper([this, &stopped] {
    mg_stop(ctx_);
    stopped = true;
  });
  while (!stopped) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(static_cast<uint16_t>(backend_port_));
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
      ::close(fd);
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  stopper.join();
  ctx_ = nullptr;
}

void FakeKubeServer::Record(Kind kind, const std::string& type, const nlohmann::json& object) {
  history_.push_back(Event{rv_, kind, type, object});
}

absl::StatusOr<nlohmann::json> FakeKubeServer::Create(nlohmann::json object) {
  auto key = controller::KeyOf(object);
  if (!key.ok()) return key.status();
  absl::MutexLock l(&mu_);
  if (not_installed_[key->kind]) {
    return absl::NotFoundError(absl::StrCat(KindName(key->kind), " is not installed"));
  }
  if (objects_.count(*key)) return absl::AlreadyExistsError(ToString(*key));
  ++rv_;
  nlohmann::json& md = object["metadata"];
  if (!key->ns.empty()) md["namespace"] = key->ns;
  md["resourceVersion"] = std::to_string(rv_);
  md["uid"] = absl::StrCat("00000000-0000-0000-0000-", ++uid_seq_);
  md["generation"] = 1;
  md["creationTimestamp"] = Rfc3339(absl::Now());
  objects_[*key] = object;
  Record(key->kind, "ADDED", object);
  return object;
}

absl::StatusOr<nlohmann::json> FakeKubeServer::Update(nlohmann::json object) {
  auto key = controller::KeyOf(object);
  if (!key.ok()) return key.status();
  absl::MutexLock l(&mu_);
  auto it = objects_.find(*key);
  if (it == objects_.end()) return absl::NotFoundError(ToString(*key));
  const nlohmann::json& old = it->second;
  ++rv_;
  nlohmann::json& md = object["metadata"];
  if (!key->ns.empty()) md["namespace"] = key->ns;
  md["resourceVersion"] = std::to_string(rv_);
  md["uid"] = old["metadata"]["uid"];
  md["creationTimestamp"] = old["metadata"]["creationTimestamp"];
  const int64_t generation = old["metadata"].value("generation", int64_t{1});
  const bool spec_changed =
      object.value("spec", nlohmann::json()) != old.value("spec", nlohmann::json());
  md["generation"] = spec_changed ? generation + 1 : generation;
  it->second = object;
  Record(key->kind, "MODIFIED", object);
  return object;
}

absl::Status FakeKubeServer::Delete(const ObjectKey& key) {
  absl::MutexLock l(&mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return absl::NotFoundError(ToString(key));
  ++rv_;
  nlohmann::json object = std::move(it->second);
  objects_.erase(it);
  object["metadata"]["resourceVersion"] = std::to_string(rv_);
  Record(key.kind, "DELETED", object);
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> FakeKubeServer::Get(const ObjectKey& key) const {
  absl::MutexLock l(&mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return absl::NotFoundError(ToString(key));
  return it->second;
}

uint64_t FakeKubeServer::resource_version() const {
  absl::MutexLock l(&mu_);
  return rv_;
}

void FakeKubeServer::CompactHistory() {
  absl::MutexLock l(&mu_);
  history_.clear();
  compacted_rv_ = rv_;
}

void FakeKubeServer::DropWatches() {
  absl::MutexLock l(&mu_);
  ++drop_generation_;
}

void FakeKubeServer::PauseWatches(bool paused) {
  absl::MutexLock l(&mu_);
  paused_ = paused;
}

void FakeKubeServer::SendBookmarks() {
  absl::MutexLock l(&mu_);
  ++bookmark_generation_;
}

void FakeKubeServer::SetBookmarkInterval(absl::Duration interval) {
  absl::MutexLock l(&mu_);
  bookmark_interval_ = interval;
}

void FakeKubeServer::SetInstalled(Kind kind, bool installed) {
  absl::MutexLock l(&mu_);
  not_installed_[kind] = !installed;
}

int FakeKubeServer::list_requests(Kind kind) const {
  absl::MutexLock l(&mu_);
  auto it = lists_.find(kind);
  return it == lists_.end() ? 0 : it->second;
}

int FakeKubeServer::watch_requests(Kind kind) const {
  absl::MutexLock l(&mu_);
  auto it = watch_rvs_.find(kind);
  return it == watch_rvs_.end() ? 0 : static_cast<int>(it->second.size());
}

std::vector<std::string> FakeKubeServer::watch_resource_versions(Kind kind) const {
  absl::MutexLock l(&mu_);
  auto it = watch_rvs_.find(kind);
  return it == watch_rvs_.end() ? std::vector<std::string>{} : it->second;
}

int FakeKubeServer::open_watches() const {
  absl::MutexLock l(&mu_);
  return open_watches_;
}

std::string FakeKubeServer::last_authorization() const {
  absl::MutexLock l(&mu_);
  return last_authorization_;
}

int FakeKubeServer::Handle(mg_connection* conn, void* self) {
  return static_cast<FakeKubeServer*>(self)->HandleRequest(conn);
}

int FakeKubeServer::HandleRequest(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  const std::string method = info->request_method ? info->request_method : "";
  const std::string query = info->query_string ? info->query_string : "";
  absl::string_view path = info->local_uri ? info->local_uri : "";
  {
    const char* auth = mg_get_header(conn, "Authorization");
    const char* subject_header = tls_ ? mg_get_header(conn, kClientSubjectHeader) : nullptr;
    const std::string subject = subject_header ? subject_header : "";
    absl::MutexLock l(&mu_);
    last_authorization_ = auth ? auth : "";
    last_client_subject_ = subject;
    if (!required_token_.empty() && last_authorization_ != "Bearer " + required_token_ &&
        subject.empty()) {
      ++unauthorized_;
      mu_.Unlock();
      SendError(conn, 401, "Unauthorized", "Unauthorized");
      mu_.Lock();
      return 401;
    }
  }

  // /api/v1/... or /apis/<group>/<version>/...
  std::vector<std::string> segs = absl::StrSplit(path, '/', absl::SkipEmpty());
  std::string gv;
  size_t at = 0;
  if (segs.size() >= 2 && segs[0] == "api") {
    gv = absl::StrCat("/api/", segs[1]);
    at = 2;
  } else if (segs.size() >= 3 && segs[0] == "apis") {
    gv = absl::StrCat("/apis/", segs[1], "/", segs[2]);
    at = 3;
  } else {
    return SendError(conn, 404, "NotFound", absl::StrCat("no API at ", path));
  }
  std::vector<std::string> rest(segs.begin() + at, segs.end());
  Target t{Kind::kNamespace, "", "", false};
  // /namespaces/<ns>/<plural>[/<name>[/status]], except /namespaces/<name>[/status] itself.
  if (rest.size() >= 3 && rest[0] == "namespaces" && rest[2] != "status") {
    t.ns = rest[1];
    rest.erase(rest.begin(), rest.begin() + 2);
  }
  if (rest.empty() || rest.size() > 3 || (rest.size() == 3 && rest[2] != "status")) {
    return SendError(conn, 404, "NotFound", absl::StrCat("no resource at ", path));
  }
  bool found = false;
  for (Kind k : kAllKinds) {
    const ApiResource r = ApiResourceOf(k);
    if (gv == r.group_version_path && rest[0] == r.plural) {
      t.kind = k;
      found = true;
    }
  }
  if (!found) return SendError(conn, 404, "NotFound", absl::StrCat("no resource at ", path));
  if (rest.size() >= 2) t.name = rest[1];
  t.status = rest.size() == 3;
  bool installed = true;
  {
    absl::MutexLock l(&mu_);
    installed = !not_installed_[t.kind];
    if (!installed && t.name.empty()) {  // still counted
      if (Query(query, "watch").empty()) {
        ++lists_[t.kind];
      } else {
        watch_rvs_[t.kind].push_back(Query(query, "resourceVersion"));
      }
    }
  }
  if (!installed) {
    return SendError(conn, 404, "NotFound", "the server could not find the requested resource");
  }

  if (method == "GET" && t.name.empty()) {
    const std::string watch = Query(query, "watch");
    if (watch == "1" || watch == "true") {
      ServeWatch(conn, t, query);
      return 200;
    }
    ServeList(conn, t, query);
    return 200;
  }
  if (method == "GET") {
    ObjectKey key{t.kind, t.kind == Kind::kNamespace ? "" : t.ns, t.name};
    auto object = Get(key);
    if (!object.ok())
      return SendError(conn, 404, "NotFound", std::string(object.status().message()));
    SendJson(conn, 200, *object);
    return 200;
  }
  if (method == "PATCH" && t.status) {
    std::string body;
    char buf[4096];
    for (int n; (n = mg_read(conn, buf, sizeof(buf))) > 0;) body.append(buf, n);
    ServePatchStatus(conn, t, body);
    return 200;
  }
  return SendError(conn, 405, "MethodNotAllowed", absl::StrCat(method, " ", path));
}

void FakeKubeServer::ServeList(mg_connection* conn, const Target& t, const std::string& query) {
  const ApiResource r = ApiResourceOf(t.kind);
  int64_t limit = 0;
  if (const std::string l = Query(query, "limit"); !l.empty() && !absl::SimpleAtoi(l, &limit)) {
    SendError(conn, 400, "BadRequest", absl::StrCat("invalid limit: ", l));
    return;
  }
  const std::string cont = Query(query, "continue");
  nlohmann::json list = nlohmann::json::object();
  {
    absl::MutexLock l(&mu_);
    ++lists_[t.kind];
    // A paginated list is served from one snapshot, as etcd serves it at one revision. The
    // continue token names the snapshot and the offset ("<id>:<offset>", opaque to clients).
    uint64_t id = 0, offset = 0;
    if (!cont.empty()) {
      ++continues_[t.kind];
      std::vector<std::string> parts = absl::StrSplit(cont, ':');
      auto it = list_snapshots_.end();
      if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &id) ||
          !absl::SimpleAtoi(parts[1], &offset) ||
          (it = list_snapshots_.find(id)) == list_snapshots_.end()) {
        mu_.Unlock();
        SendError(conn, 400, "BadRequest", "continue key is not valid");
        mu_.Lock();
        return;
      }
      if (it->second.rv < compacted_rv_ || it->second.items.empty()) {
        list_snapshots_.erase(it);
        mu_.Unlock();
        SendError(conn, 410, "Expired",
                  "The provided continue parameter is too old to display a consistent list "
                  "result. You can start a new list without the continue parameter.");
        mu_.Lock();
        return;
      }
    } else {
      std::vector<nlohmann::json> items;
      for (const auto& [key, object] : objects_) {
        if (key.kind != t.kind || !InNamespace(object, t.ns)) continue;
        nlohmann::json item = object;
        // As the real server does for built-in types: list items carry no apiVersion/kind.
        item.erase("apiVersion");
        item.erase("kind");
        items.push_back(std::move(item));
      }
      id = next_snapshot_++;
      list_snapshots_[id] = ListSnapshot{rv_, std::move(items)};
    }
    ListSnapshot& snap = list_snapshots_[id];
    const uint64_t total = snap.items.size();
    const uint64_t end =
        limit > 0 ? std::min<uint64_t>(total, offset + static_cast<uint64_t>(limit)) : total;
    nlohmann::json items = nlohmann::json::array();
    for (uint64_t i = std::min(offset, total); i < end; ++i) items.push_back(snap.items[i]);
    std::string api_version(r.group_version_path);
    api_version = api_version.substr(api_version.find('/', 1) + 1);
    list["kind"] = absl::StrCat(KindName(t.kind), "List");
    list["apiVersion"] = api_version;
    list["metadata"] = {{"resourceVersion", std::to_string(snap.rv)}};
    if (end < total) {
      list["metadata"]["continue"] = absl::StrCat(id, ":", end);
      list["metadata"]["remainingItemCount"] = total - end;
      if (expire_after_page_) {  // an expired snapshot: kept, emptied, answered with 410
        expire_after_page_ = false;
        snap.items.clear();
      }
    } else {
      list_snapshots_.erase(id);
    }
    list["items"] = std::move(items);
  }
  SendJson(conn, 200, list);
}

void FakeKubeServer::ServeWatch(mg_connection* conn, const Target& t, const std::string& query) {
  const std::string rv_param = Query(query, "resourceVersion");
  const bool bookmarks = Query(query, "allowWatchBookmarks") == "true";
  int timeout_seconds = 0;
  if (!absl::SimpleAtoi(Query(query, "timeoutSeconds"), &timeout_seconds)) timeout_seconds = 0;
  const ApiResource r = ApiResourceOf(t.kind);
  std::string api_version(r.group_version_path);
  api_version = api_version.substr(api_version.find('/', 1) + 1);

  uint64_t cursor = 0;
  std::string out;  // bytes to send next
  uint64_t my_drop = 0, my_bookmark = 0;
  absl::Time next_bookmark = absl::InfiniteFuture();
  const absl::Time deadline =
      absl::Now() + (timeout_seconds > 0 ? absl::Seconds(timeout_seconds) : absl::Minutes(30));
  {
    absl::MutexLock l(&mu_);
    watch_rvs_[t.kind].push_back(rv_param);
    if (rv_param.empty() || rv_param == "0") {
      // "Any" version: the current objects as ADDED, then changes.
      for (const auto& [key, object] : objects_) {
        if (key.kind == t.kind && InNamespace(object, t.ns)) out += EventLine("ADDED", object);
      }
      cursor = rv_;
    } else if (!absl::SimpleAtoi(rv_param, &cursor)) {
      SendError(conn, 400, "BadRequest", absl::StrCat("invalid resourceVersion ", rv_param));
      return;
    }
    my_drop = drop_generation_;
    my_bookmark = bookmark_generation_;
    if (bookmark_interval_ > absl::ZeroDuration()) next_bookmark = absl::Now() + bookmark_interval_;
    ++open_watches_;
  }
  mg_printf(conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n");

  bool clean_end = true;
  for (bool done = false; !done;) {
    if (!WriteChunk(conn, out)) {
      clean_end = false;  // the client is gone
      break;
    }
    out.clear();
    absl::MutexLock l(&mu_);
    auto wake = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return stopping_ || drop_generation_ != my_drop || not_installed_[t.kind] ||
             (!paused_ && (rv_ > cursor || cursor < compacted_rv_ ||
                           (bookmarks && bookmark_generation_ != my_bookmark)));
    };
    const absl::Time until = std::min(deadline, next_bookmark);
    mu_.AwaitWithTimeout(absl::Condition(&wake), until - absl::Now());
    if (drop_generation_ != my_drop) {
      clean_end = false;
      break;
    }
    if (stopping_ || not_installed_[t.kind]) break;
    const absl::Time now = absl::Now();
    if (paused_) {
      if (now >= deadline) break;
      continue;
    }
    if (cursor < compacted_rv_) {
      out += EventLine("ERROR", StatusObject(410, "Expired",
                                             absl::StrCat("too old resource version: ", cursor,
                                                          " (", compacted_rv_, ")")));
      done = true;
      continue;
    }
    for (const Event& ev : history_) {
      if (ev.rv > cursor && ev.kind == t.kind && InNamespace(ev.object, t.ns)) {
        out += EventLine(ev.type, ev.object);
      }
    }
    cursor = rv_;
    if (bookmarks && (bookmark_generation_ != my_bookmark || now >= next_bookmark)) {
      out += EventLine("BOOKMARK", {{"kind", KindName(t.kind)},
                                    {"apiVersion", api_version},
                                    {"metadata", {{"resourceVersion", std::to_string(rv_)}}}});
      my_bookmark = bookmark_generation_;
      if (bookmark_interval_ > absl::ZeroDuration()) next_bookmark = now + bookmark_interval_;
    }
    if (bookmark_interval_ <= absl::ZeroDuration()) next_bookmark = absl::InfiniteFuture();
    if (now >= deadline) done = true;
  }
  if (clean_end && WriteChunk(conn, out)) mg_write(conn, "0\r\n\r\n", 5);
  // Otherwise return without the terminating chunk: the connection closes mid-stream.
  absl::MutexLock l(&mu_);
  --open_watches_;
}

void FakeKubeServer::ServePatchStatus(mg_connection* conn, const Target& t,
                                      const std::string& body) {
  const char* content_type = mg_get_header(conn, "Content-Type");
  if (!content_type || !absl::StartsWith(content_type, "application/merge-patch+json")) {
    SendError(conn, 415, "UnsupportedMediaType", "only application/merge-patch+json here");
    return;
  }
  nlohmann::json patch = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!patch.is_object()) {
    SendError(conn, 400, "BadRequest", "patch is not a JSON object");
    return;
  }
  nlohmann::json object;
  const ObjectKey key{t.kind, t.kind == Kind::kNamespace ? "" : t.ns, t.name};
  {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(key);
    if (it != objects_.end()) {
      // The status subresource takes the patch's status and ignores the rest.
      nlohmann::json patched = it->second;
      patched.merge_patch(patch);
      if (patched.contains("status")) {
        it->second["status"] = patched["status"];
      } else {
        it->second.erase("status");
      }
      ++rv_;
      it->second["metadata"]["resourceVersion"] = std::to_string(rv_);
      Record(t.kind, "MODIFIED", it->second);
      object = it->second;
    }
  }
  if (object.is_null()) {
    SendError(conn, 404, "NotFound", absl::StrCat(ToString(key), " not found"));
    return;
  }
  SendJson(conn, 200, object);
}

void FakeKubeServer::ExpireListsAfterNextPage() {
  absl::MutexLock l(&mu_);
  expire_after_page_ = true;
}

void FakeKubeServer::RequireToken(const std::string& token) {
  absl::MutexLock l(&mu_);
  required_token_ = token;
}

std::string FakeKubeServer::last_client_subject() const {
  absl::MutexLock l(&mu_);
  return last_client_subject_;
}

int FakeKubeServer::unauthorized_requests() const {
  absl::MutexLock l(&mu_);
  return unauthorized_;
}

int FakeKubeServer::continue_requests(Kind kind) const {
  absl::MutexLock l(&mu_);
  auto it = continues_.find(kind);
  return it == continues_.end() ? 0 : it->second;
}

}  // namespace shunt::testing
