// shunt-testpeer: the traffic tool of the test bed and the benchmarks.
//
//   shunt-testpeer server --port=P [--bind=::] --mode=verify|sink|echo [--conns=N]
//                         [--ready-file=PATH] [--expect-seed=S (verify: reject other seeds)]
//                         [--read-delay-us=D (verify: pause after each read, a slow reader)]
//   shunt-testpeer verify --to=HOST:PORT --bytes=N --seed=S [--conns=C] [--concurrent]
//                         [--chunk=65536] [--bind=SRC_ADDR[:PORT] or [V6]:PORT]
//   shunt-testpeer bulk --to=HOST:PORT --seconds=T [--chunk=131072]
//   shunt-testpeer pingpong --to=HOST:PORT [--size=1024] --count=N [--warmup=W]
//   shunt-testpeer hold --to=HOST:PORT --bytes=N --seed=S --rate-mbps=R [--chunk=16384]
//   shunt-testpeer server ... --mode=ident --ident=NAME   (sends "NAME\n" and closes)
//   shunt-testpeer probe --to=HOST:PORT [--conns=1]: connects N times one after the other; counts
//                         outcomes by errno name, the getpeername() address and the server's ident
//                         line (ident servers); exits 0 whatever connect() returned
//   common: [--timeout=30] seconds for every socket send/receive/connect
//
// Every mode prints exactly one JSON object line on stdout when it ends and exits 0 on success.
// IPv6 addresses are written [addr]:port. Sizes take K/M/G suffixes (powers of 1024).
//
// verify protocol: the client sends a 16-byte header (u64 seed, u64 length, little endian), waits
// for the server's "GO\n" (a request/response exchange, as most protocols start with), and sends
// `length` bytes of the pattern stream (xorshift64* seeded by seed, one 64-bit word at a time,
// little endian). The server checks every byte and answers "OK <bytes> <fnv1a64 hex>\n" or
// "BAD <offset>\n", then closes. Connection i of a multi-connection run uses seed S + i.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "nlohmann/json.hpp"

namespace {

using json = nlohmann::json;

int g_timeout_s = 30;
int g_read_delay_us = 0;  // server --read-delay-us

// Prints the one result line and exits. _exit: connection threads may still be running.
[[noreturn]] void Finish(json result, int code) {
  std::string line;
  try {
    line = result.dump() + "\n";
  } catch (const std::exception& e) {
    line = "{\"error\":\"unprintable result\"}\n";
    code = code == 0 ? 1 : code;
  }
  fwrite(line.data(), 1, line.size(), stdout);
  fflush(stdout);
  fflush(stderr);
  _exit(code);
}

[[noreturn]] void Fail(const std::string& error, json partial = json::object()) {
  fprintf(stderr, "shunt-testpeer: %s\n", error.c_str());
  partial["error"] = error;
  Finish(std::move(partial), 1);
}

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

double NowSeconds() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int64_t NowNanos() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// ---------------------------------------------------------------------------------------------
// Flags: --key=value or --key (boolean).

class Flags {
 public:
  bool Parse(int argc, char** argv, int first, std::string* error) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) {
        *error = "unexpected argument " + a;
        return false;
      }
      size_t eq = a.find('=');
      if (eq == std::string::npos) {
        kv_[a.substr(2)] = "";
      } else {
        kv_[a.substr(2, eq - 2)] = a.substr(eq + 1);
      }
    }
    return true;
  }
  bool Has(const std::string& k) const { return kv_.count(k) > 0; }
  std::string Str(const std::string& k, const std::string& def = "") {
    used_.push_back(k);
    auto it = kv_.find(k);
    return it == kv_.end() ? def : it->second;
  }
  bool Bool(const std::string& k) {
    used_.push_back(k);
    auto it = kv_.find(k);
    return it != kv_.end() && (it->second.empty() || it->second == "1" || it->second == "true");
  }
  // Unsigned integer with an optional K/M/G suffix (powers of 1024).
  uint64_t Size(const std::string& k, std::optional<uint64_t> def) {
    std::string v = Str(k);
    if (v.empty()) {
      if (!def) Fail("--" + k + " is required");
      return *def;
    }
    uint64_t mult = 1;
    switch (v.back()) {
      case 'K':
      case 'k':
        mult = 1ULL << 10;
        break;
      case 'M':
      case 'm':
        mult = 1ULL << 20;
        break;
      case 'G':
      case 'g':
        mult = 1ULL << 30;
        break;
      default:
        break;
    }
    if (mult != 1) v.pop_back();
    char* end = nullptr;
    errno = 0;
    unsigned long long n = strtoull(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno != 0 || v[0] == '-') Fail("bad value for --" + k);
    return n * mult;
  }
  double Double(const std::string& k, std::optional<double> def) {
    std::string v = Str(k);
    if (v.empty()) {
      if (!def) Fail("--" + k + " is required");
      return *def;
    }
    char* end = nullptr;
    double d = strtod(v.c_str(), &end);
    if (*end != '\0' || !std::isfinite(d)) Fail("bad value for --" + k);
    return d;
  }
  // Fails on a flag that the mode never read (a typo must not silently change a test).
  void CheckAllUsed() const {
    for (const auto& [k, v] : kv_) {
      if (std::find(used_.begin(), used_.end(), k) == used_.end()) Fail("unknown flag --" + k);
    }
  }

 private:
  std::map<std::string, std::string> kv_;
  std::vector<std::string> used_;
};

// ---------------------------------------------------------------------------------------------
// The pattern stream and the checksum.

class Pattern {
 public:
  explicit Pattern(uint64_t seed) : x_(seed != 0 ? seed : 0x9E3779B97F4A7C15ULL) {}

  void Fill(uint8_t* p, size_t n) {
    while (n > 0 && pending_off_ < 8) {
      *p++ = pending_[pending_off_++];
      --n;
    }
    while (n >= 8) {
      Store(p, Next());
      p += 8;
      n -= 8;
    }
    if (n > 0) {
      Store(pending_, Next());
      std::memcpy(p, pending_, n);
      pending_off_ = n;
    }
  }

 private:
  uint64_t Next() {
    x_ ^= x_ >> 12;
    x_ ^= x_ << 25;
    x_ ^= x_ >> 27;
    return x_ * 0x2545F4914F6CDD1DULL;
  }
  static void Store(uint8_t* p, uint64_t w) {
    if constexpr (std::endian::native == std::endian::little) {
      std::memcpy(p, &w, 8);
    } else {
      for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(w >> (8 * i));
    }
  }

  uint64_t x_;
  uint8_t pending_[8] = {};
  size_t pending_off_ = 8;
};

struct Fnv1a64 {
  uint64_t h = 0xcbf29ce484222325ULL;
  void Update(const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= 0x100000001b3ULL;
    }
  }
};

void PutU64Le(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t GetU64Le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Sockets. Every socket is non-blocking and waits in poll() for at most --timeout, as
// event-loop programs do, so a broken peer fails the run. (The fast path splices only sockets
// whose reads are known to be safe to splice: non-blocking ones; see docs/fastpath.md.)

void SetNonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Waits until `fd` is ready for `events`; false with `error` set after --timeout.
bool WaitReady(int fd, short events, const char* what, std::string* error) {
  struct pollfd p = {fd, events, 0};
  for (;;) {
    int r = poll(&p, 1, g_timeout_s * 1000);
    if (r > 0) return true;
    if (r < 0 && errno == EINTR) continue;
    *error = r == 0 ? std::string(what) + ": timed out" : Errno("poll");
    return false;
  }
}

bool SendAll(int fd, const void* data, size_t n, std::string* error) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) {
      if (!WaitReady(fd, POLLOUT, "send", error)) return false;
      continue;
    }
    if (r < 0) {
      *error = Errno("send");
      return false;
    }
    p += r;
    n -= r;
  }
  return true;
}

// Receives up to n bytes: >0 bytes read, 0 on EOF, -1 on error (`error` set).
ssize_t RecvSome(int fd, void* data, size_t n, std::string* error) {
  while (true) {
    ssize_t r = recv(fd, data, n, 0);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      if (!WaitReady(fd, POLLIN, "recv", error)) return -1;
      continue;
    }
    *error = Errno("recv");
    return -1;
  }
}

bool RecvAll(int fd, void* data, size_t n, std::string* error) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = RecvSome(fd, p, n, error);
    if (r < 0) return false;
    if (r == 0) {
      *error = "connection closed early";
      return false;
    }
    p += r;
    n -= r;
  }
  return true;
}

// Reads one reply line (without the newline); false on error or EOF before any byte.
bool ReadLine(int fd, std::string* line, std::string* error) {
  line->clear();
  char c;
  while (line->size() < 256) {
    ssize_t r = RecvSome(fd, &c, 1, error);
    if (r < 0) return false;
    if (r == 0) {
      if (line->empty()) *error = "connection closed without a reply";
      return !line->empty();
    }
    if (c == '\n') return true;
    line->push_back(c);
  }
  *error = "reply line too long";
  return false;
}

struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string text;
};

// "host:port" or "[v6]:port".
bool ParseEndpoint(const std::string& s, Endpoint* ep, std::string* error) {
  std::string host, port;
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      *error = "bad address " + s + " (want [v6]:port)";
      return false;
    }
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    size_t colon = s.rfind(':');
    if (colon == std::string::npos || s.find(':') != colon) {
      *error = "bad address " + s + " (want host:port or [v6]:port)";
      return false;
    }
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  struct addrinfo hints {};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  struct addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    *error = "resolve " + s + ": " + gai_strerror(rc);
    return false;
  }
  std::memcpy(&ep->addr, res->ai_addr, res->ai_addrlen);
  ep->len = res->ai_addrlen;
  ep->text = s;
  freeaddrinfo(res);
  return true;
}

// A numeric address (no port) for bind(); `port` in host order.
bool ParseBindAddress(const std::string& s, uint16_t port, Endpoint* ep, std::string* error) {
  std::string a = s;
  if (a.size() >= 2 && a.front() == '[' && a.back() == ']') a = a.substr(1, a.size() - 2);
  ep->addr = {};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ep->addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ep->addr);
  if (inet_pton(AF_INET, a.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    ep->len = sizeof(*v4);
  } else if (inet_pton(AF_INET6, a.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    ep->len = sizeof(*v6);
  } else {
    *error = "bad bind address " + s;
    return false;
  }
  ep->text = s;
  return true;
}

struct ClientConfig {
  Endpoint to;
  std::optional<Endpoint> bind;
};

// connect() on a non-blocking socket, bounded by --timeout. Returns 0 or -1 with errno set
// (ETIMEDOUT when the handshake did not finish).
int ConnectFd(int fd, const sockaddr* addr, socklen_t len) {
  int r;
  do {
    r = connect(fd, addr, len);
  } while (r != 0 && errno == EINTR);
  if (r == 0 || errno != EINPROGRESS) return r;
  struct pollfd p = {fd, POLLOUT, 0};
  int n;
  do {
    n = poll(&p, 1, g_timeout_s * 1000);
  } while (n < 0 && errno == EINTR);
  if (n == 0) {
    errno = ETIMEDOUT;
    return -1;
  }
  int err = 0;
  socklen_t el = sizeof(err);
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
  errno = err;
  return err == 0 ? 0 : -1;
}

// A connected socket, or -1 with `error` set.
int Connect(const ClientConfig& cfg, std::string* error) {
  int fd = socket(cfg.to.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = Errno("socket");
    return -1;
  }
  SetNonblocking(fd);
  if (cfg.bind) {
    if (cfg.bind->addr.ss_family != cfg.to.addr.ss_family) {
      *error = "--bind family differs from --to family";
      close(fd);
      return -1;
    }
    // A fixed source port must be reusable right after a previous run's TIME_WAIT.
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<const sockaddr*>(&cfg.bind->addr), cfg.bind->len) != 0) {
      *error = Errno("bind " + cfg.bind->text);
      close(fd);
      return -1;
    }
  }
  if (ConnectFd(fd, reinterpret_cast<const sockaddr*>(&cfg.to.addr), cfg.to.len) != 0) {
    *error = errno == ETIMEDOUT ? "connect " + cfg.to.text + ": timed out"
                                : Errno("connect " + cfg.to.text);
    close(fd);
    return -1;
  }
  return fd;
}

// A client's --bind: ADDR, ADDR:PORT or [V6]:PORT (port 0 when absent).
bool ParseClientBind(const std::string& s, Endpoint* ep, std::string* error) {
  std::string addr = s, port = "0";
  const size_t close = s.find("]:");
  if (!s.empty() && s[0] == '[' && close != std::string::npos) {
    addr = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else if (std::count(s.begin(), s.end(), ':') == 1) {
    addr = s.substr(0, s.find(':'));
    port = s.substr(s.find(':') + 1);
  }
  char* end = nullptr;
  const unsigned long p = strtoul(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || p > 65535) {
    *error = "bad --bind " + s;
    return false;
  }
  return ParseBindAddress(addr, static_cast<uint16_t>(p), ep, error);
}

ClientConfig ReadClientConfig(Flags& flags) {
  ClientConfig cfg;
  std::string error;
  std::string to = flags.Str("to");
  if (to.empty()) Fail("--to is required");
  if (!ParseEndpoint(to, &cfg.to, &error)) Fail(error);
  std::string bind = flags.Str("bind");
  if (!bind.empty()) {
    Endpoint ep;
    if (!ParseClientBind(bind, &ep, &error)) Fail(error);
    cfg.bind = ep;
  }
  return cfg;
}

void RaiseFdLimit() {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// ---------------------------------------------------------------------------------------------
// server

enum class ServerMode { kVerify, kSink, kEcho, kIdent };

struct ServerStats {
  std::atomic<uint64_t> connections{0}, done{0}, ok{0}, bad{0}, bytes{0};
};

struct ConnArgs {
  int fd;
  ServerMode mode;
  ServerStats* stats;
  std::optional<uint64_t> expect_seed;  // verify: any other seed is a failure
  std::string ident;                    // ident: the line sent to every client
};

constexpr size_t kServerBuf = 64 * 1024;

bool ServeVerify(int fd, ServerStats* stats, std::optional<uint64_t> expect_seed,
                 std::string* error) {
  uint8_t header[16];
  if (!RecvAll(fd, header, sizeof(header), error)) return false;
  const uint64_t seed = GetU64Le(header), length = GetU64Le(header + 8);
  if (expect_seed && seed != *expect_seed) {
    // A stream meant for another server (e.g. another pod's loopback): reject it outright.
    *error = "seed " + std::to_string(seed) + ", expected " + std::to_string(*expect_seed);
    std::string ignored;
    SendAll(fd, "BAD 0\n", 6, &ignored);
    return false;
  }
  if (!SendAll(fd, "GO\n", 3, error)) return false;
  const size_t cap =
      static_cast<size_t>(std::min<uint64_t>(std::max<uint64_t>(length, 1), kServerBuf));
  std::vector<uint8_t> buf(cap), expected(cap);
  Pattern pattern(seed);
  Fnv1a64 fnv;
  uint64_t offset = 0;
  std::optional<uint64_t> bad_at;
  while (offset < length) {
    ssize_t n = RecvSome(fd, buf.data(), std::min<uint64_t>(cap, length - offset), error);
    if (n <= 0) break;
    stats->bytes += n;
    if (g_read_delay_us > 0) usleep(g_read_delay_us);
    if (!bad_at) {
      pattern.Fill(expected.data(), n);
      if (std::memcmp(buf.data(), expected.data(), n) != 0) {
        size_t i = 0;
        while (buf[i] == expected[i]) ++i;
        bad_at = offset + i;
      } else {
        fnv.Update(buf.data(), n);
      }
    }
    offset += n;
  }
  if (offset < length && !bad_at) bad_at = offset;
  char reply[96];
  if (bad_at) {
    snprintf(reply, sizeof(reply), "BAD %" PRIu64 "\n", *bad_at);
  } else {
    snprintf(reply, sizeof(reply), "OK %" PRIu64 " %016" PRIx64 "\n", offset, fnv.h);
  }
  std::string send_error;
  SendAll(fd, reply, strlen(reply), &send_error);
  if (bad_at) {
    if (error->empty()) *error = "pattern mismatch at offset " + std::to_string(*bad_at);
    return false;
  }
  return true;
}

bool ServeSink(int fd, ServerStats* stats, std::string* error) {
  std::vector<uint8_t> buf(kServerBuf);
  uint64_t total = 0;
  while (true) {
    ssize_t n = RecvSome(fd, buf.data(), buf.size(), error);
    if (n < 0) return false;
    if (n == 0) break;
    total += n;
    stats->bytes += n;
  }
  std::string reply = "OK " + std::to_string(total) + "\n";
  return SendAll(fd, reply.data(), reply.size(), error);
}

bool ServeEcho(int fd, ServerStats* stats, std::string* error) {
  std::vector<uint8_t> buf(kServerBuf);
  while (true) {
    ssize_t n = RecvSome(fd, buf.data(), buf.size(), error);
    if (n < 0) return false;
    if (n == 0) break;
    stats->bytes += n;
    if (!SendAll(fd, buf.data(), n, error)) return false;
  }
  shutdown(fd, SHUT_WR);
  return true;
}

void* ServeConnection(void* arg) {
  std::unique_ptr<ConnArgs> c(static_cast<ConnArgs*>(arg));
  std::string error;
  bool ok = false;
  switch (c->mode) {
    case ServerMode::kVerify:
      ok = ServeVerify(c->fd, c->stats, c->expect_seed, &error);
      break;
    case ServerMode::kSink:
      ok = ServeSink(c->fd, c->stats, &error);
      break;
    case ServerMode::kEcho:
      ok = ServeEcho(c->fd, c->stats, &error);
      break;
    case ServerMode::kIdent: {
      const std::string line = c->ident + "\n";
      ok = SendAll(c->fd, line.data(), line.size(), &error);
      break;
    }
  }
  close(c->fd);
  if (ok) {
    c->stats->ok++;
  } else {
    c->stats->bad++;
    fprintf(stderr, "shunt-testpeer server: connection failed: %s\n", error.c_str());
  }
  c->stats->done++;
  return nullptr;
}

[[noreturn]] void RunServer(Flags& flags) {
  const uint64_t port = flags.Size("port", std::nullopt);
  if (port > 65535) Fail("bad --port");
  const std::string bind_addr = flags.Str("bind", "::");
  const std::string mode_name = flags.Str("mode", "verify");
  ServerMode mode;
  if (mode_name == "verify") {
    mode = ServerMode::kVerify;
  } else if (mode_name == "sink") {
    mode = ServerMode::kSink;
  } else if (mode_name == "echo") {
    mode = ServerMode::kEcho;
  } else if (mode_name == "ident") {
    mode = ServerMode::kIdent;
  } else {
    Fail("bad --mode " + mode_name + " (verify|sink|echo|ident)");
  }
  const std::string ident = flags.Str("ident");
  const uint64_t max_conns = flags.Size("conns", 0);  // 0: unlimited
  const std::string ready_file = flags.Str("ready-file");
  std::optional<uint64_t> expect_seed;
  if (flags.Has("expect-seed")) expect_seed = flags.Size("expect-seed", std::nullopt);
  g_read_delay_us = static_cast<int>(flags.Size("read-delay-us", 0));
  flags.CheckAllUsed();
  if (expect_seed && mode != ServerMode::kVerify) Fail("--expect-seed needs --mode=verify");

  // SIGINT/SIGTERM end the server with its summary: block them everywhere, read a signalfd.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
  if (sfd < 0) Fail(Errno("signalfd"));

  Endpoint ep;
  std::string error;
  if (!ParseBindAddress(bind_addr, static_cast<uint16_t>(port), &ep, &error)) Fail(error);
  int lfd = socket(ep.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) Fail(Errno("socket"));
  int one = 1, zero = 0;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (ep.addr.ss_family == AF_INET6) {
    // Dual stack on "::": IPv4 clients arrive as v4-mapped addresses.
    setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
  }
  if (bind(lfd, reinterpret_cast<const sockaddr*>(&ep.addr), ep.len) != 0) {
    Fail(Errno("bind " + bind_addr + " port " + std::to_string(port)));
  }
  SetNonblocking(lfd);  // before listen(), as event loops do
  if (listen(lfd, 4096) != 0) Fail(Errno("listen"));
  if (!ready_file.empty()) {
    int rfd = open(ready_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (rfd < 0) Fail(Errno("create " + ready_file));
    close(rfd);
  }

  ServerStats stats;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  bool interrupted = false;
  while (true) {
    if (max_conns != 0 && stats.done.load() >= max_conns) break;
    const bool accepting = max_conns == 0 || stats.connections.load() < max_conns;
    struct pollfd pfds[2] = {{sfd, POLLIN, 0}, {accepting ? lfd : -1, POLLIN, 0}};
    int n = poll(pfds, 2, 50);
    if (n < 0 && errno != EINTR) Fail(Errno("poll"));
    if (n <= 0) continue;
    if (pfds[0].revents != 0) {
      interrupted = true;
      break;
    }
    if (pfds[1].revents == 0) continue;
    int cfd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (cfd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) continue;
      // EMFILE and friends: drop this one, keep serving.
      fprintf(stderr, "shunt-testpeer server: accept: %s\n", std::strerror(errno));
      usleep(10000);
      continue;
    }

    stats.connections++;
    auto* args = new ConnArgs{cfd, mode, &stats, expect_seed, ident};
    pthread_t tid;
    if (pthread_create(&tid, &attr, &ServeConnection, args) != 0) {
      close(cfd);
      delete args;
      stats.bad++;
      stats.done++;
    }
  }
  close(lfd);
  json result = {{"mode", mode_name},
                 {"connections", stats.connections.load()},
                 {"ok", stats.ok.load()},
                 {"bad", stats.bad.load()},
                 {"bytes", stats.bytes.load()}};
  if (interrupted) result["interrupted"] = true;
  Finish(result, stats.bad.load() == 0 ? 0 : 1);
}

// ---------------------------------------------------------------------------------------------
// verify / hold

struct VerifyConn {
  int fd = -1;
  uint64_t seed = 0;
  bool failed = false;
  std::string error;
};

// Sends the header and the pattern stream on `c`; paced to `rate_bps` bits/s when > 0.
bool SendPattern(VerifyConn& c, uint64_t length, std::vector<uint8_t>& buf, double rate_bps,
                 uint64_t* sent_total) {
  uint8_t header[16];
  PutU64Le(header, c.seed);
  PutU64Le(header + 8, length);
  if (!SendAll(c.fd, header, sizeof(header), &c.error)) return false;
  std::string go;
  if (!ReadLine(c.fd, &go, &c.error)) return false;
  if (go != "GO") {
    c.error = "server answered \"" + go + "\" to the header";
    return false;
  }
  Pattern pattern(c.seed);
  const double start = NowSeconds();
  uint64_t sent = 0;
  while (sent < length) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), length - sent));
    pattern.Fill(buf.data(), n);
    if (!SendAll(c.fd, buf.data(), n, &c.error)) return false;
    sent += n;
    *sent_total += n;
    if (rate_bps > 0) {
      const double ahead = sent * 8.0 / rate_bps - (NowSeconds() - start);
      if (ahead > 0) usleep(static_cast<useconds_t>(std::min(ahead, 10.0) * 1e6));
    }
  }
  return true;
}

bool CheckReply(VerifyConn& c, uint64_t length) {
  std::string line;
  if (!ReadLine(c.fd, &line, &c.error)) return false;
  const std::string want = "OK " + std::to_string(length) + " ";
  if (line.rfind(want, 0) != 0) {
    c.error = "server replied \"" + line + "\"";
    return false;
  }
  return true;
}

[[noreturn]] void RunVerify(Flags& flags, bool hold) {
  ClientConfig cfg = ReadClientConfig(flags);
  const uint64_t length = flags.Size("bytes", std::nullopt);
  const uint64_t seed = flags.Size("seed", std::nullopt);
  const uint64_t conns = hold ? 1 : flags.Size("conns", 1);
  const bool concurrent = !hold && flags.Bool("concurrent");
  const uint64_t chunk = flags.Size("chunk", hold ? 16384 : 65536);
  const double rate_bps = hold ? flags.Double("rate-mbps", std::nullopt) * 1e6 : 0;
  flags.CheckAllUsed();
  if (conns == 0) Fail("--conns must be > 0");
  if (chunk == 0 || chunk > (64ULL << 20)) Fail("--chunk must be in (0, 64M]");
  if (hold && rate_bps <= 0) Fail("--rate-mbps must be > 0");

  std::vector<uint8_t> buf(chunk);
  std::vector<VerifyConn> cs(conns);
  for (uint64_t i = 0; i < conns; ++i) cs[i].seed = seed + i;
  uint64_t sent = 0;
  const double start = NowSeconds();
  auto finish_conn = [](VerifyConn& c, bool ok) {
    if (!ok) c.failed = true;
    if (c.fd >= 0) close(c.fd);
    c.fd = -1;
  };
  if (concurrent) {
    for (auto& c : cs) {
      c.fd = Connect(cfg, &c.error);
      if (c.fd < 0) c.failed = true;
    }
    for (auto& c : cs) {
      if (!c.failed && !SendPattern(c, length, buf, 0, &sent)) finish_conn(c, false);
    }
    for (auto& c : cs) {
      if (!c.failed) finish_conn(c, CheckReply(c, length));
    }
  } else {
    for (auto& c : cs) {
      c.fd = Connect(cfg, &c.error);
      if (c.fd < 0) {
        c.failed = true;
        continue;
      }
      finish_conn(c, SendPattern(c, length, buf, rate_bps, &sent) && CheckReply(c, length));
    }
  }
  const double seconds = NowSeconds() - start;
  uint64_t failed = 0;
  std::string first_error;
  for (const auto& c : cs) {
    if (!c.failed) continue;
    if (failed < 5) fprintf(stderr, "shunt-testpeer: connection failed: %s\n", c.error.c_str());
    if (first_error.empty()) first_error = c.error;
    ++failed;
  }
  json result = {{"connections", conns},
                 {"ok", conns - failed},
                 {"failed", failed},
                 {"bytes", sent},
                 {"seconds", seconds}};
  if (!first_error.empty()) result["error"] = first_error;
  Finish(result, failed == 0 ? 0 : 1);
}

// ---------------------------------------------------------------------------------------------
// bulk

[[noreturn]] void RunBulk(Flags& flags) {
  ClientConfig cfg = ReadClientConfig(flags);
  const double duration = flags.Double("seconds", std::nullopt);
  const uint64_t chunk = flags.Size("chunk", 131072);
  flags.CheckAllUsed();
  if (duration <= 0) Fail("--seconds must be > 0");
  if (chunk == 0 || chunk > (64ULL << 20)) Fail("--chunk must be in (0, 64M]");
  std::string error;
  int fd = Connect(cfg, &error);
  if (fd < 0) Fail(error);
  std::vector<uint8_t> buf(chunk, 0);
  uint64_t sent = 0;
  const double start = NowSeconds();
  while (NowSeconds() - start < duration) {
    ssize_t r = send(fd, buf.data(), buf.size(), MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) {
      if (!WaitReady(fd, POLLOUT, "send", &error)) Fail(error, {{"bytes", sent}});
      continue;
    }
    if (r < 0) Fail(Errno("send"), {{"bytes", sent}});
    sent += r;
  }
  shutdown(fd, SHUT_WR);
  std::string line;
  if (!ReadLine(fd, &line, &error)) Fail(error, {{"bytes", sent}});
  const double seconds = NowSeconds() - start;
  close(fd);
  if (line != "OK " + std::to_string(sent)) {
    Fail("sink replied \"" + line + "\" after " + std::to_string(sent) + " bytes",
         {{"bytes", sent}});
  }
  Finish({{"bytes", sent}, {"seconds", seconds}, {"gbit_per_s", sent * 8.0 / seconds / 1e9}}, 0);
}

// ---------------------------------------------------------------------------------------------
// pingpong

[[noreturn]] void RunPingpong(Flags& flags) {
  ClientConfig cfg = ReadClientConfig(flags);
  const uint64_t size = flags.Size("size", 1024);
  const uint64_t count = flags.Size("count", std::nullopt);
  const uint64_t warmup = flags.Size("warmup", 10);
  flags.CheckAllUsed();
  if (size == 0 || size > (64ULL << 20)) Fail("--size must be in (0, 64M]");
  if (count == 0) Fail("--count must be > 0");
  std::string error;
  int fd = Connect(cfg, &error);
  if (fd < 0) Fail(error);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::vector<uint8_t> out(size, 0x5a), in(size);
  std::vector<double> samples;
  samples.reserve(count);
  for (uint64_t i = 0; i < warmup + count; ++i) {
    const int64_t t0 = NowNanos();
    if (!SendAll(fd, out.data(), size, &error) || !RecvAll(fd, in.data(), size, &error)) {
      Fail(error, {{"count", samples.size()}});
    }
    if (i >= warmup) samples.push_back((NowNanos() - t0) / 1e3);
  }
  shutdown(fd, SHUT_WR);
  close(fd);
  std::sort(samples.begin(), samples.end());
  auto pct = [&samples](double p) {
    size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * samples.size()));
    return samples[std::min(samples.size() - 1, rank == 0 ? 0 : rank - 1)];
  };
  double sum = 0;
  for (double s : samples) sum += s;
  Finish({{"count", count},
          {"p50_us", pct(50)},
          {"p90_us", pct(90)},
          {"p99_us", pct(99)},
          {"mean_us", sum / samples.size()}},
         0);
}

// ---------------------------------------------------------------------------------------------
// probe

std::string AddressText(const sockaddr_storage& a) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (a.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&a);
    inet_ntop(AF_INET, &v4->sin_addr, buf, sizeof(buf));
    return std::string(buf) + ":" + std::to_string(ntohs(v4->sin_port));
  }
  const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a);
  inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof(buf));
  return "[" + std::string(buf) + "]:" + std::to_string(ntohs(v6->sin6_port));
}

[[noreturn]] void RunProbe(Flags& flags) {
  ClientConfig cfg = ReadClientConfig(flags);
  const uint64_t conns = flags.Size("conns", 1);
  flags.CheckAllUsed();
  std::map<std::string, uint64_t> errors, peers, idents;
  uint64_t connected = 0;
  for (uint64_t i = 0; i < conns; ++i) {
    int fd = socket(cfg.to.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) Fail(Errno("socket"));
    SetNonblocking(fd);
    if (ConnectFd(fd, reinterpret_cast<const sockaddr*>(&cfg.to.addr), cfg.to.len) != 0) {
      const char* name = strerrorname_np(errno);
      errors[name ? name : std::to_string(errno)]++;
      close(fd);
      continue;
    }
    ++connected;
    sockaddr_storage peer{};
    socklen_t len = sizeof(peer);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) == 0) peers[AddressText(peer)]++;
    std::string line, error;
    if (ReadLine(fd, &line, &error)) idents[line]++;
    close(fd);
  }
  Finish({{"connections", conns},
          {"connected", connected},
          {"errors", errors},
          {"peers", peers},
          {"idents", idents}},
         0);
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  RaiseFdLimit();
  if (argc < 2) Fail("usage: shunt-testpeer server|verify|bulk|pingpong|hold --key=value...");
  const std::string mode = argv[1];
  Flags flags;
  std::string error;
  if (!flags.Parse(argc, argv, 2, &error)) Fail(error);
  try {
    const uint64_t timeout = flags.Size("timeout", 30);
    if (timeout == 0 || timeout > 86400) Fail("--timeout must be in [1, 86400] seconds");
    g_timeout_s = static_cast<int>(timeout);
    if (mode == "server") RunServer(flags);
    if (mode == "verify") RunVerify(flags, /*hold=*/false);
    if (mode == "hold") RunVerify(flags, /*hold=*/true);
    if (mode == "bulk") RunBulk(flags);
    if (mode == "pingpong") RunPingpong(flags);
    if (mode == "probe") RunProbe(flags);
  } catch (const std::exception& e) {
    Fail(std::string("internal error: ") + e.what());
  }
  Fail("unknown mode " + mode + " (server|verify|bulk|pingpong|hold)");
}
