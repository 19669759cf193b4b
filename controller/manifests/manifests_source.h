// The controller's `--manifests DIR` source: a directory of Kubernetes manifests (the same YAML
// you would `kubectl apply`), for demos, tests and clusters without our CRDs installed.
//
// Reads every *.yaml, *.yml and *.json file of the directory (not recursive; dotfiles, e.g. a
// ConfigMap volume's ..data, are ignored; symlinks are followed), each possibly multi-document,
// `kind: List` items included, and reports the objects the controller handles (Namespace, Pod,
// Service, EndpointSlice and our policy CRs) to ClusterState::ReplaceAll(name(), ...). Other kinds
// (Deployment, ConfigMap...) are ignored. It polls the directory (file added or removed, or a
// file's inode, size, mtime or ctime changed) and re-reads what changed.
//
// Errors are per file. A file is the unit of change: it applies whole or not at all. A file with
// any problem (YAML syntax, over max_file_bytes, a document that is not a mapping, no
// apiVersion/kind, an unknown kind of policy.shunt.dev, no metadata.name, an object over
// max_object_bytes, a CR that breaks its CRD's schema) is logged (file, document index, reason),
// counted in malformed_total(), listed in errors() until it is fixed, and KEEPS ITS LAST GOOD
// CONTENT: a half-saved file must not delete policy (a file that never parsed contributes nothing).
// Deleting the file is how its objects are removed. An object defined twice in the directory
// (same kind/namespace/name) is kept from the first file in name order (the first document within
// one file); the later copy is dropped and reported under its file, which otherwise applies.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "controller/cluster_state.h"
#include "nlohmann/json.hpp"

namespace shunt::controller {

struct ManifestsOptions {
  std::string dir;
  // How often the directory is checked for changes; zero: never on its own (call Rescan()).
  absl::Duration poll_interval = absl::Seconds(1);
  size_t max_file_bytes = size_t{4} << 20;    // 4 MiB
  size_t max_object_bytes = size_t{1} << 20;  // 1 MiB, as the object's JSON
  size_t max_files = 10000;
};

// The objects of one manifest file's text (YAML or JSON; several documents; v1 Lists unpacked),
// each checked as the API server would (known kind, names, the CRDs' schemas, size limits), or
// the first problem found. Untrusted input: fuzzed by manifests_fuzz.cc.
absl::StatusOr<std::vector<nlohmann::json>> ParseManifests(const std::string& text,
                                                           const ManifestsOptions& options);

class ManifestsSource : public ClusterSource {
 public:
  explicit ManifestsSource(ManifestsOptions options);
  ~ManifestsSource() override;  // Stop()s
  ManifestsSource(const ManifestsSource&) = delete;
  ManifestsSource& operator=(const ManifestsSource&) = delete;

  absl::string_view name() const override { return "manifests"; }
  // Reads the directory once and reports it; then polls every poll_interval on a thread of its
  // own. NotFound / FailedPrecondition if the directory cannot be read (nothing is started).
  // Malformed files are not an error here: see errors().
  absl::Status Start(ClusterState& state) override;
  void Stop() override;
  bool synced() const override;

  // Checks the directory now and reports any change to the state (the poll thread calls this;
  // tests call it instead of waiting). Returns the directory's error, if it cannot be listed (the
  // last good objects stay).
  // Not to be called from a ClusterState subscriber (it runs inside the report).
  absl::Status Rescan() ABSL_LOCKS_EXCLUDED(scan_mu_, mu_);

  // Files (names relative to the directory) with a current problem, and what it is; the
  // directory's own path if it cannot be listed.
  std::map<std::string, absl::Status> errors() const;
  // Problems found since start (one per bad version of a file, one per duplicate object found);
  // exported by the controller as shunt_controller_manifest_errors_total.
  uint64_t malformed_total() const;

 private:
  struct FileId {
    uint64_t dev = 0, ino = 0, size = 0;
    int64_t mtime_ns = 0, ctime_ns = 0;
    friend bool operator==(const FileId&, const FileId&) = default;
  };
  struct FileState {
    FileId id;  // of the version last read (good or not)
    // Changed less than kRacyWindow before it was read: a same-size rewrite within the file
    // system's timestamp granularity would look unchanged, so it is read again next time.
    bool racy = false;
    struct Content {
      std::vector<ObjectPtr> objects;  // in document order; shared, immutable
      std::vector<ObjectKey> keys;     // objects[i]'s key (computed once per read)
    };
    // The last good content: shared, so that carrying a file over to the next scan copies a
    // pointer, not its thousand objects.
    std::shared_ptr<const Content> content = std::make_shared<const Content>();
    absl::Status error;                   // of the version last read
    std::string digest;  // of the bytes last read: a racy re-read of the same bytes is not parsed
  };

  // Reads one file: its handled objects, or the file's error.
  absl::StatusOr<std::vector<nlohmann::json>> ReadFile(const std::string& file) const;
  absl::StatusOr<std::string> ReadBytes(const std::string& file) const;
  absl::StatusOr<std::vector<nlohmann::json>> Parse(const std::string& text) const;
  void RunPolls();

  const ManifestsOptions options_;

  absl::Mutex scan_mu_ ABSL_ACQUIRED_BEFORE(mu_);            // one Rescan at a time
  ClusterState* state_ ABSL_GUARDED_BY(scan_mu_) = nullptr;  // set by Start

  mutable absl::Mutex mu_;
  std::map<std::string, FileState> files_ ABSL_GUARDED_BY(mu_);          // by name: the apply order
  std::map<std::string, absl::Status> duplicates_ ABSL_GUARDED_BY(mu_);  // by file
  std::map<std::string, std::string> reported_duplicates_
      ABSL_GUARDED_BY(mu_);  // "file: message" → file
  absl::Status dir_error_ ABSL_GUARDED_BY(mu_);
  uint64_t malformed_total_ ABSL_GUARDED_BY(mu_) = 0;
  bool synced_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread poller_;
};

}  // namespace shunt::controller
