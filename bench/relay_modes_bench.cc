// Three ways a user-space TCP relay can move opaque bytes between the two sockets it owns (the
// accepted one, A, and its upstream, B), against a client talking to the server directly:
//   splice  splice(2) through a pipe (1 MiB) per direction: what agent/proxy/tcp_relay.cc does;
//   copy    recv/send through a 64 KiB buffer per direction;
//   sk_skb  a sockmap stream verdict (relay_modes.bpf.c) redirects every skb received on A to
//           B's egress and back; the relay only watches for EOF and errors, and passes a FIN on
//           once what came before it is in the other socket's send queue (TCP_INFO bytes
//           received on one side == bytes acked + SIOCOUTQ on the other);
//   sk_skb-naive  the same, but passes a FIN on the moment it sees it (for the half-close and
//           integrity checks only: does data before a FIN get lost?).
// One run, interleaved rounds, medians: 1 KiB ping-pong latency, bulk throughput, and the checks
// that matter for a relay (checksummed transfer both ways, half-close, a slow server: who holds
// the bytes, RST each way).
//
// Safety: the process moves into a network namespace of its own (unshare(CLONE_NEWNET): anonymous,
// so it disappears with the process whatever way it ends, SIGKILL included), brings up its
// loopback and nothing else; the BPF program is attached to its own sockhash only, nothing is
// pinned (maps and program go with the process's descriptors). A watchdog ends it after 115 s.
//
// Needs root (CAP_SYS_ADMIN, CAP_BPF, CAP_NET_ADMIN). Usage:
//   shunt-bench-relay-modes [--rounds=5] [--exchanges=20000] [--bulk-seconds=1]
//                           [--integrity-mib=256] [--slow-mib=64] [--stall-seconds=2]
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "relay_modes.skel.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint16_t kServerPort = 7000;
constexpr size_t kPipeSize = 1 << 20;
constexpr size_t kCopyBuf = 64 << 10;

double Secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

[[noreturn]] void Die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  _exit(1);
}

// ---------- sockets ----------

void SetNoDelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}
void SetNonBlock(int fd, bool on) {
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK));
}
void SetTimeouts(int fd, int seconds) {
  timeval tv{seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}
void ResetClose(int fd) {
  linger l{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  close(fd);
}
sockaddr_in Loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}
int Listen(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a = Loopback(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 128) != 0)
    Die("listen %u: %s", port, strerror(errno));
  return fd;
}
int Connect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a = Loopback(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  SetNoDelay(fd);
  return fd;
}
bool WriteFull(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}
// 1: all read, 0: EOF first, -errno otherwise.
int ReadFull(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    ssize_t r = recv(fd, c, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) return 0;
    if (r < 0) return -errno;
    c += r;
    n -= static_cast<size_t>(r);
  }
  return 1;
}
long Ioctl(int fd, unsigned long req) {
  int v = -1;
  if (ioctl(fd, req, &v) != 0) return -1;
  return v;
}
struct TcpCounts {
  uint64_t received = 0, acked = 0;
};
TcpCounts TcpInfo(int fd) {
  tcp_info ti{};
  socklen_t len = sizeof ti;
  TcpCounts c;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0) {
    c.received = ti.tcpi_bytes_received;
    c.acked = ti.tcpi_bytes_acked;
  }
  return c;
}
// Bytes acked + still in the send queue. tcpi_bytes_acked counts the SYN on a connected socket
// but not on an accepted one: callers subtract what it said before anything was written.
uint64_t Written(int fd) {
  long q = Ioctl(fd, SIOCOUTQ);
  return TcpInfo(fd).acked + static_cast<uint64_t>(q < 0 ? 0 : q);
}
bool RdHup(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP));
}
// Data bytes received (tcpi_bytes_received counts the FIN once it came).
uint64_t Received(int fd) {
  uint64_t r = TcpInfo(fd).received;
  return r && RdHup(fd) ? r - 1 : r;
}

// ---------- a position-keyed byte pattern: loss, duplication and reordering all show ----------

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
void Fill(uint64_t seed, uint64_t off, char* buf, size_t len) {
  while (len) {
    uint64_t w = Mix(seed ^ ((off >> 3) * 0x2545f4914f6cdd1dULL));
    size_t in = off & 7, take = std::min<size_t>(8 - in, len);
    std::memcpy(buf, reinterpret_cast<char*>(&w) + in, take);
    buf += take;
    off += take;
    len -= take;
  }
}
struct Verifier {
  uint64_t seed, got = 0;
  bool ok = true;
  std::vector<char> want;
  explicit Verifier(uint64_t s) : seed(s) {}
  void Add(const char* p, size_t n) {
    if (want.size() < n) want.resize(n);
    Fill(seed, got, want.data(), n);
    if (ok && std::memcmp(p, want.data(), n) != 0) {
      ok = false;
      size_t i = 0;
      while (i < n && p[i] == want[i]) i++;
      if (getenv("RELAY_MODES_DEBUG"))
        std::fprintf(stderr, "pattern %lu: first bad byte at %lu (recv of %zu at %lu)\n",
                     (unsigned long)seed, (unsigned long)(got + i), n, (unsigned long)got);
    }
    got += n;
  }
};
// Sends `total` pattern bytes; false on an error.
bool SendPattern(int fd, uint64_t seed, uint64_t total) {
  std::vector<char> buf(256 << 10);
  for (uint64_t off = 0; off < total;) {
    size_t n = std::min<uint64_t>(buf.size(), total - off);
    Fill(seed, off, buf.data(), n);
    if (!WriteFull(fd, buf.data(), n)) return false;
    off += n;
  }
  return true;
}
// Reads to EOF, verifying; returns the recv error (0: a clean EOF).
int RecvPattern(int fd, Verifier& v) {
  std::vector<char> buf(256 << 10);
  for (;;) {
    ssize_t r = recv(fd, buf.data(), buf.size(), 0);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) return 0;
    if (r < 0) return errno;
    v.Add(buf.data(), static_cast<size_t>(r));
  }
}

// ---------- kernel memory ----------

long SockstatTcpMemPages() {
  FILE* f = std::fopen("/proc/net/sockstat", "r");
  if (!f) return -1;
  char line[256];
  long mem = -1;
  while (std::fgets(line, sizeof line, f)) {
    const char* m = std::strstr(line, " mem ");
    if (std::strncmp(line, "TCP:", 4) == 0 && m) mem = std::atol(m + 5);
  }
  std::fclose(f);
  return mem;
}
long MemAvailableKb() {
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "MemAvailable: %ld kB", &v) == 1) break;
  std::fclose(f);
  return v;
}

// ---------- the BPF side ----------

struct Bpf {
  shunt_relay_modes* skel = nullptr;
  int socks = -1, peers = -1, stats = -1;
  std::string error;
};
struct BpfCounters {
  uint64_t redirected_bytes, redirected_skbs, passed_bytes, passed_skbs, empty_skbs;
};
BpfCounters StatsOf(const Bpf& b, uint64_t cookie) {
  BpfCounters c{};
  bpf_map_lookup_elem(b.stats, &cookie, &c);
  return c;
}
uint64_t Cookie(int fd) {
  uint64_t c = 0;
  socklen_t len = sizeof c;
  getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &len);
  return c;
}

// ---------- the relays ----------

enum class Mode { kDirect, kSplice, kCopy, kSkSkb, kSkSkbNaive };
const char* Name(Mode m) {
  switch (m) {
    case Mode::kDirect: return "direct";
    case Mode::kSplice: return "splice";
    case Mode::kCopy: return "copy";
    case Mode::kSkSkb: return "sk_skb";
    case Mode::kSkSkbNaive: return "sk_skb-naive";
  }
  return "?";
}

struct RelayCounters {
  std::atomic<uint64_t> conns{0}, resets{0};
  // sk_skb: how EOF showed, bytes the relay had to move itself (queued on a socket before it
  // entered the sockhash, or not redirected), FINs that waited for the peer's queue to drain.
  std::atomic<uint64_t> eof_recv0{0}, eof_rdhup_eagain{0}, user_bytes{0}, drain_waits{0},
      drain_timeouts{0}, max_drain_us{0}, rst_as_eof{0};
};

class Relay {
 public:
  Relay(Mode mode, uint16_t port, Bpf* bpf) : mode_(mode), port_(port), bpf_(bpf) {}
  ~Relay() { Stop(); }
  void Start() {
    lfd_ = Listen(port_);
    SetNonBlock(lfd_, true);
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.u64 = ~0ULL;
    epoll_ctl(ep_, EPOLL_CTL_ADD, lfd_, &e);
    thread_ = std::thread([this] { Loop(); });
  }
  void Stop() {
    if (!thread_.joinable()) return;
    stop_ = true;
    thread_.join();
    for (auto& [id, c] : conns_) Close(*c, false);
    conns_.clear();
    close(lfd_);
    close(ep_);
  }
  uint16_t port() const { return port_; }
  Mode mode() const { return mode_; }
  RelayCounters counters;
  // The latest connection, for the slow-server snapshot (read from the client's thread).
  std::atomic<int> last_a{-1}, last_b{-1};
  std::atomic<uint64_t> last_cookie_a{0};
  std::atomic<uint64_t> last_b_written0{0};
  std::atomic<size_t> buffered{0};  // bytes in pipes / user buffers now

 private:
  struct Dir {
    int src = -1, dst = -1;
    int pipe_r = -1, pipe_w = -1;
    std::vector<char> buf;
    size_t pending = 0, off = 0;
    bool eof = false, shut = false, draining = false;
    uint64_t dst_written0 = 0;
    Clock::time_point eof_at;
  };
  struct Conn {
    uint64_t id;
    int fd[2];
    Dir d[2];  // d[0]: A -> B, d[1]: B -> A
    uint32_t interest[2] = {0, 0};
    bool in_epoll[2] = {false, false};
    uint64_t cookie[2] = {0, 0};
    bool dead = false;
  };
  bool sk() const { return mode_ == Mode::kSkSkb || mode_ == Mode::kSkSkbNaive; }

  void Loop() {
    epoll_event evs[64];
    while (!stop_) {
      int timeout = draining_ ? 1 : 50;
      int n = epoll_wait(ep_, evs, 64, timeout);
      for (int i = 0; i < n; i++) {
        if (evs[i].data.u64 == ~0ULL) {
          Accept();
          continue;
        }
        auto it = conns_.find(evs[i].data.u64 >> 1);
        if (it == conns_.end() || it->second->dead) continue;
        Event(*it->second, static_cast<int>(evs[i].data.u64 & 1), evs[i].events);
      }
      if (draining_) CheckDrains();
      for (auto it = conns_.begin(); it != conns_.end();)
        it = it->second->dead ? conns_.erase(it) : std::next(it);
    }
  }

  void Accept() {
    for (;;) {
      int a = accept4(lfd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (a < 0) return;
      int b = Connect(kServerPort);
      if (b < 0) {
        ResetClose(a);
        continue;
      }
      SetNonBlock(b, true);
      SetNoDelay(a);
      counters.conns++;
      auto c = std::make_unique<Conn>();
      c->id = next_id_++;
      c->fd[0] = a;
      c->fd[1] = b;
      for (int k = 0; k < 2; k++) {
        c->d[k].src = c->fd[k];
        c->d[k].dst = c->fd[1 - k];
        c->d[k].dst_written0 = Written(c->fd[1 - k]);
        if (mode_ == Mode::kSplice) {
          int p[2];
          if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) Die("pipe2: %s", strerror(errno));
          fcntl(p[1], F_SETPIPE_SZ, kPipeSize);
          c->d[k].pipe_r = p[0];
          c->d[k].pipe_w = p[1];
        } else {
          c->d[k].buf.resize(kCopyBuf);
        }
      }
      if (sk()) {
        c->cookie[0] = Cookie(a);
        c->cookie[1] = Cookie(b);
        BpfCounters zero{};
        for (int k = 0; k < 2; k++) {
          bpf_map_update_elem(bpf_->stats, &c->cookie[k], &zero, BPF_ANY);
          bpf_map_update_elem(bpf_->peers, &c->cookie[k], &c->cookie[1 - k], BPF_ANY);
        }
        for (int k = 0; k < 2; k++) {
          uint64_t v = static_cast<uint64_t>(c->fd[k]);
          if (bpf_map_update_elem(bpf_->socks, &c->cookie[k], &v, BPF_ANY) != 0)
            Die("sockhash update: %s", strerror(errno));
        }
      }
      last_a = a;
      last_b = b;
      last_cookie_a = c->cookie[0];
      last_b_written0 = c->d[0].dst_written0;
      Conn& ref = *c;
      conns_[c->id] = std::move(c);
      Interest(ref);
      // Bytes that came before the sockets were in the sockhash sit in their receive queues,
      // where no verdict runs until the next skb: read them now.
      for (int k = 0; k < 2 && !ref.dead; k++) Pump(ref, k, 0);
      if (!ref.dead) Interest(ref);
    }
  }

  void Interest(Conn& c) {
    if (c.dead) return;
    for (int s = 0; s < 2; s++) {
      uint32_t want = 0;
      const Dir& in = c.d[s];       // read from fd[s]
      const Dir& out = c.d[1 - s];  // written to fd[s]
      if (!in.eof && in.pending == 0) want |= EPOLLIN | EPOLLRDHUP;
      if (out.pending > 0) want |= EPOLLOUT;
      if (c.in_epoll[s] && want == c.interest[s]) continue;
      epoll_event e{};
      e.events = want;
      e.data.u64 = (c.id << 1) | static_cast<uint64_t>(s);
      epoll_ctl(ep_, c.in_epoll[s] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c.fd[s], &e);
      c.in_epoll[s] = true;
      c.interest[s] = want;
    }
  }

  void Event(Conn& c, int s, uint32_t ev) {
    if (ev & EPOLLERR) {
      Reset(c, s ? "EPOLLERR on B" : "EPOLLERR on A");
      return;
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) Pump(c, s, ev);
    if (!c.dead && (ev & (EPOLLOUT | EPOLLHUP))) Pump(c, 1 - s, 0);
    if (c.dead) return;
    Interest(c);
    if (Finished(c)) {
      Close(c, false);
      return;
    }
    // Nothing to wait for on it, but a level-triggered hang-up would spin the loop.
    if ((ev & EPOLLHUP) && c.interest[s] == 0 && c.in_epoll[s]) {
      epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd[s], nullptr);
      c.in_epoll[s] = false;
    }
  }

  bool Finished(const Conn& c) const {
    return c.d[0].shut && c.d[1].shut && !c.d[0].pending && !c.d[1].pending;
  }

  void UpdateBuffered(const Conn& c) { buffered = c.d[0].pending + c.d[1].pending; }

  // Moves what it can in direction k.
  void Pump(Conn& c, int k, uint32_t ev) {
    if (sk()) {
      SkPump(c, k);
      return;
    }
    Dir& d = c.d[k];
    for (;;) {
      if (d.pending) {
        ssize_t n = mode_ == Mode::kSplice
                        ? splice(d.pipe_r, nullptr, d.dst, nullptr, d.pending,
                                 SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                        : send(d.dst, d.buf.data() + d.off, d.pending, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
          if (errno == EAGAIN || errno == EINTR) break;
          Reset(c);
          return;
        }
        d.pending -= static_cast<size_t>(n);
        d.off += static_cast<size_t>(n);
        continue;
      }
      if (d.eof) {
        if (!d.shut) {
          shutdown(d.dst, SHUT_WR);
          d.shut = true;
        }
        break;
      }
      ssize_t n = mode_ == Mode::kSplice
                      ? splice(d.src, nullptr, d.pipe_w, nullptr, kPipeSize,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                      : recv(d.src, d.buf.data(), d.buf.size(), MSG_DONTWAIT);
      if (n > 0) {
        d.pending = static_cast<size_t>(n);
        d.off = 0;
        continue;
      }
      if (n == 0) {
        d.eof = true;
        continue;
      }
      if (errno == EAGAIN || errno == EINTR) break;
      Reset(c);
      return;
    }
    UpdateBuffered(c);
  }

  // sk_skb: the kernel moves the bytes; the relay reads only what was left to it, and passes EOF.
  void SkPump(Conn& c, int k) {
    Dir& d = c.d[k];
    while (!d.eof) {
      ssize_t n = recv(d.src, d.buf.data(), d.buf.size(), MSG_DONTWAIT);
      if (n > 0) {
        if (!WriteAllNb(d.dst, d.buf.data(), static_cast<size_t>(n))) {
          Reset(c, "user write");
          return;
        }
        counters.user_bytes += static_cast<uint64_t>(n);
        continue;
      }
      if (n == 0) {
        // tcp_bpf_recvmsg_parser returns 0 once RCV_SHUTDOWN is set, which a reset sets too: a
        // FIN leaves the socket in CLOSE_WAIT (or beyond), a reset in CLOSE.
        tcp_info ti{};
        socklen_t tl = sizeof ti;
        getsockopt(d.src, IPPROTO_TCP, TCP_INFO, &ti, &tl);
        if (ti.tcpi_state == 7 /* TCP_CLOSE */) {
          counters.rst_as_eof++;
          Reset(c, "recv()=0 on a reset socket");
          return;
        }
        counters.eof_recv0++;
        d.eof = true;
        break;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN) {
        Reset(c, k ? "recv B" : "recv A");
        return;
      }
      if (RdHup(d.src)) {  // the FIN came, yet recv says EAGAIN
        counters.eof_rdhup_eagain++;
        d.eof = true;
      }
      break;
    }
    if (d.eof && !d.shut && !d.draining) {
      d.eof_at = Clock::now();
      if (mode_ == Mode::kSkSkbNaive || Drained(d)) {
        shutdown(d.dst, SHUT_WR);
        d.shut = true;
      } else {
        d.draining = true;
        draining_++;
        counters.drain_waits++;
      }
    }
  }
  // Every byte received on src is in dst's send queue (or beyond): none waits in a psock queue.
  static bool Drained(const Dir& d) { return Written(d.dst) - d.dst_written0 >= Received(d.src); }

  void CheckDrains() {
    for (auto& [id, cp] : conns_) {
      Conn& c = *cp;
      if (c.dead) continue;
      for (int k = 0; k < 2; k++) {
        Dir& d = c.d[k];
        if (!d.draining) continue;
        bool timeout = Clock::now() - d.eof_at > std::chrono::seconds(5);
        if (!Drained(d) && !timeout) continue;
        if (timeout) {
          counters.drain_timeouts++;
          if (getenv("RELAY_MODES_DEBUG")) {
            TcpCounts si = TcpInfo(d.src), di = TcpInfo(d.dst);
            BpfCounters bc = StatsOf(*bpf_, c.cookie[k]);
            std::fprintf(stderr, "[%s] drain timeout conn %lu dir %d: src rcvd %lu rdhup %d; dst acked %lu outq %ld; bpf redirected %lu skbs %lu passed %lu empty %lu\n",
                         Name(mode_), (unsigned long)c.id, k, (unsigned long)si.received, RdHup(d.src),
                         (unsigned long)di.acked, Ioctl(d.dst, SIOCOUTQ), (unsigned long)bc.redirected_bytes,
                         (unsigned long)bc.redirected_skbs, (unsigned long)bc.passed_bytes, (unsigned long)bc.empty_skbs);
          }
        }
        uint64_t us = static_cast<uint64_t>(Secs(Clock::now() - d.eof_at) * 1e6);
        if (us > counters.max_drain_us) counters.max_drain_us = us;
        d.draining = false;
        draining_--;
        shutdown(d.dst, SHUT_WR);
        d.shut = true;
      }
      if (Finished(c)) Close(c, false);
    }
  }

  static bool WriteAllNb(int fd, const char* p, size_t n) {
    while (n) {
      ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
        pollfd pf{fd, POLLOUT, 0};
        if (poll(&pf, 1, 5000) <= 0) return false;
        continue;
      }
      if (w < 0) return false;
      p += w;
      n -= static_cast<size_t>(w);
    }
    return true;
  }

  void Reset(Conn& c, const char* why = "") {
    counters.resets++;
    if (getenv("RELAY_MODES_DEBUG")) {
      int e = 0;
      socklen_t l = sizeof e;
      int en = errno;
      tcp_info ti[2]{};
      int e2 = 0;
      for (int k = 0; k < 2; k++) {
        socklen_t tl = sizeof ti[k];
        getsockopt(c.fd[k], IPPROTO_TCP, TCP_INFO, &ti[k], &tl);
      }
      getsockopt(c.fd[0], SOL_SOCKET, SO_ERROR, &e, &l);
      getsockopt(c.fd[1], SOL_SOCKET, SO_ERROR, &e2, &l);
      std::fprintf(stderr, "[%s] reset conn %lu: %s errno=%s soerr A=%d B=%d state A=%u B=%u "
                   "A rcvd=%llu B written=%lu B rcvd=%llu A written=%lu shut %d%d\n", Name(mode_),
                   (unsigned long)c.id, why, strerror(en), e, e2, ti[0].tcpi_state, ti[1].tcpi_state,
                   (unsigned long long)ti[0].tcpi_bytes_received, (unsigned long)Written(c.fd[1]),
                   (unsigned long long)ti[1].tcpi_bytes_received, (unsigned long)Written(c.fd[0]),
                   c.d[0].shut, c.d[1].shut);
    }
    Close(c, true);
  }
  void Close(Conn& c, bool reset) {
    if (c.dead) return;
    c.dead = true;
    for (int k = 0; k < 2; k++) {
      if (c.d[k].draining) draining_--;
      if (sk()) {
        bpf_map_delete_elem(bpf_->socks, &c.cookie[k]);
        bpf_map_delete_elem(bpf_->peers, &c.cookie[k]);
        bpf_map_delete_elem(bpf_->stats, &c.cookie[k]);
      }
      if (c.in_epoll[k]) epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd[k], nullptr);
      if (reset) ResetClose(c.fd[k]);
      else close(c.fd[k]);
      if (c.d[k].pipe_r >= 0) close(c.d[k].pipe_r);
      if (c.d[k].pipe_w >= 0) close(c.d[k].pipe_w);
    }
    if (last_a == c.fd[0]) last_a = last_b = -1;
    buffered = 0;
  }

  Mode mode_;
  uint16_t port_;
  Bpf* bpf_;
  int lfd_ = -1, ep_ = -1;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::map<uint64_t, std::unique_ptr<Conn>> conns_;
  uint64_t next_id_ = 1;
  int draining_ = 0;
};

// ---------- the server: each accepted connection runs the job the test queued for it ----------

class Server {
 public:
  using Job = std::function<void(int fd)>;
  void Start() {
    lfd_ = Listen(kServerPort);
    thread_ = std::thread([this] { Loop(); });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    close(lfd_);
    Join();
  }
  void Expect(Job j) {
    std::lock_guard<std::mutex> l(mu_);
    jobs_.push_back(std::move(j));
  }
  void Join() {
    std::vector<std::thread> w;
    {
      std::lock_guard<std::mutex> l(mu_);
      w.swap(workers_);
    }
    for (auto& t : w) t.join();
  }

 private:
  void Loop() {
    while (!stop_) {
      pollfd p{lfd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      int fd = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      SetNoDelay(fd);
      SetTimeouts(fd, 20);
      std::lock_guard<std::mutex> l(mu_);
      if (jobs_.empty()) {
        close(fd);
        continue;
      }
      Job j = std::move(jobs_.front());
      jobs_.pop_front();
      workers_.emplace_back([j = std::move(j), fd] { j(fd); });
    }
  }
  int lfd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::deque<Job> jobs_;
  std::vector<std::thread> workers_;
};

Server g_server;

// ---------- the tests ----------

struct Target {
  Mode mode;
  uint16_t port;
  Relay* relay;  // null for direct
};

std::vector<double> PingPong(const Target& t, int n) {
  g_server.Expect([](int fd) {
    char b[1024];
    while (ReadFull(fd, b, sizeof b) == 1 && WriteFull(fd, b, sizeof b)) {
    }
    close(fd);
  });
  std::vector<double> us;
  int fd = Connect(t.port);
  if (fd < 0) return us;
  SetTimeouts(fd, 5);
  char b[1024];
  std::memset(b, 'x', sizeof b);
  for (int i = 0; i < n; i++) {
    auto t0 = Clock::now();
    if (!WriteFull(fd, b, sizeof b) || ReadFull(fd, b, sizeof b) != 1) {
      std::fprintf(stderr, "%s: ping-pong failed at %d: %s\n", Name(t.mode), i, strerror(errno));
      us.clear();
      break;
    }
    us.push_back(Secs(Clock::now() - t0) * 1e6);
  }
  close(fd);
  g_server.Join();
  return us;
}

double Bulk(const Target& t, double seconds) {
  g_server.Expect([](int fd) {
    std::vector<char> b(256 << 10);
    uint64_t total = 0;
    for (;;) {
      ssize_t r = recv(fd, b.data(), b.size(), 0);
      if (r <= 0) break;
      total += static_cast<uint64_t>(r);
    }
    WriteFull(fd, &total, sizeof total);
    close(fd);
  });
  int fd = Connect(t.port);
  if (fd < 0) return 0;
  SetTimeouts(fd, 10);
  std::vector<char> b(256 << 10, 'y');
  auto t0 = Clock::now();
  auto end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  bool ok = true;
  while (Clock::now() < end && (ok = WriteFull(fd, b.data(), b.size()))) {
  }
  shutdown(fd, SHUT_WR);
  uint64_t total = 0;
  if (!ok || ReadFull(fd, &total, sizeof total) != 1) total = 0;
  double dt = Secs(Clock::now() - t0);
  if (getenv("RELAY_MODES_DEBUG"))
    std::fprintf(stderr, "[%s] bulk: %lu bytes in %.3fs, send ok %d\n", Name(t.mode),
                 (unsigned long)total, dt, ok);
  close(fd);
  g_server.Join();
  return static_cast<double>(total) * 8 / dt / 1e9;
}

// A checksummed transfer both ways at once, each ended by a half-close.
std::string Integrity(const Target& t, uint64_t bytes) {
  struct R {
    std::atomic<bool> ok{false};
    std::atomic<uint64_t> got{0};
  };
  auto srv = std::make_shared<R>();
  g_server.Expect([srv, bytes](int fd) {
    std::thread tx([fd, bytes] {
      if (SendPattern(fd, 2, bytes)) shutdown(fd, SHUT_WR);
    });
    Verifier v(1);
    int err = RecvPattern(fd, v);
    tx.join();
    srv->got = v.got;
    srv->ok = err == 0 && v.ok && v.got == bytes;
    close(fd);
  });
  int fd = Connect(t.port);
  if (fd < 0) return "connect failed";
  SetTimeouts(fd, 20);
  auto t0 = Clock::now();
  std::thread tx([fd, bytes] {
    if (SendPattern(fd, 1, bytes)) shutdown(fd, SHUT_WR);
  });
  Verifier v(2);
  int err = RecvPattern(fd, v);
  tx.join();
  double dt = Secs(Clock::now() - t0);
  close(fd);
  g_server.Join();
  bool cok = err == 0 && v.ok && v.got == bytes;
  char out[160];
  if (cok && srv->ok)
    std::snprintf(out, sizeof out, "ok (%.2fs)", dt);
  else
    std::snprintf(out, sizeof out, "FAIL c<-s %lu%s%s c->s %lu%s", (unsigned long)v.got,
                  v.ok ? "" : " corrupt", err ? " err" : "", (unsigned long)srv->got.load(),
                  srv->ok ? "" : " bad");
  return out;
}

// The client sends 4 MiB and shuts down its side; the server reads to EOF, replies 1 MiB, closes;
// the client reads the reply and EOF.
std::string HalfClose(const Target& t) {
  constexpr uint64_t kUp = 4 << 20, kDown = 1 << 20;
  struct R {
    std::atomic<uint64_t> got{0};
    std::atomic<bool> ok{false};
  };
  auto srv = std::make_shared<R>();
  g_server.Expect([srv](int fd) {
    SetTimeouts(fd, 6);
    Verifier v(3);
    int err = RecvPattern(fd, v);
    srv->got = v.got;
    srv->ok = err == 0 && v.ok;
    if (err == 0) SendPattern(fd, 4, kDown);
    close(fd);
  });
  int fd = Connect(t.port);
  if (fd < 0) return "connect failed";
  SetTimeouts(fd, 8);
  auto t0 = Clock::now();
  SendPattern(fd, 3, kUp);
  shutdown(fd, SHUT_WR);
  Verifier v(4);
  int err = RecvPattern(fd, v);
  double dt = Secs(Clock::now() - t0);
  close(fd);
  g_server.Join();
  char out[200];
  if (err == 0 && v.ok && v.got == kDown && srv->ok && srv->got == kUp)
    std::snprintf(out, sizeof out, "ok (%.0fms)", dt * 1e3);
  else
    std::snprintf(out, sizeof out, "FAIL srv got %lu/%lu%s; cli got %lu/%lu %s", (unsigned long)srv->got.load(),
                  (unsigned long)kUp, srv->ok ? "" : " (err/corrupt)", (unsigned long)v.got,
                  (unsigned long)kDown, err == 0 ? "EOF" : strerror(err));
  return out;
}

struct SlowResult {
  double accepted_mib = 0, visible_mib = 0, hidden_mib = 0, psock_mib = -1, sockstat_mib = 0,
         memavail_mib = 0;
  std::string intact;
};

// The server reads nothing for `stall` seconds while the client offers `bytes`; just before it
// starts reading: how much did the client get accepted, and where is it?
SlowResult Slow(const Target& t, uint64_t bytes, double stall, const Bpf& bpf) {
  struct R {
    std::atomic<int> fd{-1};
    std::atomic<uint64_t> got{0};
    std::atomic<bool> ok{false};
  };
  auto srv = std::make_shared<R>();
  g_server.Expect([srv, stall](int fd) {
    srv->fd = fd;
    std::this_thread::sleep_for(std::chrono::duration<double>(stall));
    Verifier v(5);
    int err = RecvPattern(fd, v);
    srv->got = v.got;
    srv->ok = err == 0 && v.ok;
    srv->fd = -1;
    close(fd);
  });
  SlowResult res;
  long mem0 = SockstatTcpMemPages(), avail0 = MemAvailableKb();
  int fd = Connect(t.port);
  if (fd < 0) {
    res.intact = "connect failed";
    return res;
  }
  SetTimeouts(fd, 20);
  SetNonBlock(fd, true);
  auto t0 = Clock::now();
  auto snap = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(stall - 0.3));
  std::vector<char> buf(256 << 10);
  uint64_t off = 0;
  while (off < bytes && Clock::now() < snap) {
    size_t n = std::min<uint64_t>(buf.size(), bytes - off);
    Fill(5, off, buf.data(), n);
    ssize_t w = send(fd, buf.data(), n, MSG_NOSIGNAL);
    if (w > 0) {
      off += static_cast<uint64_t>(w);
      continue;
    }
    if (w < 0 && errno != EAGAIN) break;
    pollfd p{fd, POLLOUT, 0};
    poll(&p, 1, 20);
  }
  std::this_thread::sleep_until(snap);  // let the path settle
  uint64_t visible = static_cast<uint64_t>(std::max(0L, Ioctl(fd, SIOCOUTQ)));
  int sfd = srv->fd;
  if (sfd >= 0) visible += static_cast<uint64_t>(std::max(0L, Ioctl(sfd, SIOCINQ)));
  if (t.relay) {
    int a = t.relay->last_a, b = t.relay->last_b;
    if (a >= 0) visible += static_cast<uint64_t>(std::max(0L, Ioctl(a, SIOCINQ)));
    if (b >= 0) visible += static_cast<uint64_t>(std::max(0L, Ioctl(b, SIOCOUTQ)));
    visible += t.relay->buffered;
    if (b >= 0 && bpf.skel && (t.mode == Mode::kSkSkb || t.mode == Mode::kSkSkbNaive)) {
      BpfCounters c = StatsOf(bpf, t.relay->last_cookie_a);
      res.psock_mib = (static_cast<double>(c.redirected_bytes) - static_cast<double>(Written(b) - t.relay->last_b_written0)) / 1048576.0;
    }
  }
  long mem1 = SockstatTcpMemPages(), avail1 = MemAvailableKb();
  res.accepted_mib = static_cast<double>(off) / 1048576.0;
  res.visible_mib = static_cast<double>(visible) / 1048576.0;
  res.hidden_mib = res.accepted_mib - res.visible_mib;
  res.sockstat_mib = static_cast<double>(mem1 - mem0) * 4096 / 1048576.0;
  res.memavail_mib = static_cast<double>(avail0 - avail1) / 1024.0;
  // The rest, then EOF; the server reads it all once it wakes.
  SetNonBlock(fd, false);
  bool ok = true;
  while (ok && off < bytes) {
    size_t n = std::min<uint64_t>(buf.size(), bytes - off);
    Fill(5, off, buf.data(), n);
    ok = WriteFull(fd, buf.data(), n);
    off += n;
  }
  shutdown(fd, SHUT_WR);
  char c;
  int r = static_cast<int>(recv(fd, &c, 1, 0));  // the server's close
  close(fd);
  g_server.Join();
  char out[120];
  if (ok && r == 0 && srv->ok && srv->got == bytes)
    std::snprintf(out, sizeof out, "ok");
  else
    std::snprintf(out, sizeof out, "FAIL %lu/%lu", (unsigned long)srv->got.load(), (unsigned long)bytes);
  res.intact = out;
  return res;
}

const char* Outcome(int r, int err) {
  if (r == 0) return "FIN";
  if (err == ECONNRESET) return "RST";
  if (err == EAGAIN) return "hang";
  return strerror(err);
}

// One side resets after a KiB went through; what does the other side see (within 3 s)?
std::string Rst(const Target& t, bool from_client) {
  struct R {
    std::atomic<bool> read{false};
    std::atomic<int> r{1}, err{0};
    std::atomic<double> ms{0};
  };
  auto srv = std::make_shared<R>();
  g_server.Expect([srv, from_client](int fd) {
    SetTimeouts(fd, 3);
    char b[1024];
    if (ReadFull(fd, b, sizeof b) != 1) {
      close(fd);
      return;
    }
    srv->read = true;
    if (!from_client) {
      ResetClose(fd);
      return;
    }
    auto t0 = Clock::now();
    ssize_t r;
    do r = recv(fd, b, sizeof b, 0);
    while (r > 0);
    srv->err = r < 0 ? errno : 0;
    srv->r = static_cast<int>(r);
    srv->ms = Secs(Clock::now() - t0) * 1e3;
    close(fd);
  });
  int fd = Connect(t.port);
  if (fd < 0) return "connect failed";
  SetTimeouts(fd, 3);
  char b[1024] = {};
  WriteFull(fd, b, sizeof b);
  for (int i = 0; i < 200 && !srv->read; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::string out;
  if (from_client) {
    ResetClose(fd);
    g_server.Join();
    out = Outcome(srv->r, srv->err);
  } else {
    auto t0 = Clock::now();
    ssize_t r = recv(fd, b, sizeof b, 0);
    int err = r < 0 ? errno : 0;
    out = Outcome(static_cast<int>(r), err);
    close(fd);
    g_server.Join();
    (void)t0;
  }
  return out;
}

// ---------- setup ----------

void LoopbackUp() {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) Die("SIOCGIFFLAGS lo: %s", strerror(errno));
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) Die("SIOCSIFFLAGS lo: %s", strerror(errno));
  close(s);
}

void LoadBpf(Bpf& b) {
  b.skel = shunt_relay_modes__open_and_load();
  if (!b.skel) {
    b.error = std::string("load: ") + strerror(errno);
    return;
  }
  b.socks = bpf_map__fd(b.skel->maps.bench_socks);
  b.peers = bpf_map__fd(b.skel->maps.bench_peer);
  b.stats = bpf_map__fd(b.skel->maps.bench_stats);
  int prog = bpf_program__fd(b.skel->progs.bench_verdict);
  if (bpf_prog_attach(prog, b.socks, BPF_SK_SKB_STREAM_VERDICT, 0) != 0) {
    b.error = std::string("attach: ") + strerror(errno);
    shunt_relay_modes__destroy(b.skel);
    b.skel = nullptr;
  }
}

void OnAlarm(int) {
  const char m[] = "relay-modes: watchdog: over its time budget, exiting\n";
  ssize_t r = write(2, m, sizeof m - 1);
  (void)r;
  _exit(2);
}
void OnSignal(int) { _exit(3); }  // the namespace and the BPF objects go with the process

double Pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}
double Median(std::vector<double> v) { return Pct(std::move(v), 0.5); }

long Flag(int argc, char** argv, const char* name, long def) {
  std::string p = std::string("--") + name + "=";
  for (int i = 1; i < argc; i++)
    if (std::strncmp(argv[i], p.c_str(), p.size()) == 0) return std::atol(argv[i] + p.size());
  return def;
}
double FlagD(int argc, char** argv, const char* name, double def) {
  std::string p = std::string("--") + name + "=";
  for (int i = 1; i < argc; i++)
    if (std::strncmp(argv[i], p.c_str(), p.size()) == 0) return std::atof(argv[i] + p.size());
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; i++)
    if (!std::strcmp(argv[i], "--help")) {
      std::printf("usage: %s [--rounds=5] [--exchanges=20000] [--bulk-seconds=1] "
                  "[--integrity-mib=256] [--slow-mib=64] [--stall-seconds=2]\n", argv[0]);
      return 0;
    }
  const int rounds = static_cast<int>(Flag(argc, argv, "rounds", 5));
  const int exchanges = static_cast<int>(Flag(argc, argv, "exchanges", 20000));
  const double bulk_s = FlagD(argc, argv, "bulk-seconds", 1.0);
  const uint64_t integ = static_cast<uint64_t>(Flag(argc, argv, "integrity-mib", 256)) << 20;
  const uint64_t slow = static_cast<uint64_t>(Flag(argc, argv, "slow-mib", 64)) << 20;
  const double stall = FlagD(argc, argv, "stall-seconds", 2.0);

  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, OnAlarm);
  signal(SIGINT, OnSignal);
  signal(SIGTERM, OnSignal);
  alarm(115);
  if (unshare(CLONE_NEWNET) != 0) Die("unshare(CLONE_NEWNET): %s (needs root)", strerror(errno));
  LoopbackUp();
  libbpf_set_print(nullptr);

  Bpf bpf;
  LoadBpf(bpf);
  g_server.Start();
  std::vector<std::unique_ptr<Relay>> relays;
  relays.push_back(std::make_unique<Relay>(Mode::kSplice, 7001, &bpf));
  relays.push_back(std::make_unique<Relay>(Mode::kCopy, 7002, &bpf));
  if (bpf.skel) {
    relays.push_back(std::make_unique<Relay>(Mode::kSkSkb, 7003, &bpf));
    relays.push_back(std::make_unique<Relay>(Mode::kSkSkbNaive, 7004, &bpf));
  }
  for (auto& r : relays) r->Start();
  std::vector<Target> targets{{Mode::kDirect, kServerPort, nullptr}};
  Target naive{Mode::kSkSkbNaive, 0, nullptr};
  for (auto& r : relays) {
    if (r->mode() == Mode::kSkSkbNaive) naive = {r->mode(), r->port(), r.get()};
    else targets.push_back({r->mode(), r->port(), r.get()});
  }
  double load[3] = {0, 0, 0};
  getloadavg(load, 3);
  std::printf("relay-modes: kernel loopback in a private netns, %ld CPUs, load %.2f; %d rounds, "
              "%d x 1 KiB exchanges, %.1fs bulk per round%s%s\n",
              sysconf(_SC_NPROCESSORS_ONLN), load[0], rounds, exchanges, bulk_s,
              bpf.skel ? "" : "; sk_skb unavailable: ", bpf.error.c_str());
  std::fflush(stdout);

  const size_t n = targets.size();
  std::vector<std::vector<double>> p50(n), p99(n), gbps(n);
  for (int r = 0; r < rounds; r++) {
    for (size_t j = 0; j < n; j++) {
      size_t i = (j + static_cast<size_t>(r)) % n;  // a different order each round
      auto us = PingPong(targets[i], exchanges / rounds);
      if (!us.empty()) {
        p50[i].push_back(Pct(us, 0.5));
        p99[i].push_back(Pct(us, 0.99));
      }
    }
    for (size_t j = 0; j < n; j++) {
      size_t i = (j + static_cast<size_t>(r)) % n;
      gbps[i].push_back(Bulk(targets[i], bulk_s));
    }
  }

  std::printf("\n%-8s %9s %9s %8s %8s %9s %8s %8s  %s\n", "mode", "p50 us", "p99 us", "p50/dir",
              "p50/spl", "Gbit/s", "/direct", "/splice", "Gbit/s min-max, p99 us max");
  const double d50 = Median(p50[0]), dg = Median(gbps[0]);
  const double s50 = n > 1 ? Median(p50[1]) : 0, sg = n > 1 ? Median(gbps[1]) : 0;
  for (size_t i = 0; i < n; i++) {
    double m50 = Median(p50[i]), m99 = Median(p99[i]), g = Median(gbps[i]);
    std::printf("%-8s %9.1f %9.1f %8.2f %8.2f %9.2f %8.2f %8.2f  %.2f-%.2f, %.0f\n", Name(targets[i].mode),
                m50, m99, d50 ? m50 / d50 : 0, s50 ? m50 / s50 : 0, g, dg ? g / dg : 0, sg ? g / sg : 0,
                Pct(gbps[i], 0), Pct(gbps[i], 1), Pct(p99[i], 1));
  }
  std::fflush(stdout);

  std::printf("\n%-12s %-16s %-14s %s | %-9s %-9s\n", "mode", "256MiB both ways", "half-close",
              "slow server: accepted / in socket queues / elsewhere / psock queue / sockstat / MemAvail (MiB), intact",
              "RST c->s", "RST s->c");
  std::vector<Target> checks = targets;
  if (naive.relay) checks.push_back(naive);
  for (const Target& t : checks) {
    std::string integ_r = Integrity(t, integ);
    std::string half = HalfClose(t);
    std::string rc = "-", rs = "-";
    char slow_s[200] = "-";
    if (t.mode != Mode::kSkSkbNaive) {
      SlowResult s = Slow(t, slow, stall, bpf);
      char ps[32] = "-";
      if (s.psock_mib >= 0) std::snprintf(ps, sizeof ps, "%.1f", s.psock_mib);
      std::snprintf(slow_s, sizeof slow_s, "%6.1f / %6.1f / %6.1f / %5s / %+6.1f / %+6.1f, %s",
                    s.accepted_mib, s.visible_mib, s.hidden_mib, ps, s.sockstat_mib, s.memavail_mib,
                    s.intact.c_str());
      rc = Rst(t, true);
      rs = Rst(t, false);
    }
    std::printf("%-12s %-16s %-14s %s | %-9s %-9s\n", Name(t.mode), integ_r.c_str(), half.c_str(),
                slow_s, rc.c_str(), rs.c_str());
    std::fflush(stdout);
  }
  std::printf("\nrelay counters:\n");
  for (auto& r : relays) {
    const RelayCounters& c = r->counters;
    std::printf("  %-12s conns %lu resets %lu", Name(r->mode()), (unsigned long)c.conns.load(),
                (unsigned long)c.resets.load());
    if (r->mode() == Mode::kSkSkb || r->mode() == Mode::kSkSkbNaive)
      std::printf("; EOF seen as recv()=0: %lu, as RDHUP with recv()=EAGAIN: %lu; bytes the relay "
                  "moved itself: %lu; FINs held until drained: %lu (timeouts %lu, max %.1f ms); resets that "
                  "read as EOF: %lu",
                  (unsigned long)c.eof_recv0.load(), (unsigned long)c.eof_rdhup_eagain.load(),
                  (unsigned long)c.user_bytes.load(), (unsigned long)c.drain_waits.load(),
                  (unsigned long)c.drain_timeouts.load(), static_cast<double>(c.max_drain_us.load()) / 1e3,
                  (unsigned long)c.rst_as_eof.load());
    std::printf("\n");
  }
  for (auto& r : relays) r->Stop();
  g_server.Stop();
  if (bpf.skel) {
    bpf_prog_detach2(bpf_program__fd(bpf.skel->progs.bench_verdict), bpf.socks,
                     BPF_SK_SKB_STREAM_VERDICT);
    shunt_relay_modes__destroy(bpf.skel);
  }
  return 0;
}
