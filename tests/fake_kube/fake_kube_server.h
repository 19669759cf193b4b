// A fake Kubernetes API server for tests, speaking the real protocol over HTTP or HTTPS on
// 127.0.0.1:<port 0> (civetweb; HTTPS through tls_front.h): list with a resourceVersion, paginated lists (limit/continue over
// a consistent snapshot; 410 Gone "Expired" for a continue token older than the history kept),
// watch with newline-delimited JSON events from a history (410 Gone in an ERROR event when asked
// for a resourceVersion older than the history kept), bookmarks, merge-patch of the status
// subresource, 404 for resources "not installed", and 401 for requests that carry neither the
// required bearer token nor a client certificate signed by the client CA.
//
// Objects of every kind the controller handles (controller/cluster_state.h) share one
// monotonically increasing resourceVersion, as in etcd. Tests drive it with Create/Update/Delete
// and the fault controls (CompactHistory, DropWatches, PauseWatches, SetInstalled), and read the
// requests it saw back.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "controller/cluster_state.h"
#include "nlohmann/json.hpp"
#include "tests/fake_kube/tls_front.h"

struct mg_connection;
struct mg_context;

namespace shunt::testing {

class FakeKubeServer {
 public:
  FakeKubeServer() = default;
  ~FakeKubeServer();
  FakeKubeServer(const FakeKubeServer&) = delete;
  FakeKubeServer& operator=(const FakeKubeServer&) = delete;

  struct TlsOptions {
    std::string cert_chain_and_key_file;  // PEM: the server certificate (chain) and its key
    std::string client_ca_file;           // set: client certificates signed by it are verified
  };
  // Listens on 127.0.0.1, port chosen by the kernel; plain HTTP, or HTTPS with `tls`.
  absl::Status Start();
  absl::Status Start(const TlsOptions& tls);
  // Ends every open watch cleanly and stops serving.
  void Stop();
  int port() const { return port_; }
  std::string url() const;  // "http://127.0.0.1:<port>" or "https://..."

  // From now on a request is authenticated by "Authorization: Bearer <token>" or by a verified
  // client certificate; others get 401 Unauthorized. "" (the default) accepts every request.
  void RequireToken(const std::string& token);

  // Objects (apiVersion, kind, metadata.name[, metadata.namespace]). Each change takes the next
  // resourceVersion and is recorded in the history as a watch event. Create sets uid,
  // resourceVersion, generation 1 and creationTimestamp; Update bumps generation when the spec
  // changes. AlreadyExists / NotFound / InvalidArgument as the API server would.
  absl::StatusOr<nlohmann::json> Create(nlohmann::json object);
  absl::StatusOr<nlohmann::json> Update(nlohmann::json object);
  absl::Status Delete(const controller::ObjectKey& key);
  absl::StatusOr<nlohmann::json> Get(const controller::ObjectKey& key) const;

  // The current (latest) resourceVersion.
  uint64_t resource_version() const;

  // Forgets the event history: a watch from any resourceVersion before now gets 410 Gone,
  // including open watches that have not yet been sent every event before now.
  void CompactHistory();
  // After the next page of a paginated list has been served, its continue token expires (as when
  // etcd compacts the revision the list is read at): the next page is 410 Gone "Expired".
  void ExpireListsAfterNextPage();
  // Closes every open watch stream abruptly (no terminating chunk), as a dying server would.
  void DropWatches();
  // While paused, open watches send nothing (events stay queued in the history).
  void PauseWatches(bool paused);
  // Sends a BOOKMARK at the current resourceVersion on every open watch that asked for them.
  void SendBookmarks();
  // Also sends one every `interval` (0, the default, disables).
  void SetBookmarkInterval(absl::Duration interval);
  // A resource not installed answers 404 (and open watches of it end).
  void SetInstalled(controller::Kind kind, bool installed);

  // Requests received, per kind.
  int list_requests(controller::Kind kind) const;
  int watch_requests(controller::Kind kind) const;
  // The resourceVersion parameter of every watch request of `kind`, in order.
  std::vector<std::string> watch_resource_versions(controller::Kind kind) const;
  int open_watches() const;
  // The Authorization header of the latest request ("" if none).
  std::string last_authorization() const;
  // The subject of the latest request's verified client certificate ("" if none).
  std::string last_client_subject() const;
  // Requests answered 401.
  int unauthorized_requests() const;
  // List requests of `kind` that carried a continue token (pages after the first).
  int continue_requests(controller::Kind kind) const;

 private:
  struct Event {
    uint64_t rv;
    controller::Kind kind;
    std::string type;
    nlohmann::json object;
  };
  struct Target {  // what a request path names
    controller::Kind kind;
    std::string ns;
    std::string name;
    bool status = false;
  };

  static int Handle(mg_connection* conn, void* self);
  int HandleRequest(mg_connection* conn);
  void ServeList(mg_connection* conn, const Target& t, const std::string& query);
  void ServeWatch(mg_connection* conn, const Target& t, const std::string& query);
  void ServePatchStatus(mg_connection* conn, const Target& t, const std::string& body);
  void Record(controller::Kind kind, const std::string& type, const nlohmann::json& object)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mg_context* ctx_ = nullptr;
  int port_ = 0;          // what clients dial (the TLS front's with TLS)
  int backend_port_ = 0;  // civetweb's
  bool tls_ = false;
  std::unique_ptr<TlsFront> tls_front_;

  struct ListSnapshot {  // a paginated list in progress: the items as of its resourceVersion
    uint64_t rv;
    std::vector<nlohmann::json> items;
  };

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t rv_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t uid_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<controller::ObjectKey, nlohmann::json> objects_ ABSL_GUARDED_BY(mu_);
  std::deque<Event> history_ ABSL_GUARDED_BY(mu_);
  uint64_t compacted_rv_ ABSL_GUARDED_BY(mu_) = 0;  // watches from before this get 410
  uint64_t drop_generation_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bookmark_generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  absl::Duration bookmark_interval_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  std::map<controller::Kind, bool> not_installed_ ABSL_GUARDED_BY(mu_);
  std::map<controller::Kind, int> lists_ ABSL_GUARDED_BY(mu_);
  std::map<controller::Kind, std::vector<std::string>> watch_rvs_ ABSL_GUARDED_BY(mu_);
  int open_watches_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_authorization_ ABSL_GUARDED_BY(mu_);
  std::string last_client_subject_ ABSL_GUARDED_BY(mu_);
  std::string required_token_ ABSL_GUARDED_BY(mu_);
  int unauthorized_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<controller::Kind, int> continues_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, ListSnapshot> list_snapshots_ ABSL_GUARDED_BY(mu_);  // by snapshot id
  uint64_t next_snapshot_ ABSL_GUARDED_BY(mu_) = 1;
  bool expire_after_page_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace shunt::testing
