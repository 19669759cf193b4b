// Kubelet's pod cgroup naming, for both cgroup drivers, and a walk that finds every pod's cgroup.
//
// The agent identifies a local pod by the cgroup id of its pod cgroup (DESIGN.md, Identity); the
// policy names pods by uid. This maps one to the other. Layouts (under the kubelet's root):
//   systemd:  kubepods.slice/kubepods-pod<uid>.slice                                 (guaranteed)
//             kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice
//             kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice
//   cgroupfs: kubepods/pod<uid>   kubepods/burstable/pod<uid>   kubepods/besteffort/pod<uid>
// The systemd driver writes the uid's dashes as underscores ('-' is systemd's slice separator).
// Read-only filesystem access; no cgroup is created or changed.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace shunt::agent {

// The pod uid (with dashes) that a pod cgroup directory name encodes, or nullopt for any other
// name (QoS slices, container scopes, "podman", ...). A uid is a UUID (8-4-4-4-12 hex digits) or
// 32 hex digits (static pods, whose uid is a hash).
std::optional<std::string> PodUidFromCgroupName(std::string_view dir_name);

// Walks the directories under `root` (e.g. /sys/fs/cgroup/kubepods.slice) down to `max_depth`
// levels, without following symlinks or descending into pod directories, and maps each pod uid to
// its pod cgroup directory (`root` joined with the relative path; absolute when `root` is).
// Unreadable subdirectories are skipped; a root that is missing or not a directory is an error.
// Should a uid appear twice, the first in name order wins.
absl::StatusOr<std::map<std::string, std::string>> FindPodCgroups(const std::string& root,
                                                                  int max_depth = 4);

}  // namespace shunt::agent
