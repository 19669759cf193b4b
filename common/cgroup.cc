#include "common/cgroup.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/errno_status.h"

namespace shunt {
namespace {

std::string UnescapeMountPath(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7' && s[i + 2] >= '0' && s[i + 2] <= '7' &&
        s[i + 3] >= '0' && s[i + 3] <= '7') {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> ParseCgroup2Mount(absl::string_view mountinfo) {
  for (absl::string_view line : absl::StrSplit(mountinfo, '\n')) {
    // id parent major:minor root mountpoint options [optional fields...] - fstype source superopts
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    size_t dash = 0;
    for (size_t i = 6; i < f.size(); ++i) {
      if (f[i] == "-") {
        dash = i;
        break;
      }
    }
    if (dash == 0 || dash + 1 >= f.size()) continue;
    if (f[dash + 1] == "cgroup2") return UnescapeMountPath(f[4]);
  }
  return absl::NotFoundError("no cgroup2 mount in /proc/self/mountinfo (cgroup v2 is required)");
}

absl::StatusOr<std::string> FindCgroup2Mount() {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) return ErrnoStatus(errno, "open /proc/self/mountinfo");
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseCgroup2Mount(ss.str());
}

absl::StatusOr<uint64_t> CgroupId(const std::string& path) {
  struct {
    struct file_handle fh;
    uint64_t id;
  } h;
  h.fh.handle_bytes = sizeof(uint64_t);
  int mount_id = 0;
  if (name_to_handle_at(AT_FDCWD, path.c_str(), &h.fh, &mount_id, 0) != 0) {
    return ErrnoStatus(errno, absl::StrCat("name_to_handle_at ", path));
  }
  uint64_t id;
  std::memcpy(&id, h.fh.f_handle, sizeof(id));
  return id;
}

absl::StatusOr<std::string> ResolveCgroupRoot(const std::string& mount, const std::string& flag) {
  std::string path;
  if (!flag.empty() && flag[0] == '/' &&
      (flag == mount || flag.rfind(mount + "/", 0) == 0)) {
    path = flag;
  } else {
    absl::string_view rel = flag;
    while (!rel.empty() && rel.front() == '/') rel.remove_prefix(1);
    path = rel.empty() ? mount : absl::StrCat(mount, "/", rel);
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("cgroup root ", path));
  if (!S_ISDIR(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(path, " is not a directory"));
  return path;
}

}  // namespace shunt
