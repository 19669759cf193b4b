#include "agent/capture/netns.h"

#include <fcntl.h>
#include <sched.h>

#include <cerrno>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/log.h"

namespace shunt::agent {

absl::StatusOr<UniqueFd> OpenNetns(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("open network namespace ", path));
  return fd;
}

NetnsScope::NetnsScope(int netns_fd) : home_(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) {
  if (!home_.valid()) {
    status_ = ErrnoStatus(errno, "open this thread's network namespace");
    return;
  }
  if (setns(netns_fd, CLONE_NEWNET) != 0) {
    status_ = ErrnoStatus(errno, "enter a pod's network namespace (setns)");
    home_.Reset();
  }
}

NetnsScope::~NetnsScope() {
  if (!home_.valid()) return;
  if (setns(home_.get(), CLONE_NEWNET) != 0) {
    // A thread stuck in a pod's namespace would make the agent's later sockets there: stop.
    SHUNT_LOG(ERROR) << "cannot return to the agent's network namespace: " << ErrnoStatus(errno, "setns");
    std::abort();
  }
}

}  // namespace shunt::agent
