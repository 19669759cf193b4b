// shunt-compat: the application-compatibility suite's own programs. A mesh must be invisible to
// programs: each case here does what ordinary programs do with a TCP socket and reports, per
// connection, whether every socket call behaved as TCP defines it. The kernel test runs each case
// between two meshed pods and between two unmeshed pods and requires the same outcomes.
//
//   shunt-compat server --port=P [--bind=::] --case=C --io=blocking|nonblocking --conns=N
//                       [--bytes=N] [--ready-file=PATH]
//   shunt-compat client --to=HOST:PORT --case=C --io=blocking|nonblocking --conns=N [--bytes=N]
//   shunt-compat list   (prints the cases and the I/O styles each supports)
//
// Both sides print one JSON line when done: {"role","case","io","conns","outcomes":{...}}, where
// outcomes counts connections by what happened: "ok", or the first difference from TCP's
// behaviour (e.g. "recv: EAGAIN on a blocking socket"). Exit 0 when the run completed (whatever
// the outcomes), 1 on a setup error, 2 when a connection hung for --conn-timeout seconds (the
// partial result is printed first).
//
// Blocking I/O uses blocking sockets with no timeouts, as a plain Python or C program would;
// non-blocking I/O sets O_NONBLOCK and waits in poll(), as event loops do. Data is a
// position-dependent byte pattern, checked on receipt, so loss, duplication or reordering shows.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/errqueue.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "nlohmann/json.hpp"

namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Results and the hang watchdog.

json g_result;
std::map<std::string, int> g_outcomes;
std::atomic<const char*> g_step{"start"};
std::atomic<int64_t> g_conn_started_ms{0};
std::atomic<bool> g_printing{false};

int64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

int64_t NowUs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

// The clock as of the last tick: it moves with jiffies, which socket timeouts count.
int64_t NowCoarseUs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

[[noreturn]] void PrintAndExit(int code) {
  if (g_printing.exchange(true)) {
    for (;;) pause();  // another thread is printing and exiting
  }
  g_result["outcomes"] = g_outcomes;
  std::string line = g_result.dump() + "\n";
  fwrite(line.data(), 1, line.size(), stdout);
  fflush(stdout);
  _exit(code);
}

[[noreturn]] void Fail(const std::string& msg) {
  fprintf(stderr, "shunt-compat: %s\n", msg.c_str());
  g_result["error"] = msg;
  PrintAndExit(1);
}

void StartWatchdog(int timeout_s) {
  std::thread([timeout_s] {
    for (;;) {
      usleep(100 * 1000);
      int64_t started = g_conn_started_ms.load();
      if (started != 0 && NowMs() - started > timeout_s * 1000LL) {
        g_outcomes[std::string("hang in ") + g_step.load()]++;
        PrintAndExit(2);
      }
    }
  }).detach();
}

// A connection's verdict: empty while every check passed, else the first difference.
struct Verdict {
  std::string diff;
  void Note(const std::string& d) {
    if (diff.empty()) diff = d;
  }
  bool ok() const { return diff.empty(); }
};

std::string ErrName(int e) {
  switch (e) {
    case EAGAIN: return "EAGAIN";
    case ECONNRESET: return "ECONNRESET";
    case EPIPE: return "EPIPE";
    case ENOTCONN: return "ENOTCONN";
    case EINTR: return "EINTR";
    case ETIMEDOUT: return "ETIMEDOUT";
    default: return std::to_string(e);
  }
}

// ---------------------------------------------------------------------------------------------
// The byte pattern: byte i of a stream is a function of i alone.

inline uint8_t PatternByte(uint64_t i) {
  uint64_t x = i * 0x9E3779B97F4A7C15ULL;
  return static_cast<uint8_t>((x >> 56) ^ (i >> 12));
}

void FillPattern(uint8_t* p, size_t n, uint64_t offset) {
  for (size_t k = 0; k < n; ++k) p[k] = PatternByte(offset + k);
}

// Checks received bytes against the pattern; returns the first bad offset or -1.
int64_t CheckPattern(const uint8_t* p, size_t n, uint64_t offset) {
  for (size_t k = 0; k < n; ++k) {
    if (p[k] != PatternByte(offset + k)) return static_cast<int64_t>(offset + k);
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// I/O in one of the two styles.

enum class Io { kBlocking, kNonblocking };

struct Conn {
  int fd = -1;
  Io io = Io::kBlocking;
  Verdict* v = nullptr;
};

void WaitFor(int fd, short events) {
  struct pollfd p = {fd, events, 0};
  while (poll(&p, 1, -1) < 0 && errno == EINTR) {
  }
}

void SetNonblocking(int fd, bool on) {
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK));
}

// One receive call as the style makes it: blocking, or poll-then-recv retried on EAGAIN.
// Returns recv's result; on a blocking socket EAGAIN is a difference from TCP and is noted.
ssize_t Recv(Conn& c, void* buf, size_t n, int flags, const char* what) {
  for (;;) {
    ssize_t r = recv(c.fd, buf, n, flags);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    if (errno == EAGAIN && c.io == Io::kNonblocking) {
      WaitFor(c.fd, POLLIN);
      continue;
    }
    if (errno == EAGAIN) c.v->Note(std::string(what) + ": EAGAIN on a blocking socket");
    return r;
  }
}

bool SendAll(Conn& c, const uint8_t* p, size_t n, int flags, const char* what) {
  while (n > 0) {
    ssize_t r = send(c.fd, p, n, flags | MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN && c.io == Io::kNonblocking) {
        WaitFor(c.fd, POLLOUT);
        continue;
      }
      c.v->Note(std::string(what) + ": " + ErrName(errno));
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Sends `n` pattern bytes from `offset` in `chunk`-sized sends.
bool SendPattern(Conn& c, uint64_t n, size_t chunk = 65536, uint64_t offset = 0) {
  std::vector<uint8_t> buf(chunk);
  uint64_t sent = 0;
  while (sent < n) {
    size_t k = static_cast<size_t>(std::min<uint64_t>(chunk, n - sent));
    FillPattern(buf.data(), k, offset + sent);
    if (!SendAll(c, buf.data(), k, 0, "send")) return false;
    sent += k;
  }
  return true;
}

// Reads pattern bytes until end of stream; returns how many (checked), or -1 after a difference.
int64_t RecvPatternToEof(Conn& c, uint64_t offset = 0) {
  std::vector<uint8_t> buf(65536);
  uint64_t got = 0;
  for (;;) {
    ssize_t r = Recv(c, buf.data(), buf.size(), 0, "recv");
    if (r < 0) {
      if (c.v->ok()) c.v->Note("recv: " + ErrName(errno));
      return -1;
    }
    if (r == 0) return static_cast<int64_t>(got);
    int64_t bad = CheckPattern(buf.data(), static_cast<size_t>(r), offset + got);
    if (bad >= 0) {
      c.v->Note("corrupt stream at offset " + std::to_string(bad));
      return -1;
    }
    got += static_cast<uint64_t>(r);
  }
}

// Reads exactly n pattern bytes (several calls allowed).
bool RecvPatternExact(Conn& c, uint64_t n, uint64_t offset = 0) {
  std::vector<uint8_t> buf(65536);
  uint64_t got = 0;
  while (got < n) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), n - got));
    ssize_t r = Recv(c, buf.data(), want, 0, "recv");
    if (r <= 0) {
      if (c.v->ok()) c.v->Note(r == 0 ? "recv: early end of stream" : "recv: " + ErrName(errno));
      return false;
    }
    if (CheckPattern(buf.data(), static_cast<size_t>(r), offset + got) >= 0) {
      c.v->Note("corrupt stream");
      return false;
    }
    got += static_cast<uint64_t>(r);
  }
  return true;
}

// Reads a reply line "OK <n>\n" (or anything) until end of stream.
std::string RecvAllText(Conn& c) {
  std::string out;
  char buf[256];
  for (;;) {
    ssize_t r = Recv(c, buf, sizeof(buf), 0, "recv reply");
    if (r < 0) {
      if (c.v->ok()) c.v->Note("recv reply: " + ErrName(errno));
      return out;
    }
    if (r == 0) return out;
    out.append(buf, static_cast<size_t>(r));
  }
}

void ExpectReply(Conn& c, const std::string& want) {
  std::string got = RecvAllText(c);
  if (c.v->ok() && got != want) c.v->Note("reply \"" + got.substr(0, 40) + "\" instead of \"" +
                                          want.substr(0, want.size() - 1) + "\"");
}

void SendText(Conn& c, const std::string& s) { SendAll(c, reinterpret_cast<const uint8_t*>(s.data()), s.size(), 0, "send reply"); }

std::string OkLine(uint64_t n) { return "OK " + std::to_string(n) + "\n"; }

// ---------------------------------------------------------------------------------------------
// The cases. Each has a client half and a server half, run on one connection.

struct Params {
  uint64_t bytes = 4 << 20;
};

struct Case {
  const char* name;
  bool blocking;     // supports the blocking style
  bool nonblocking;  // supports the non-blocking style
  std::function<void(Conn&, const Params&)> client;
  std::function<void(Conn&, const Params&)> server;
};

// Server half shared by the "send, half-close, wait for the reply" cases: reads the stream to its
// end, checks it, answers OK <bytes>.
void ServeCountToEof(Conn& c, const Params& p) {
  g_step = "server read to end of stream";
  int64_t n = RecvPatternToEof(c);
  if (n < 0) return;
  if (static_cast<uint64_t>(n) != p.bytes) c.v->Note("server got " + std::to_string(n) + " bytes");
  g_step = "server reply";
  SendText(c, OkLine(static_cast<uint64_t>(n)));
}

void ClientSendHalfCloseReply(Conn& c, const Params& p) {
  g_step = "client send";
  if (!SendPattern(c, p.bytes)) return;
  shutdown(c.fd, SHUT_WR);
  g_step = "client wait for reply after shutdown(SHUT_WR)";
  ExpectReply(c, OkLine(p.bytes));
}

std::vector<Case> Cases() {
  std::vector<Case> cs;
  // Client sends, shutdown(SHUT_WR), then reads the reply (blocking: recv must block, not EAGAIN).
  cs.push_back({"halfclose", true, true, ClientSendHalfCloseReply, ServeCountToEof});

  // Server reads with splice(2) into a pipe, as Go's io.Copy between TCP connections, HAProxy
  // and TCP forwarders do.
  cs.push_back({"splice", true, true, ClientSendHalfCloseReply, [](Conn& c, const Params& p) {
                  int pipefd[2];
                  if (pipe(pipefd) != 0) {
                    c.v->Note("pipe failed");
                    return;
                  }
                  std::vector<uint8_t> buf(65536);
                  uint64_t got = 0;
                  unsigned flags = SPLICE_F_MOVE | (c.io == Io::kNonblocking ? SPLICE_F_NONBLOCK : 0);
                  g_step = "server splice";
                  for (;;) {
                    ssize_t r = splice(c.fd, nullptr, pipefd[1], nullptr, 65536, flags);
                    if (r < 0 && errno == EAGAIN && c.io == Io::kNonblocking) {
                      WaitFor(c.fd, POLLIN);
                      continue;
                    }
                    if (r < 0) {
                      c.v->Note("splice: " + ErrName(errno));
                      break;
                    }
                    if (r == 0) break;
                    size_t left = static_cast<size_t>(r);
                    while (left > 0) {
                      ssize_t k = read(pipefd[0], buf.data(), std::min(left, buf.size()));
                      if (k <= 0) break;
                      if (CheckPattern(buf.data(), static_cast<size_t>(k), got) >= 0) c.v->Note("corrupt stream");
                      got += static_cast<uint64_t>(k);
                      left -= static_cast<size_t>(k);
                    }
                  }
                  close(pipefd[0]);
                  close(pipefd[1]);
                  if (got != p.bytes) c.v->Note("splice read " + std::to_string(got) + " bytes");
                  SendText(c, OkLine(got));
                }});

  // recv(MSG_WAITALL) of the whole message in one call; the client sends it in pieces.
  cs.push_back({"waitall", true, false,
                [](Conn& c, const Params& p) {
                  g_step = "client send in pieces";
                  uint64_t piece = p.bytes / 8;
                  for (int i = 0; i < 8; ++i) {
                    if (!SendPattern(c, piece, 65536, i * piece)) return;
                    usleep(200);
                  }
                  g_step = "client wait for reply";
                  ExpectReply(c, OkLine(piece * 8));
                },
                [](Conn& c, const Params& p) {
                  uint64_t n = (p.bytes / 8) * 8;
                  std::vector<uint8_t> buf(n);
                  g_step = "server recv(MSG_WAITALL)";
                  ssize_t r = Recv(c, buf.data(), n, MSG_WAITALL, "recv(MSG_WAITALL)");
                  if (r != static_cast<ssize_t>(n)) {
                    c.v->Note(r < 0 ? "recv(MSG_WAITALL): " + ErrName(errno) : "recv(MSG_WAITALL) returned short");
                  } else if (CheckPattern(buf.data(), n, 0) >= 0) {
                    c.v->Note("corrupt stream");
                  }
                  SendText(c, OkLine(r > 0 ? static_cast<uint64_t>(r) : 0));
                  shutdown(c.fd, SHUT_WR);
                }});

  // SO_RCVLOWAT 1000; the peer sends 10 bytes, then 2000: the first read returns >= 1000 bytes.
  cs.push_back({"rcvlowat", true, true,
                [](Conn& c, const Params&) {
                  g_step = "client send 10 then 2000";
                  if (!SendPattern(c, 10)) return;
                  usleep(2000);
                  if (!SendPattern(c, 2000, 65536, 10)) return;
                  g_step = "client wait for reply";
                  ExpectReply(c, OkLine(2010));
                },
                [](Conn& c, const Params&) {
                  int lowat = 1000;
                  setsockopt(c.fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat));
                  std::vector<uint8_t> buf(4096);
                  g_step = "server first recv under SO_RCVLOWAT";
                  // An event loop reads when poll() says so; poll() honours SO_RCVLOWAT.
                  if (c.io == Io::kNonblocking) WaitFor(c.fd, POLLIN);
                  ssize_t r = Recv(c, buf.data(), buf.size(), 0, "recv");
                  if (r < 0) return;
                  if (r < lowat) c.v->Note("first recv returned " + std::to_string(r) + " bytes < SO_RCVLOWAT");
                  if (r > 0 && CheckPattern(buf.data(), static_cast<size_t>(r), 0) >= 0) c.v->Note("corrupt stream");
                  uint64_t got = r > 0 ? static_cast<uint64_t>(r) : 0;
                  if (got < 2010 && !RecvPatternExact(c, 2010 - got, got)) return;
                  SendText(c, OkLine(2010));
                  shutdown(c.fd, SHUT_WR);
                }});

  // sendfile() of a file, shutdown(SHUT_WR), then wait for the reply.
  cs.push_back({"sendfile", true, true,
                [](Conn& c, const Params& p) {
                  char path[] = "/tmp/shunt-compat-XXXXXX";
                  int f = mkstemp(path);
                  if (f < 0) {
                    c.v->Note("mkstemp failed");
                    return;
                  }
                  unlink(path);
                  std::vector<uint8_t> buf(p.bytes);
                  FillPattern(buf.data(), buf.size(), 0);
                  if (write(f, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size())) c.v->Note("write file");
                  off_t off = 0;
                  g_step = "client sendfile";
                  while (off < static_cast<off_t>(p.bytes)) {
                    ssize_t r = sendfile(c.fd, f, &off, p.bytes - off);
                    if (r < 0 && errno == EAGAIN && c.io == Io::kNonblocking) {
                      WaitFor(c.fd, POLLOUT);
                      continue;
                    }
                    if (r <= 0) {
                      c.v->Note("sendfile: " + ErrName(errno));
                      break;
                    }
                  }
                  close(f);
                  shutdown(c.fd, SHUT_WR);
                  g_step = "client wait for reply after sendfile";
                  ExpectReply(c, OkLine(p.bytes));
                },
                ServeCountToEof});

  // poll() then MSG_PEEK, then read: the peeked bytes are the read bytes.
  cs.push_back({"peek", true, true,
                [](Conn& c, const Params&) {
                  g_step = "client send";
                  if (!SendPattern(c, 1000)) return;
                  ExpectReply(c, OkLine(1000));
                },
                [](Conn& c, const Params&) {
                  uint64_t got = 0;
                  std::vector<uint8_t> peeked(2000), buf(2000);
                  g_step = "server poll/peek/read";
                  while (got < 1000) {
                    WaitFor(c.fd, POLLIN);
                    ssize_t pk = Recv(c, peeked.data(), peeked.size(), MSG_PEEK, "recv(MSG_PEEK)");
                    if (pk <= 0) {
                      c.v->Note("MSG_PEEK returned " + std::to_string(pk));
                      return;
                    }
                    ssize_t r = Recv(c, buf.data(), static_cast<size_t>(pk), 0, "recv");
                    if (r != pk || memcmp(buf.data(), peeked.data(), static_cast<size_t>(pk)) != 0) {
                      c.v->Note("read differs from the peeked bytes");
                      return;
                    }
                    if (CheckPattern(buf.data(), static_cast<size_t>(r), got) >= 0) c.v->Note("corrupt stream");
                    got += static_cast<uint64_t>(r);
                  }
                  SendText(c, OkLine(got));
                  shutdown(c.fd, SHUT_WR);
                }});

  // poll() then FIONREAD: it counts the bytes that are there.
  cs.push_back({"fionread", true, true,
                [](Conn& c, const Params&) {
                  g_step = "client send";
                  if (!SendPattern(c, 1000)) return;
                  ExpectReply(c, OkLine(1000));
                },
                [](Conn& c, const Params&) {
                  g_step = "server poll/FIONREAD";
                  WaitFor(c.fd, POLLIN);
                  int avail = 0;
                  if (ioctl(c.fd, FIONREAD, &avail) != 0 || avail <= 0) {
                    c.v->Note("FIONREAD " + std::to_string(avail) + " after poll said readable");
                  }
                  if (!RecvPatternExact(c, 1000)) return;
                  SendText(c, OkLine(1000));
                  shutdown(c.fd, SHUT_WR);
                }});

  // SO_RCVTIMEO: a read with nothing to read fails with EAGAIN after the timeout, not before;
  // then data that arrives is read.
  cs.push_back({"rcvtimeo", true, false,
                [](Conn& c, const Params&) {
                  char go;
                  g_step = "client wait for go";
                  if (Recv(c, &go, 1, 0, "recv go") != 1) return;
                  if (!SendPattern(c, 100)) return;
                  ExpectReply(c, OkLine(100));
                },
                [](Conn& c, const Params&) {
                  struct timeval tv = {0, 20 * 1000};
                  setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
                  char b[200];
                  g_step = "server recv under SO_RCVTIMEO";
                  int64_t t0 = NowUs(), t0_tick = NowCoarseUs();
                  ssize_t r = recv(c.fd, b, sizeof(b), 0);
                  int64_t dt = NowUs() - t0, dt_tick = NowCoarseUs() - t0_tick;
                  if (r >= 0 || errno != EAGAIN) {
                    c.v->Note("recv with nothing sent returned " + std::to_string(r));
                  } else if (dt < 10000 && dt_tick < 10000) {
                    // The timeout is counted in jiffies: it may end up to one jiffy early (4 ms at
                    // HZ=250, Debian's cloud kernel), with or without the mesh, and more where
                    // ticks come late (an emulated CPU: jiffies then catch up at once; the coarse
                    // clock, updated with them, shows the wait the kernel counted). What this
                    // catches is a wait that did not happen (the sockmap path's early EAGAIN,
                    // ~0 ms by either clock).
                    c.v->Note("SO_RCVTIMEO fired early");
                  }
                  // Now a read that must get the 100 bytes: still under a timeout (an EAGAIN
                  // then is a wake-up without data, or a peer 5 s late), not 20 ms, which a
                  // loaded machine's round trip can take.
                  tv = {5, 0};
                  setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
                  SendText(c, "g");
                  uint64_t got = 0;
                  while (got < 100) {
                    ssize_t k = recv(c.fd, b, sizeof(b), 0);
                    if (k <= 0) {
                      c.v->Note("recv after go: " + (k == 0 ? std::string("end of stream") : ErrName(errno)));
                      return;
                    }
                    got += static_cast<uint64_t>(k);
                  }
                  SendText(c, OkLine(got));
                  shutdown(c.fd, SHUT_WR);
                }});

  // shutdown in both directions: the server half-closes first and then reads; the client reads
  // end of stream, sends, half-closes; each end sees end of stream, not an error.
  cs.push_back({"shutdown_both", true, true,
                [](Conn& c, const Params& p) {
                  g_step = "client read end of stream";
                  char b[16];
                  ssize_t r = Recv(c, b, sizeof(b), 0, "recv");
                  if (r != 0) {
                    if (c.v->ok()) c.v->Note("recv after the peer's shutdown returned " + std::to_string(r));
                    return;
                  }
                  if (!SendPattern(c, p.bytes / 16)) return;
                  shutdown(c.fd, SHUT_RDWR);
                  g_step = "client recv after shutdown(SHUT_RDWR)";
                  r = Recv(c, b, sizeof(b), 0, "recv");
                  if (r != 0 && c.v->ok()) c.v->Note("recv after shutdown(SHUT_RDWR) returned " + std::to_string(r));
                },
                [](Conn& c, const Params& p) {
                  shutdown(c.fd, SHUT_WR);
                  g_step = "server read after its own shutdown(SHUT_WR)";
                  int64_t n = RecvPatternToEof(c);
                  if (n >= 0 && static_cast<uint64_t>(n) != p.bytes / 16) c.v->Note("server got " + std::to_string(n));
                }});

  // RST in the middle of a stream: the server reads part, answers one byte and aborts
  // (SO_LINGER 0). The client reads the byte, then gets ECONNRESET.
  cs.push_back({"rst", true, true,
                [](Conn& c, const Params&) {
                  g_step = "client send";
                  if (!SendPattern(c, 65536)) return;
                  char b[16];
                  g_step = "client recv the server's byte";
                  ssize_t r = Recv(c, b, 1, 0, "recv");
                  if (r != 1) {
                    if (c.v->ok()) c.v->Note("first recv returned " + std::to_string(r));
                    return;
                  }
                  g_step = "client recv after the reset";
                  r = Recv(c, b, sizeof(b), 0, "recv");
                  if (r >= 0) {
                    c.v->Note("recv after the reset returned " + std::to_string(r));
                  } else if (errno != ECONNRESET && c.v->ok()) {
                    c.v->Note("recv after the reset: " + ErrName(errno));
                  }
                },
                [](Conn& c, const Params&) {
                  g_step = "server read";
                  if (!RecvPatternExact(c, 65536)) return;
                  SendText(c, "R");
                  usleep(1000);
                  struct linger lg = {1, 0};
                  setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
                }});

  // writev / sendmsg with many iovecs of uneven sizes.
  cs.push_back({"writev", true, true,
                [](Conn& c, const Params& p) {
                  std::vector<uint8_t> buf(1 << 20);
                  uint64_t off = 0;
                  unsigned seed = 12345;
                  g_step = "client writev";
                  while (off < p.bytes) {
                    struct iovec iov[64];
                    size_t total = 0;
                    int n = 0;
                    for (; n < 64 && off + total < p.bytes; ++n) {
                      size_t len = 1 + rand_r(&seed) % 4096;
                      len = std::min<uint64_t>(len, p.bytes - off - total);
                      iov[n].iov_base = buf.data() + total;
                      iov[n].iov_len = len;
                      total += len;
                    }
                    FillPattern(buf.data(), total, off);
                    size_t done = 0;
                    while (done < total) {
                      struct msghdr mh = {};
                      // Resume after a short write: skip what was sent.
                      int first = 0;
                      size_t skip = done;
                      while (skip >= iov[first].iov_len) skip -= iov[first++].iov_len;
                      struct iovec rest[64];
                      int m = 0;
                      for (int i = first; i < n; ++i) rest[m++] = iov[i];
                      rest[0].iov_base = static_cast<uint8_t*>(rest[0].iov_base) + skip;
                      rest[0].iov_len -= skip;
                      mh.msg_iov = rest;
                      mh.msg_iovlen = m;
                      ssize_t r = sendmsg(c.fd, &mh, MSG_NOSIGNAL);
                      if (r < 0 && errno == EAGAIN && c.io == Io::kNonblocking) {
                        WaitFor(c.fd, POLLOUT);
                        continue;
                      }
                      if (r < 0) {
                        c.v->Note("sendmsg: " + ErrName(errno));
                        return;
                      }
                      done += static_cast<size_t>(r);
                    }
                    off += total;
                  }
                  shutdown(c.fd, SHUT_WR);
                  g_step = "client wait for reply";
                  ExpectReply(c, OkLine(p.bytes));
                },
                ServeCountToEof});

  // MSG_MORE and TCP_CORK senders.
  cs.push_back({"cork", true, true,
                [](Conn& c, const Params& p) {
                  uint64_t off = 0;
                  uint8_t buf[3000];
                  int on = 1, off_ = 0;
                  g_step = "client corked sends";
                  while (off < p.bytes / 16) {
                    setsockopt(c.fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on));
                    for (int i = 0; i < 3; ++i) {
                      FillPattern(buf, 700, off);
                      if (!SendAll(c, buf, 700, MSG_MORE, "send(MSG_MORE)")) return;
                      off += 700;
                    }
                    FillPattern(buf, 3000, off);
                    if (!SendAll(c, buf, 3000, 0, "send")) return;
                    off += 3000;
                    setsockopt(c.fd, IPPROTO_TCP, TCP_CORK, &off_, sizeof(off_));
                  }
                  shutdown(c.fd, SHUT_WR);
                  g_step = "client wait for reply";
                  ExpectReply(c, OkLine(off));
                },
                [](Conn& c, const Params&) {
                  int64_t n = RecvPatternToEof(c);
                  if (n >= 0) SendText(c, OkLine(static_cast<uint64_t>(n)));
                }});

  // TCP_NODELAY one-byte ping-pong.
  cs.push_back({"nodelay", true, true,
                [](Conn& c, const Params&) {
                  int one = 1;
                  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                  g_step = "client ping-pong";
                  for (int i = 0; i < 200; ++i) {
                    uint8_t b = PatternByte(i), r = 0;
                    if (!SendAll(c, &b, 1, 0, "send")) return;
                    if (Recv(c, &r, 1, 0, "recv") != 1) {
                      if (c.v->ok()) c.v->Note("recv of the echo failed");
                      return;
                    }
                    if (r != b) {
                      c.v->Note("wrong echo");
                      return;
                    }
                  }
                  shutdown(c.fd, SHUT_WR);
                  char t;
                  if (Recv(c, &t, 1, 0, "recv end") != 0 && c.v->ok()) c.v->Note("no end of stream");
                },
                [](Conn& c, const Params&) {
                  int one = 1;
                  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                  g_step = "server echo";
                  for (;;) {
                    uint8_t b;
                    ssize_t r = Recv(c, &b, 1, 0, "recv");
                    if (r <= 0) return;
                    if (!SendAll(c, &b, 1, 0, "send")) return;
                  }
                }});

  // Both sides send at once (a writer thread and the reading thread on one socket).
  auto bidir = [](Conn& c, const Params& p) {
    g_step = "both directions at once";
    Verdict wv;
    Conn w = c;
    w.v = &wv;
    std::thread writer([&] {
      SendPattern(w, p.bytes);
      shutdown(w.fd, SHUT_WR);
    });
    int64_t n = RecvPatternToEof(c);
    writer.join();
    if (!wv.ok()) c.v->Note(wv.diff);
    if (n >= 0 && static_cast<uint64_t>(n) != p.bytes) c.v->Note("got " + std::to_string(n) + " bytes");
  };
  cs.push_back({"bidir", true, true, bidir, bidir});

  // The sender fills what the path buffers until it must block (its non-blocking send says
  // EAGAIN and poll() does not report POLLOUT); the amount buffered is reported so that the test
  // can compare it with the unmeshed path.
  auto fill_until_blocked = [](Conn& c, const Params& p) {
    std::vector<uint8_t> buf(65536);
    uint64_t sent = 0;
    g_step = "client fill";
    for (;;) {
      FillPattern(buf.data(), buf.size(), sent);
      ssize_t r = send(c.fd, buf.data(), buf.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (r > 0) {
        sent += static_cast<uint64_t>(r);
        if (sent > 64 * p.bytes) break;  // the path did not push back
        continue;
      }
      if (r < 0 && errno == EAGAIN) {
        struct pollfd pf = {c.fd, POLLOUT, 0};
        if (poll(&pf, 1, 50) == 0) break;  // blocked: the buffers are full
        continue;
      }
      c.v->Note("send: " + ErrName(errno));
      return;
    }
    // The verdict is relative to the request size: the test compares runs.
    if (sent > 64 * p.bytes) c.v->Note("sender never blocked");
    // Abort: a FIN would wait behind the unread bytes forever.
    struct linger lg = {1, 0};
    setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    json& mx = g_result["max_buffered"];
    if (mx.is_null() || mx.get<uint64_t>() < sent) mx = sent;
  };

  auto wait_for_client = [](Conn& c, const Params&) {
    g_step = "server wait for the client to go";
    struct pollfd pf = {c.fd, POLLRDHUP, 0};
    while (poll(&pf, 1, -1) < 0 && errno == EINTR) {
    }
  };

  // A receiver that never reads.
  cs.push_back({"noread", false, true, fill_until_blocked, wait_for_client});

  // A receiver that reads a quarter of the request, then stops reading: a reader seen to read
  // safely, so the fast path carries the stream, up to its bound (docs/fastpath.md).
  cs.push_back({"stopread", false, true, fill_until_blocked,
                [wait_for_client](Conn& c, const Params& p) {
                  std::vector<uint8_t> b(65536);
                  uint64_t got = 0;
                  g_step = "server read a quarter";
                  while (got < p.bytes / 4) {
                    ssize_t r = Recv(c, b.data(), std::min<uint64_t>(b.size(), p.bytes / 4 - got), 0, "recv");
                    if (r <= 0) {
                      if (c.v->ok()) c.v->Note("recv returned " + std::to_string(r));
                      return;
                    }
                    got += static_cast<uint64_t>(r);
                  }
                  wait_for_client(c, p);
                }});

  // MSG_ZEROCOPY sender: every send's completion arrives on the error queue.
  cs.push_back({"zerocopy", true, true,
                [](Conn& c, const Params& p) {
                  int one = 1;
                  if (setsockopt(c.fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) != 0) {
                    c.v->Note("SO_ZEROCOPY refused");
                    return;
                  }
                  const uint64_t n = p.bytes / 4;
                  std::vector<uint8_t> buf(n);
                  FillPattern(buf.data(), n, 0);
                  g_step = "client zerocopy sends";
                  uint64_t off = 0;
                  uint32_t sends = 0;
                  while (off < n) {
                    size_t k = std::min<uint64_t>(65536, n - off);
                    ssize_t r = send(c.fd, buf.data() + off, k, MSG_ZEROCOPY | MSG_NOSIGNAL);
                    if (r < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
                      WaitFor(c.fd, POLLOUT);
                      continue;
                    }
                    if (r < 0) {
                      c.v->Note("send(MSG_ZEROCOPY): " + ErrName(errno));
                      return;
                    }
                    off += static_cast<uint64_t>(r);
                    sends++;
                  }
                  g_step = "client wait for zerocopy completions";
                  uint32_t done = 0;
                  while (done < sends) {
                    struct pollfd pf = {c.fd, 0, 0};  // POLLERR is always reported
                    if (poll(&pf, 1, 2000) == 0) {
                      c.v->Note("zerocopy completions missing");
                      break;
                    }
                    char control[128];
                    struct msghdr mh = {};
                    mh.msg_control = control;
                    mh.msg_controllen = sizeof(control);
                    if (recvmsg(c.fd, &mh, MSG_ERRQUEUE) < 0) continue;
                    for (struct cmsghdr* cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
                      auto* ee = reinterpret_cast<struct sock_extended_err*>(CMSG_DATA(cm));
                      if (ee->ee_origin == SO_EE_ORIGIN_ZEROCOPY) done += ee->ee_data - ee->ee_info + 1;
                    }
                  }
                  shutdown(c.fd, SHUT_WR);
                  ExpectReply(c, OkLine(n));
                },
                [](Conn& c, const Params&) {
                  int64_t n = RecvPatternToEof(c);
                  if (n >= 0) SendText(c, OkLine(static_cast<uint64_t>(n)));
                }});

  // Connected non-blocking (as with a connect timeout), then switched to blocking I/O, as
  // Python's create_connection(timeout=...) followed by settimeout(None) does.
  cs.push_back({"late_blocking", true, false,
                [](Conn& c, const Params& p) { ClientSendHalfCloseReply(c, p); }, ServeCountToEof});
  return cs;
}

// ---------------------------------------------------------------------------------------------
// Addresses and the two roles.

bool ParseHostPort(const std::string& s, struct sockaddr_storage* ss, socklen_t* len) {
  std::string host, port;
  if (!s.empty() && s[0] == '[') {
    size_t e = s.find(']');
    if (e == std::string::npos || e + 2 > s.size() || s[e + 1] != ':') return false;
    host = s.substr(1, e - 1);
    port = s.substr(e + 2);
  } else {
    size_t c = s.rfind(':');
    if (c == std::string::npos) return false;
    host = s.substr(0, c);
    port = s.substr(c + 1);
  }
  memset(ss, 0, sizeof(*ss));
  auto* s4 = reinterpret_cast<struct sockaddr_in*>(ss);
  auto* s6 = reinterpret_cast<struct sockaddr_in6*>(ss);
  if (inet_pton(AF_INET, host.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(static_cast<uint16_t>(atoi(port.c_str())));
    *len = sizeof(*s4);
    return true;
  }
  if (inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(static_cast<uint16_t>(atoi(port.c_str())));
    *len = sizeof(*s6);
    return true;
  }
  return false;
}

std::map<std::string, std::string> ParseFlags(int argc, char** argv) {
  std::map<std::string, std::string> f;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) Fail("unexpected argument " + a);
    size_t eq = a.find('=');
    if (eq == std::string::npos) {
      f[a.substr(2)] = "1";
    } else {
      f[a.substr(2, eq - 2)] = a.substr(eq + 1);
    }
  }
  return f;
}

const Case& FindCase(const std::string& name) {
  static std::vector<Case> cases = Cases();
  for (const auto& c : cases) {
    if (name == c.name) return c;
  }
  Fail("unknown case " + name);
}

void Record(const Verdict& v) { g_outcomes[v.ok() ? "ok" : v.diff]++; }

void RunServer(std::map<std::string, std::string>& f, const Case& cs, Io io, int conns,
               const Params& p) {
  struct sockaddr_in6 a = {};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(static_cast<uint16_t>(atoi(f["port"].c_str())));
  std::string bind_addr = f.count("bind") ? f["bind"] : "::";
  int family = bind_addr.find(':') != std::string::npos ? AF_INET6 : AF_INET;
  int lfd = socket(family, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int rc;
  if (family == AF_INET6) {
    if (inet_pton(AF_INET6, bind_addr.c_str(), &a.sin6_addr) != 1) Fail("bad --bind");
    rc = bind(lfd, reinterpret_cast<struct sockaddr*>(&a), sizeof(a));
  } else {
    struct sockaddr_in a4 = {};
    a4.sin_family = AF_INET;
    a4.sin_port = a.sin6_port;
    if (inet_pton(AF_INET, bind_addr.c_str(), &a4.sin_addr) != 1) Fail("bad --bind");
    rc = bind(lfd, reinterpret_cast<struct sockaddr*>(&a4), sizeof(a4));
  }
  // An event-loop server has a non-blocking listener and accepts non-blocking sockets.
  if (io == Io::kNonblocking) SetNonblocking(lfd, true);
  if (rc != 0 || listen(lfd, 128) != 0) Fail(std::string("bind/listen: ") + strerror(errno));
  if (f.count("ready-file")) {
    FILE* rf = fopen(f["ready-file"].c_str(), "w");
    if (rf) fclose(rf);
  }
  for (int i = 0; i < conns; ++i) {
    g_step = "server accept";
    int fd;
    for (;;) {
      fd = accept4(lfd, nullptr, nullptr, io == Io::kNonblocking ? SOCK_NONBLOCK : 0);
      if (fd >= 0) break;
      if (errno == EAGAIN) {
        WaitFor(lfd, POLLIN);
        continue;
      }
      if (errno != EINTR) Fail(std::string("accept: ") + strerror(errno));
    }
    g_conn_started_ms = NowMs();
    Verdict v;
    Conn c{fd, io, &v};
    cs.server(c, p);
    close(fd);
    g_conn_started_ms = 0;
    Record(v);
  }
  close(lfd);
}

void RunClient(std::map<std::string, std::string>& f, const Case& cs, Io io, int conns,
               const Params& p) {
  struct sockaddr_storage ss;
  socklen_t len;
  if (!ParseHostPort(f["to"], &ss, &len)) Fail("bad --to");
  const bool late_blocking = std::string(cs.name) == "late_blocking";
  for (int i = 0; i < conns; ++i) {
    g_conn_started_ms = NowMs();
    g_step = "client connect";
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (io == Io::kNonblocking || late_blocking) SetNonblocking(fd, true);
    int rc = connect(fd, reinterpret_cast<struct sockaddr*>(&ss), len);
    if (rc != 0 && errno == EINPROGRESS) {
      WaitFor(fd, POLLOUT);
      int err = 0;
      socklen_t el = sizeof(err);
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
      rc = err == 0 ? 0 : -1;
      errno = err;
    }
    if (rc != 0) Fail(std::string("connect: ") + strerror(errno));
    if (late_blocking) SetNonblocking(fd, false);
    Verdict v;
    Conn c{fd, io, &v};
    cs.client(c, p);
    close(fd);
    g_conn_started_ms = 0;
    Record(v);
  }
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) Fail("usage: shunt-compat server|client|list --case=C --io=blocking|nonblocking ...");
  std::string role = argv[1];
  if (role == "list") {
    json out = json::array();
    for (const auto& c : Cases()) {
      json io = json::array();
      if (c.blocking) io.push_back("blocking");
      if (c.nonblocking) io.push_back("nonblocking");
      out.push_back({{"case", c.name}, {"io", io}});
    }
    printf("%s\n", out.dump().c_str());
    return 0;
  }
  auto f = ParseFlags(argc, argv);
  const Case& cs = FindCase(f["case"]);
  std::string io_name = f.count("io") ? f["io"] : "blocking";
  Io io = io_name == "nonblocking" ? Io::kNonblocking : Io::kBlocking;
  if (io_name != "blocking" && io_name != "nonblocking") Fail("bad --io");
  if ((io == Io::kBlocking && !cs.blocking) || (io == Io::kNonblocking && !cs.nonblocking)) {
    Fail(std::string("case ") + cs.name + " has no " + io_name + " style");
  }
  int conns = f.count("conns") ? atoi(f["conns"].c_str()) : 200;
  Params p;
  if (f.count("bytes")) p.bytes = strtoull(f["bytes"].c_str(), nullptr, 10);
  int conn_timeout = f.count("conn-timeout") ? atoi(f["conn-timeout"].c_str()) : 20;
  g_result = {{"role", role}, {"case", cs.name}, {"io", io_name}, {"conns", conns}};
  StartWatchdog(conn_timeout);
  int64_t t0 = NowMs();
  if (role == "server") {
    RunServer(f, cs, io, conns, p);
  } else if (role == "client") {
    RunClient(f, cs, io, conns, p);
  } else {
    Fail("unknown role " + role);
  }
  g_result["elapsed_s"] = (NowMs() - t0) / 1000.0;
  PrintAndExit(0);
}
