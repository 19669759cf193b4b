// cgroup v2 helpers shared by the agent and the test bed.
#pragma once

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"

namespace shunt {

// The mount point of the cgroup2 hierarchy, from the given mountinfo text (see proc(5)).
// Octal escapes (\040) in the path are decoded. NotFound when there is no cgroup2 mount.
absl::StatusOr<std::string> ParseCgroup2Mount(absl::string_view mountinfo);
// Same, reading /proc/self/mountinfo.
absl::StatusOr<std::string> FindCgroup2Mount();

// The kernel's id of the cgroup at `path` (what bpf_get_current_cgroup_id() and the kernfs node
// id return), via name_to_handle_at(2).
absl::StatusOr<uint64_t> CgroupId(const std::string& path);

// Resolves a --cgroup-root value: an absolute path inside `mount` is kept; anything else is taken
// relative to `mount`. The result must be an existing directory.
absl::StatusOr<std::string> ResolveCgroupRoot(const std::string& mount, const std::string& flag);

}  // namespace shunt
