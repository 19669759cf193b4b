#include "agent/policy/pod_cgroups.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/errno_status.h"
#include "common/log.h"

namespace shunt::agent {
namespace {

// A uid as kubelet writes it into a name, with `sep` for its dashes: a UUID, or 32 hex digits.
std::optional<std::string> UidFromName(absl::string_view s, char sep) {
  auto is_hex = [](char c) { return absl::ascii_isxdigit(static_cast<unsigned char>(c)); };
  if (s.size() == 32 && std::all_of(s.begin(), s.end(), is_hex)) return std::string(s);
  if (s.size() != 36) return std::nullopt;
  std::string uid(s);
  for (size_t i = 0; i < uid.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (uid[i] != sep) return std::nullopt;
      uid[i] = '-';
    } else if (!is_hex(uid[i])) {
      return std::nullopt;
    }
  }
  return uid;
}

class PodCgroupWalk {
 public:
  PodCgroupWalk(std::string root, int max_depth) : root_(std::move(root)), max_depth_(max_depth) {}

  // Takes ownership of `fd`, a directory at `rel` (relative to root, "" or ending in '/') whose
  // entries are `depth` levels below root.
  void Walk(int fd, const std::string& rel, int depth) {
    DIR* dir = ::fdopendir(fd);
    if (dir == nullptr) {
      ::close(fd);
      return;
    }
    std::vector<std::string> subdirs;
    errno = 0;
    while (const struct dirent* e = ::readdir(dir)) {
      std::string_view name = e->d_name;
      if (name == "." || name == "..") continue;
      bool is_dir = e->d_type == DT_DIR;
      if (e->d_type == DT_UNKNOWN) {  // some filesystems do not fill d_type
        struct stat st;
        is_dir = ::fstatat(::dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                 S_ISDIR(st.st_mode);
      }
      if (is_dir) subdirs.emplace_back(name);
    }
    std::sort(subdirs.begin(), subdirs.end());  // deterministic result when a uid appears twice
    for (const std::string& name : subdirs) {
      if (std::optional<std::string> uid = PodUidFromCgroupName(name)) {
        std::string path = absl::StrCat(root_, "/", rel, name);
        auto [it, inserted] = pods_.emplace(*std::move(uid), path);
        if (!inserted) {
          SHUNT_LOG(WARNING) << "pod " << it->first << " has two cgroups: " << it->second
                             << " (used) and " << path << " (ignored)";
        }
        continue;  // a pod's subtree holds its containers, not other pods
      }
      if (depth >= max_depth_) continue;
      const int child =
          ::openat(::dirfd(dir), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (child < 0) continue;  // vanished or unreadable: skip
      Walk(child, absl::StrCat(rel, name, "/"), depth + 1);
    }
    ::closedir(dir);
  }

  std::map<std::string, std::string> TakePods() { return std::move(pods_); }

 private:
  const std::string root_;
  const int max_depth_;
  std::map<std::string, std::string> pods_;
};

}  // namespace

std::optional<std::string> PodUidFromCgroupName(std::string_view std_name) {
  // Debian's Abseil has its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0).
  absl::string_view dir_name(std_name.data(), std_name.size());
  // cgroupfs driver: pod<uid>.
  if (absl::StartsWith(dir_name, "pod")) return UidFromName(dir_name.substr(3), '-');
  // systemd driver: kubepods[-<qos>]-pod<uid with '_'>.slice.
  static constexpr std::array<absl::string_view, 3> kSystemdPrefixes = {
      "kubepods-pod", "kubepods-besteffort-pod", "kubepods-burstable-pod"};
  if (!absl::EndsWith(dir_name, ".slice")) return std::nullopt;
  dir_name.remove_suffix(6);
  for (absl::string_view prefix : kSystemdPrefixes) {
    if (absl::StartsWith(dir_name, prefix)) {
      return UidFromName(dir_name.substr(prefix.size()), '_');
    }
  }
  return std::nullopt;
}

absl::StatusOr<std::map<std::string, std::string>> FindPodCgroups(const std::string& root,
                                                                  int max_depth) {
  const int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("pod cgroup root ", root));
  std::string base = root;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  if (base == "/") base.clear();  // so that joining gives "/x", not "//x"
  PodCgroupWalk walk(std::move(base), max_depth);
  walk.Walk(fd, "", 1);
  return walk.TakePods();
}

}  // namespace shunt::agent
