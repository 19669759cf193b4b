#include "agent/policy/file_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/policy/policy_file.h"
#include "common/errno_status.h"
#include "common/log.h"

namespace shunt::agent {
namespace {

int64_t Nanos(const struct timespec& ts) {
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Closes a file descriptor at scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() { ::close(fd_); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

}  // namespace

FilePolicySource::FilePolicySource(std::string path, absl::Duration poll_interval)
    : path_(std::move(path)), name_(absl::StrCat("file:", path_)), poll_interval_(poll_interval) {}

FilePolicySource::~FilePolicySource() { Stop(); }

FilePolicySource::Fingerprint FilePolicySource::Stat(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return Fingerprint{.error = errno};
  return Fingerprint{.dev = st.st_dev,
                     .ino = st.st_ino,
                     .size = st.st_size,
                     .mtime_ns = Nanos(st.st_mtim),
                     .ctime_ns = Nanos(st.st_ctim)};
}

absl::StatusOr<shunt::v1::PolicyBundle> FilePolicySource::Load(Fingerprint* seen) const {
  // `seen` stays the caller's pre-read stat unless the open succeeds: a file that appears between
  // the stat and the open then differs from it at the next poll and is read then.
  // O_NONBLOCK: a FIFO at the path must not hang the agent.
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoStatus(errno, path_);
  FdCloser closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, path_);
  *seen = Fingerprint{.dev = st.st_dev,
                      .ino = st.st_ino,
                      .size = st.st_size,
                      .mtime_ns = Nanos(st.st_mtim),
                      .ctime_ns = Nanos(st.st_ctim)};
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxPolicyBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": policy is ", st.st_size, " bytes; at most ", kMaxPolicyBytes, " are allowed"));
  }
  // One byte past the limit, so that a file that grew since fstat is still refused by the parser.
  std::string text(static_cast<size_t>(st.st_size) + 1, '\0');
  size_t used = 0;
  while (true) {
    if (used == text.size()) {
      if (text.size() > kMaxPolicyBytes) break;
      text.resize(std::min(text.size() * 2, kMaxPolicyBytes + 1));
    }
    const ssize_t n = ::read(fd, text.data() + used, text.size() - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, path_);
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  text.resize(used);
  absl::StatusOr<shunt::v1::PolicyBundle> bundle = ParsePolicyBundle(text);
  if (!bundle.ok()) {
    return absl::Status(bundle.status().code(),
                        absl::StrCat(path_, ": ", bundle.status().message()));
  }
  return bundle;
}

absl::Status FilePolicySource::Start(UpdateFn on_update) {
  if (thread_.joinable()) return absl::FailedPreconditionError(absl::StrCat(name_, ": started"));
  {
    absl::MutexLock lock(&stop_mu_);
    stopping_ = false;
  }
  {
    absl::MutexLock lock(&poll_mu_);
    on_update_ = std::move(on_update);
    last_ = Stat(path_);
    absl::StatusOr<shunt::v1::PolicyBundle> update = Load(&last_);
    on_update_(std::move(update));
  }
  thread_ = std::thread([this] { PollLoop(); });
  return absl::OkStatus();
}

void FilePolicySource::Stop() {
  {
    absl::MutexLock lock(&stop_mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  absl::MutexLock lock(&poll_mu_);
  on_update_ = nullptr;
}

bool FilePolicySource::PollOnce() {
  absl::MutexLock lock(&poll_mu_);
  if (!on_update_) return false;
  const Fingerprint now = Stat(path_);
  if (now == last_) return false;
  SHUNT_LOG(DEBUG) << path_ << " changed; reloading";
  last_ = now;
  absl::StatusOr<shunt::v1::PolicyBundle> update = Load(&last_);
  on_update_(std::move(update));
  return true;
}

void FilePolicySource::PollLoop() {
  while (true) {
    {
      absl::MutexLock lock(&stop_mu_);
      if (stop_mu_.AwaitWithTimeout(absl::Condition(&stopping_), poll_interval_)) return;
    }
    PollOnce();
  }
}

}  // namespace shunt::agent
