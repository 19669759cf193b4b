// Network namespaces of pods, entered by one thread at a time (setns(2) is per thread): sockets
// and netlink sockets made inside belong to that namespace for their whole life.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace shunt::agent {

// A namespace file: /proc/<pid>/ns/net (a process of the pod's cgroup), /run/netns/<name>.
absl::StatusOr<UniqueFd> OpenNetns(const std::string& path);

// The calling thread in `netns` until the scope ends, then back where it was. Not movable: it is
// the thread's state. Check ok() (or status()) before using the namespace.
class NetnsScope {
 public:
  explicit NetnsScope(int netns_fd);
  ~NetnsScope();
  NetnsScope(const NetnsScope&) = delete;
  NetnsScope& operator=(const NetnsScope&) = delete;

  const absl::Status& status() const { return status_; }
  bool ok() const { return status_.ok(); }

 private:
  UniqueFd home_;
  absl::Status status_;
};

}  // namespace shunt::agent
