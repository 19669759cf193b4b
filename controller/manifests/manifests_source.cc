#include "controller/manifests/manifests_source.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/resources.h"
#include "common/yaml_json.h"
#include "controller/manifests/crd_validation.h"

namespace shunt::controller {
namespace {

using Json = nlohmann::json;

constexpr absl::Duration kRacyWindow = absl::Seconds(2);

bool IsManifestName(const std::string& name) {
  if (name.empty() || name[0] == '.') return false;
  return absl::EndsWith(name, ".yaml") || absl::EndsWith(name, ".yml") ||
         absl::EndsWith(name, ".json");
}

std::string StringAt(const Json& o, const char* key) {
  if (!o.is_object()) return "";
  auto it = o.find(key);
  return it != o.end() && it->is_string() ? it->get<std::string>() : "";
}

absl::Status ErrnoError(int err, absl::string_view what) {
  const std::string text = absl::StrCat(what, ": ", strerror(err));
  if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(text);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(text);
  return absl::FailedPreconditionError(text);
}

// Checks one object of a file and, if the controller handles its kind, appends it to `out`.
// `where` is "document 3" or "document 3, items[0]".
absl::Status TakeObject(Json&& o, const std::string& where, size_t max_object_bytes,
                        std::vector<Json>& out) {
  auto fail = [&where](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
  };
  if (!o.is_object()) return fail("expected a mapping (a Kubernetes object)");
  const std::string api_version = StringAt(o, "apiVersion");
  const std::string kind = StringAt(o, "kind");
  if (api_version.empty() || kind.empty()) return fail("apiVersion and kind are required");
  const std::string policy_gv = absl::StrCat(kPolicyGroup, "/", kPolicyVersion);
  const std::optional<Kind> k = KindOf(api_version, kind);
  if (!k) {
    if (absl::StartsWith(api_version, absl::StrCat(kPolicyGroup, "/"))) {
      return fail(absl::StrCat("unknown kind ", kind, " of apiVersion ", api_version, " (",
                               policy_gv, " has TrafficRoute, AccessPolicy, ApiCostPolicy)"));
    }
    SHUNT_LOG(DEBUG) << "manifests: " << where << ": ignoring " << api_version << " " << kind;
    return absl::OkStatus();
  }
  if (absl::StartsWith(api_version, absl::StrCat(kPolicyGroup, "/"))) {
    if (absl::Status s = ValidatePolicyObject(o); !s.ok()) return fail(s.message());
  }
  absl::StatusOr<ObjectKey> key = KeyOf(o);
  if (!key.ok()) return fail(key.status().message());
  const size_t bytes = o.dump(-1, ' ', false, Json::error_handler_t::replace).size();
  if (bytes > max_object_bytes) {
    return fail(absl::StrCat(ToString(*key), " is ", bytes, " bytes as JSON; at most ",
                             max_object_bytes, " are allowed"));
  }
  out.push_back(std::move(o));
  return absl::OkStatus();
}

}  // namespace

ManifestsSource::ManifestsSource(ManifestsOptions options) : options_(std::move(options)) {}

ManifestsSource::~ManifestsSource() { Stop(); }

absl::StatusOr<std::vector<Json>> ManifestsSource::ReadFile(const std::string& file) const {
  absl::StatusOr<std::string> text = ReadBytes(file);
  if (!text.ok()) return text.status();
  return Parse(*text);
}

absl::StatusOr<std::string> ManifestsSource::ReadBytes(const std::string& file) const {
  const std::string path = absl::StrCat(options_.dir, "/", file);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, absl::StrCat("cannot open ", path));
  std::string text;
  absl::Status read_status;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      read_status = ErrnoError(errno, absl::StrCat("cannot read ", path));
      break;
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > options_.max_file_bytes) break;
  }
  ::close(fd);
  RETURN_IF_ERROR(read_status);
  if (text.size() > options_.max_file_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("file is over ", options_.max_file_bytes,
                                                     " bytes (the limit for one manifest file)"));
  }
  return text;
}

absl::StatusOr<std::vector<Json>> ManifestsSource::Parse(const std::string& text) const {
  return ParseManifests(text, options_);
}

absl::StatusOr<std::vector<Json>> ParseManifests(const std::string& text,
                                                 const ManifestsOptions& options) {
  YamlLimits limits;
  limits.max_bytes = options.max_file_bytes;
  limits.max_documents = 10000;
  absl::StatusOr<std::vector<Json>> docs = YamlDocumentsToJson(text, limits);
  if (!docs.ok()) return docs.status();
  std::vector<Json> objects;
  for (size_t i = 0; i < docs->size(); ++i) {
    Json& doc = (*docs)[i];
    const std::string where = absl::StrCat("document ", i + 1);
    if (doc.is_object() && StringAt(doc, "apiVersion") == "v1" && StringAt(doc, "kind") == "List") {
      auto items = doc.find("items");
      if (items == doc.end() || !(items->is_array() || items->is_null())) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": a List needs an items list"));
      }
      if (items->is_null()) continue;
      for (size_t j = 0; j < items->size(); ++j) {
        RETURN_IF_ERROR(TakeObject(std::move((*items)[j]), absl::StrCat(where, ", items[", j, "]"),
                                   options.max_object_bytes, objects));
      }
      continue;
    }
    RETURN_IF_ERROR(TakeObject(std::move(doc), where, options.max_object_bytes, objects));
  }
  return objects;
}

absl::Status ManifestsSource::Rescan() {
  absl::MutexLock scan(&scan_mu_);
  // List the directory.
  std::map<std::string, FileId> listed;
  absl::Status dir_status;
  if (DIR* d = ::opendir(options_.dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (!IsManifestName(name)) continue;
      struct stat st;
      if (::stat(absl::StrCat(options_.dir, "/", name).c_str(), &st) != 0) continue;  // gone
      if (!S_ISREG(st.st_mode)) continue;
      if (listed.size() >= options_.max_files) {
        dir_status = absl::ResourceExhaustedError(
            absl::StrCat("manifests directory ", options_.dir, " has more than ",
                         options_.max_files, " manifest files"));
        break;
      }
      listed[name] = FileId{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                            static_cast<uint64_t>(st.st_size),
                            int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec,
                            int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec};
    }
    ::closedir(d);
  } else {
    dir_status = ErrnoError(errno, absl::StrCat("manifests directory ", options_.dir));
  }
  {
    absl::MutexLock l(&mu_);
    if (!dir_status.ok()) {
      if (dir_error_ != dir_status) {
        SHUNT_LOG(WARNING) << "manifests: " << dir_status.message()
                           << (synced_ ? " (keeping the objects last read)" : "");
      }
      dir_error_ = dir_status;
      return dir_status;
    }
    if (!dir_error_.ok()) {
      SHUNT_LOG(INFO) << "manifests: directory " << options_.dir << " is back";
    }
    dir_error_ = absl::OkStatus();
  }

  // Read what is new or changed (without holding mu_: errors() stays responsive).
  std::map<std::string, FileState> next;
  bool changed = state_ == nullptr;
  {
    absl::MutexLock l(&mu_);
    changed = changed || !synced_ || files_.size() != listed.size();
    for (const auto& [name, state] : files_) {
      if (listed.count(name)) next.emplace(name, state);
    }
  }
  uint64_t newly_malformed = 0;
  for (const auto& [name, id] : listed) {
    auto it = next.find(name);
    const bool known = it != next.end() && it->second.id == id;
    if (known && !it->second.racy) continue;
    FileState& fs = next[name];
    fs.id = id;
    const int64_t now_ns = absl::ToUnixNanos(absl::Now());
    fs.racy = now_ns - std::max(id.mtime_ns, id.ctime_ns) < absl::ToInt64Nanoseconds(kRacyWindow);
    absl::StatusOr<std::string> bytes = ReadBytes(name);
    std::string digest;
    if (bytes.ok()) {
      digest = Fnv1a64Hex(*bytes);
      // The very same bytes (a racy re-read, or a rewrite with equal content): same result,
      // nothing to parse -- large files are slow to parse.
      if (!fs.digest.empty() && fs.digest == digest) continue;
    }
    absl::StatusOr<std::vector<Json>> objects =
        bytes.ok() ? Parse(*bytes) : absl::StatusOr<std::vector<Json>>(bytes.status());
    fs.digest = digest;
    if (objects.ok()) {
      if (known && fs.error.ok() && fs.content->objects.size() == objects->size() &&
          std::equal(fs.content->objects.begin(), fs.content->objects.end(), objects->begin(),
                     [](const ObjectPtr& a, const Json& b) { return *a == b; })) {
        continue;  // a racy re-read: same
      }
      changed = true;
      if (!fs.error.ok()) {
        SHUNT_LOG(INFO) << "manifests: " << name << " is valid again";
      }
      auto content = std::make_shared<FileState::Content>();
      for (Json& o : *objects) {
        absl::StatusOr<ObjectKey> key = KeyOf(o);
        if (!key.ok()) continue;  // checked when read
        content->keys.push_back(*std::move(key));
        content->objects.push_back(std::make_shared<const Json>(std::move(o)));
      }
      fs.content = std::move(content);
      fs.error = absl::OkStatus();
      continue;
    }
    if (objects.status().code() == absl::StatusCode::kNotFound) {  // removed since listed
      next.erase(name);
      changed = true;
      continue;
    }
    if (known && fs.error == objects.status()) continue;  // a racy re-read: same error
    changed = true;
    fs.error = objects.status();
    ++newly_malformed;
    SHUNT_LOG(WARNING) << "manifests: " << options_.dir << "/" << name << ": " << fs.error.message()
                       << "; file skipped"
                       << (fs.content->objects.empty() ? ""
                                              : absl::StrCat(", keeping its last good content (",
                                                             fs.content->objects.size(),
                                                             " objects)"));
  }
  if (!changed) return absl::OkStatus();

  // Assemble in file-name order; the first definition of an object wins.
  std::vector<std::pair<ObjectKey, ObjectPtr>> objects;
  std::map<ObjectKey, std::string> owner;                      // key → file that defines it
  std::map<std::string, std::vector<std::string>> duplicates;  // file → messages
  std::map<std::string, std::string> reported;                 // "key in file" → file
  for (const auto& [name, fs] : next) {
    for (size_t i = 0; i < fs.content->objects.size(); ++i) {
      const ObjectKey* key = &fs.content->keys[i];
      auto [it, inserted] = owner.emplace(*key, name);
      if (inserted) {
        objects.emplace_back(*key, fs.content->objects[i]);
        continue;
      }
      std::string message =
          absl::StrCat(ToString(*key), " is already defined in ", it->second, "; ignored here");
      reported.emplace(absl::StrCat(name, ": ", message), name);
      duplicates[name].push_back(std::move(message));
    }
  }
  {
    absl::MutexLock l(&mu_);
    duplicates_.clear();
    for (const auto& [file, messages] : duplicates) {
      duplicates_[file] = absl::AlreadyExistsError(absl::StrJoin(messages, "; "));
    }
    for (const auto& [what, file] : reported) {
      if (reported_duplicates_.count(what)) continue;
      ++newly_malformed;
      SHUNT_LOG(WARNING) << "manifests: " << options_.dir << "/" << what;
    }
    reported_duplicates_ = std::move(reported);
    files_ = std::move(next);
    malformed_total_ += newly_malformed;
  }
  if (state_ != nullptr) {
    if (absl::Status s = state_->ReplaceAll(name(), std::move(objects)); !s.ok()) {
      SHUNT_LOG(WARNING) << "manifests: " << s.message();  // cannot happen: keys were checked
    }
    absl::MutexLock l(&mu_);
    synced_ = true;
  }
  return absl::OkStatus();
}

absl::Status ManifestsSource::Start(ClusterState& state) {
  {
    absl::MutexLock scan(&scan_mu_);
    if (state_ != nullptr) return absl::FailedPreconditionError("manifests source already started");
    state_ = &state;
  }
  absl::Status s = Rescan();
  if (!s.ok()) {
    absl::MutexLock scan(&scan_mu_);
    state_ = nullptr;
    return s;
  }
  const size_t with_errors = errors().size();
  {
    absl::MutexLock l(&mu_);
    SHUNT_LOG(INFO) << "manifests: " << files_.size() << " files read from " << options_.dir << ", "
                    << with_errors << " with errors";
    stopping_ = false;
  }
  if (options_.poll_interval > absl::ZeroDuration()) {
    poller_ = std::thread([this] { RunPolls(); });
  }
  return absl::OkStatus();
}

void ManifestsSource::RunPolls() {
  for (;;) {
    {
      absl::MutexLock l(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), options_.poll_interval)) return;
    }
    Rescan().IgnoreError();  // logged; the last good objects stay
  }
}

void ManifestsSource::Stop() {
  {
    absl::MutexLock l(&mu_);
    stopping_ = true;
  }
  if (poller_.joinable()) poller_.join();
}

bool ManifestsSource::synced() const {
  absl::MutexLock l(&mu_);
  return synced_;
}

std::map<std::string, absl::Status> ManifestsSource::errors() const {
  absl::MutexLock l(&mu_);
  std::map<std::string, absl::Status> out;
  if (!dir_error_.ok()) out[options_.dir] = dir_error_;
  for (const auto& [name, fs] : files_) {
    if (!fs.error.ok()) out[name] = fs.error;
  }
  for (const auto& [name, status] : duplicates_) out.emplace(name, status);
  return out;
}

uint64_t ManifestsSource::malformed_total() const {
  absl::MutexLock l(&mu_);
  return malformed_total_;
}

}  // namespace shunt::controller
