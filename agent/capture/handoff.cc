#include "agent/capture/handoff.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/errno_status.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace shunt::agent {
namespace {

constexpr char kHello[] = "SHUNT-HANDOFF 1\n";
constexpr char kEnd[] = "END\n";
constexpr size_t kMaxMessage = 512;

absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(a.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("handoff socket path too long or empty: ", path));
  }
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

void SetTimeouts(int fd, absl::Duration timeout) {
  const timeval tv = absl::ToTimeval(timeout);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

absl::Status SendMessage(int fd, const std::string& text, int pass_fd) {
  iovec iov{const_cast<char*>(text.data()), text.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (pass_fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
  }
  if (sendmsg(fd, &msg, MSG_NOSIGNAL) != static_cast<ssize_t>(text.size())) {
    return ErrnoStatus(errno, "handoff: send");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SendListeners(int fd, const std::vector<HandedListener>& listeners) {
  for (const auto& l : listeners) {
    RETURN_IF_ERROR(SendMessage(
        fd, absl::StrCat("L ", l.pod_uid, " ", l.netns_ino, " ", l.family, " ", l.port, "\n"),
        l.fd.get()));
  }
  return SendMessage(fd, kEnd, -1);
}

absl::StatusOr<std::unique_ptr<HandoffServer>> HandoffServer::Start(const std::string& path,
                                                                    Surrender surrender) {
  auto addr = UnixAddress(path);
  if (!addr.ok()) return addr.status();
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  std::unique_ptr<HandoffServer> s(new HandoffServer());
  s->path_ = path;
  s->surrender_ = std::move(surrender);
  s->listen_ = UniqueFd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s->listen_.valid()) return ErrnoStatus(errno, "handoff: socket");
  // A socket file left there is a dead agent's, or the one this agent took over from (which
  // serves no one any more): this agent is the newest.
  unlink(path.c_str());
  if (bind(s->listen_.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("handoff: bind ", path));
  }
  chmod(path.c_str(), 0600);
  struct stat st{};
  if (stat(path.c_str(), &st) == 0) s->ino_ = st.st_ino;
  if (listen(s->listen_.get(), 4) != 0) return ErrnoStatus(errno, "handoff: listen");
  s->stop_ = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s->stop_.valid()) return ErrnoStatus(errno, "handoff: eventfd");
  s->thread_ = std::thread([p = s.get()] { p->Serve(); });
  return s;
}

HandoffServer::~HandoffServer() {
  if (stop_.valid()) {
    const uint64_t one = 1;
    if (write(stop_.get(), &one, sizeof(one)) < 0) {}
  }
  if (thread_.joinable()) thread_.join();
  struct stat st{};
  if (!path_.empty() && stat(path_.c_str(), &st) == 0 && st.st_ino == ino_) unlink(path_.c_str());
}

void HandoffServer::Serve() {
  while (true) {
    pollfd p[2] = {{listen_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      SHUNT_LOG(ERROR) << ErrnoStatus(errno, "handoff: poll");
      return;
    }
    if (p[1].revents) return;
    UniqueFd c(accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c.valid()) continue;
    SetTimeouts(c.get(), absl::Seconds(5));
    char buf[64] = {};
    const ssize_t n = recv(c.get(), buf, sizeof(buf) - 1, 0);
    if (n != static_cast<ssize_t>(std::strlen(kHello)) || std::strcmp(buf, kHello) != 0) {
      SHUNT_LOG(WARNING) << "handoff: a peer that did not ask for the listeners: ignored";
      continue;
    }
    SHUNT_LOG(INFO) << "handoff: a new agent takes over: handing over the capture listeners";
    std::vector<HandedListener> listeners = surrender_();
    absl::Status s = SendListeners(c.get(), listeners);
    if (!s.ok()) {
      // The successor went away mid-way: the listeners are gone from this agent too (its policy
      // work stopped); what it received it serves, the rest is reached directly (fail open) until
      // an agent captures those pods again.
      SHUNT_LOG(ERROR) << s.message();
    } else {
      SHUNT_LOG(INFO) << "handoff: " << listeners.size() << " listener(s) handed over";
    }
    handed_over_ = true;
    return;  // one successor: this agent serves no one any more
  }
}

absl::StatusOr<std::vector<HandedListener>> TakeOver(const std::string& path,
                                                     absl::Duration timeout, bool* reached) {
  if (reached) *reached = false;
  std::vector<HandedListener> out;
  auto addr = UnixAddress(path);
  if (!addr.ok()) return addr.status();
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, "handoff: socket");
  SetTimeouts(fd.get(), timeout);
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    if (errno == ENOENT || errno == ECONNREFUSED) return out;  // no agent there
    return ErrnoStatus(errno, absl::StrCat("handoff: connect ", path));
  }
  if (send(fd.get(), kHello, std::strlen(kHello), MSG_NOSIGNAL) < 0) {
    return ErrnoStatus(errno, "handoff: send");
  }
  if (reached) *reached = true;
  return ReceiveListeners(fd.get());
}

absl::StatusOr<std::vector<HandedListener>> ReceiveListeners(int fd) {
  std::vector<HandedListener> out;
  while (true) {
    char text[kMaxMessage + 1] = {};
    iovec iov{text, kMaxMessage};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) return ErrnoStatus(errno, "handoff: receive");
    if (n == 0) return absl::UnavailableError("handoff: the peer went away mid-way");
    std::vector<UniqueFd> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int f;
        std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        fds.emplace_back(f);
      }
    }
    const std::string line(text, static_cast<size_t>(n));
    if (line == kEnd) return out;
    std::vector<std::string> parts = absl::StrSplit(absl::StripSuffix(line, "\n"), ' ');
    HandedListener l;
    int family = 0;
    uint32_t port = 0;
    if (parts.size() != 5 || parts[0] != "L" || (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) ||
        fds.size() != 1 || !absl::SimpleAtoi(parts[2], &l.netns_ino) ||
        !absl::SimpleAtoi(parts[3], &family) || !absl::SimpleAtoi(parts[4], &port) ||
        (family != AF_INET && family != AF_INET6) || port == 0 || port > 65535) {
      return absl::DataLossError(absl::StrCat("handoff: a message not understood: \"",
                                              absl::CEscape(line), "\""));
    }
    l.pod_uid = parts[1];
    l.family = family;
    l.port = static_cast<uint16_t>(port);
    l.fd = std::move(fds[0]);
    out.push_back(std::move(l));
  }
}

}  // namespace shunt::agent
