#include "agent/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "agent/capture/handoff.h"
#include "common/errno_status.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace shunt::agent {
namespace {

constexpr absl::Duration kStableRun = absl::Seconds(10);
constexpr absl::Duration kMaxBackoff = absl::Seconds(30);

// Starts the agent with `child_end` as its --keeper-fd; -1 when fork failed.
pid_t StartAgent(const std::vector<std::string>& argv, int child_end, const sigset_t& original) {
  std::vector<std::string> args = argv;
  args.push_back(absl::StrCat("--keeper-fd=", child_end));
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid != 0) return pid;
  // The child: dies with the supervisor; its signals as the supervisor's were before.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1);  // the supervisor died before the prctl
  sigprocmask(SIG_SETMASK, &original, nullptr);
  const int flags = fcntl(child_end, F_GETFD);
  fcntl(child_end, F_SETFD, flags & ~FD_CLOEXEC);
  execv("/proc/self/exe", cargs.data());
  std::fprintf(stderr, "shunt-agent --supervise: exec: %s\n", std::strerror(errno));
  _exit(1);
}

// What the agent says on its keeper socket. Returns false when the agent's end closed.
bool ServeKeeper(int fd, std::vector<HandedListener>& held) {
  char text[16] = {};
  const ssize_t n = recv(fd, text, sizeof(text) - 1, MSG_DONTWAIT);
  if (n == 0) return false;
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  const std::string_view m(text, static_cast<size_t>(n));
  if (m == "TAKE\n") {
    if (absl::Status s = SendListeners(fd, held); !s.ok()) {
      SHUNT_LOG(WARNING) << "supervisor: hand the listeners to the agent: " << s.message();
    } else if (!held.empty()) {
      SHUNT_LOG(INFO) << "supervisor: handed " << held.size() << " capture listener(s) kept "
                      << "across the restart to the agent";
    }
  } else if (m == "SET\n") {
    auto set = ReceiveListeners(fd);
    if (!set.ok()) {
      SHUNT_LOG(WARNING) << "supervisor: the agent's listeners: " << set.status().message();
      return true;
    }
    held = std::move(*set);
  } else {
    SHUNT_LOG(WARNING) << "supervisor: a message not understood from the agent: ignored";
  }
  return true;
}

}  // namespace

int Supervise(std::vector<std::string> argv) {
  sigset_t handled, original;
  sigemptyset(&handled);
  sigaddset(&handled, SIGTERM);
  sigaddset(&handled, SIGINT);
  sigaddset(&handled, SIGCHLD);
  sigprocmask(SIG_BLOCK, &handled, &original);
  UniqueFd signals(signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signals.valid()) {
    SHUNT_LOG(ERROR) << ErrnoStatus(errno, "supervisor: signalfd");
    return 1;
  }
  std::vector<HandedListener> held;  // the agent's capture listeners, as it last said
  absl::Duration backoff = absl::ZeroDuration();
  int stop_signal = 0;
  while (true) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
      SHUNT_LOG(ERROR) << ErrnoStatus(errno, "supervisor: socketpair");
      return 1;
    }
    UniqueFd keeper(pair[0]), child_end(pair[1]);
    // An agent stopped between a "SET" and its "END" does not hold the supervisor (its signals,
    // its reaping) for ever.
    timeval t{5, 0};
    setsockopt(keeper.get(), SOL_SOCKET, SO_RCVTIMEO, &t, sizeof(t));
    const absl::Time started = absl::Now();
    const pid_t child = StartAgent(argv, child_end.get(), original);
    if (child < 0) {
      SHUNT_LOG(ERROR) << ErrnoStatus(errno, "supervisor: fork");
      return 1;
    }
    child_end.Reset();
    SHUNT_LOG(INFO) << "supervisor: agent started (pid " << child << ")";
    int status = 0;
    bool exited = false;
    while (!exited) {
      pollfd p[2] = {{signals.get(), POLLIN, 0}, {keeper.get(), POLLIN, 0}};
      const int nfds = keeper.valid() ? 2 : 1;
      if (poll(p, nfds, -1) < 0 && errno != EINTR) {
        SHUNT_LOG(ERROR) << ErrnoStatus(errno, "supervisor: poll");
        return 1;
      }
      if (nfds == 2 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
        if (!ServeKeeper(keeper.get(), held)) keeper.Reset();  // the agent's end closed
      }
      signalfd_siginfo si{};
      while (read(signals.get(), &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo == SIGCHLD) continue;  // reaped below
        stop_signal = static_cast<int>(si.ssi_signo);
        SHUNT_LOG(INFO) << "supervisor: signal " << stop_signal << ": passed to the agent";
        kill(child, stop_signal);
      }
      const pid_t w = waitpid(child, &status, WNOHANG);
      exited = w == child;
    }
    // What the agent said before it went and was not read yet: its last set is the one to keep.
    while (keeper.valid()) {
      pollfd p{keeper.get(), POLLIN, 0};
      if (poll(&p, 1, 0) <= 0 || !(p.revents & (POLLIN | POLLHUP | POLLERR))) break;
      if (!ServeKeeper(keeper.get(), held)) keeper.Reset();
    }
    if (stop_signal != 0) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (WIFEXITED(status) && (WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 2)) {
      SHUNT_LOG(INFO) << "supervisor: the agent exited with " << WEXITSTATUS(status);
      return WEXITSTATUS(status);
    }
    const std::string how = WIFSIGNALED(status)
                                ? absl::StrCat("killed by signal ", WTERMSIG(status))
                                : absl::StrCat("exited with ", WEXITSTATUS(status));
    if (absl::Now() - started >= kStableRun) backoff = absl::ZeroDuration();
    SHUNT_LOG(WARNING) << "supervisor: the agent was " << how << "; starting it again"
                       << (backoff > absl::ZeroDuration()
                               ? absl::StrCat(" in ", absl::FormatDuration(backoff))
                               : " now")
                       << ", " << held.size() << " capture listener(s) kept open meanwhile";
    // The wait, still answering a stop signal.
    const absl::Time until = absl::Now() + backoff;
    while (absl::Now() < until) {
      pollfd p{signals.get(), POLLIN, 0};
      poll(&p, 1,
           static_cast<int>(std::max<int64_t>(1, absl::ToInt64Milliseconds(until - absl::Now()))));
      signalfd_siginfo si{};
      while (read(signals.get(), &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo != SIGCHLD) return 0;  // stopped while no agent runs
      }
    }
    backoff =
        backoff == absl::ZeroDuration() ? absl::Seconds(1) : std::min(backoff * 2, kMaxBackoff);
  }
}

KeeperClient::KeeperClient(int fd) : fd_(fd) {
  // A supervisor that does not answer does not hold the agent's start (or a pass) for ever.
  timeval t{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof(t));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, sizeof(t));
}

absl::StatusOr<std::vector<HandedListener>> KeeperClient::Take() {
  absl::MutexLock l(&mu_);
  if (send(fd_.get(), "TAKE\n", 5, MSG_NOSIGNAL) != 5) {
    return ErrnoStatus(errno, "keeper: ask the supervisor for its listeners");
  }
  return ReceiveListeners(fd_.get());
}

void KeeperClient::Set(const std::vector<HandedListener>& listeners) {
  absl::MutexLock l(&mu_);
  if (!fd_.valid()) return;
  absl::Status s = send(fd_.get(), "SET\n", 4, MSG_NOSIGNAL) == 4
                       ? SendListeners(fd_.get(), listeners)
                       : ErrnoStatus(errno, "send");
  if (!s.ok()) {
    // The supervisor went (it kills this process when it does): nothing to keep them for.
    SHUNT_LOG(WARNING) << "keeper: tell the supervisor the capture listeners: " << s.message();
    fd_.Reset();
  }
}

}  // namespace shunt::agent
