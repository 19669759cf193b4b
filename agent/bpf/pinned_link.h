// Cgroup attachments that survive the agent: a bpf_link pinned under the agent's bpffs directory.
// Shared by every loader (fastpath, socklb) so that restart and uninstall behave the same.
#pragma once

#include <string>

#include "absl/status/status.h"

struct bpf_program;

namespace shunt::agent {

// Attaches `prog` to the cgroup `cgroup_fd` (path `cgroup_root`, for messages) through a bpf_link
// pinned at `pin`. If `pin` already holds a link on the same cgroup (an agent restart), the link's
// program is swapped atomically (bpf_link_update): no window in which a socket skips the program.
// A link pinned on another cgroup is detached and replaced. Multi-attach: programs of others on
// the cgroup are left alone.
absl::Status AttachPinnedCgroupLink(bpf_program* prog, int cgroup_fd,
                                    const std::string& cgroup_root, const std::string& pin);

// Attaches a tracing program (fentry/fexit) through a bpf_link pinned at `pin`. A link already
// pinned there (an agent restart) is replaced after the new one is attached, so the function is
// never without the program.
absl::Status AttachPinnedTracingLink(bpf_program* prog, const std::string& pin);

// Detaches and unpins the link pinned at `pin`, if any.
absl::Status DetachPinnedLink(const std::string& pin);

// unlink(2) that ignores a missing file.
absl::Status Unpin(const std::string& path);

bool PathExists(const std::string& path);

}  // namespace shunt::agent
