// The application-compatibility suite: every case of shunt-compat (tests/compat/compat.cc) runs
// between two meshed pods of one node (fast path) and between two unmeshed pods of that node
// (plain kernel path), at least 200 connections each, and must show the same outcomes: zero
// differences. Cases where splicing is safe must also have used the fast path.
//
// SHUNT_COMPAT_CONNS overrides the number of connections (for a quick local run),
// SHUNT_COMPAT_BYTES the bytes per connection (DefaultBytes).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testbed/testbed.h"

namespace shunt::e2e {
namespace {

// The compat agent's --fastpath-max-queued-bytes (see CompatEnv).
constexpr uint64_t kMaxQueued = 24u << 20;

using testbed::Pod;
using testbed::Testbed;

enum class Family { kV4, kV6, kV4Mapped };

struct CompatCase {
  std::string name;
  std::string io;
  Family family = Family::kV4Mapped;
  // The fast path must have carried this case's data (splicing is safe for what it does).
  bool expect_spliced = false;
  uint64_t bytes = 0;  // 0: the tool's default
};

std::string FamilyName(Family f) {
  switch (f) {
    case Family::kV4: return "v4";
    case Family::kV6: return "v6";
    case Family::kV4Mapped: return "v4mapped";
  }
  return "?";
}

std::string CaseName(const ::testing::TestParamInfo<CompatCase>& info) {
  return info.param.name + "_" + info.param.io + "_" + FamilyName(info.param.family);
}

void PrintTo(const CompatCase& c, std::ostream* os) {
  *os << c.name << "/" << c.io << "/" << FamilyName(c.family);
}

int Conns() {
  const char* e = getenv("SHUNT_COMPAT_CONNS");
  return e ? atoi(e) : 200;
}

// SHUNT_COMPAT_BYTES: bytes per connection of the cases that do not set their own (the tool's
// default, 4 MiB, when unset). The VM runner lowers it under an emulated CPU, where copying is
// what takes the time; the number of connections, which is what catches a race, stays.
uint64_t DefaultBytes() {
  const char* e = getenv("SHUNT_COMPAT_BYTES");
  return e ? strtoull(e, nullptr, 10) : 0;
}

std::string CompatBinary() { return SHUNT_COMPAT_BIN; }

// One node, pods 0 and 1 meshed, pods 2 and 3 not; one agent for the whole suite.
class CompatEnv {
 public:
  static CompatEnv& Get() {
    static CompatEnv* env = new CompatEnv();
    return *env;
  }
  absl::Status Ensure() {
    if (bed_) return agent_ ? absl::OkStatus() : absl::FailedPreconditionError("no agent");
    testbed::Options opts;
    opts.nodes = 1;
    opts.pods_per_node = 4;
    opts.drivers = {testbed::CgroupDriver::kSystemd};
    opts.prefix = "shunt-compat";
    auto bed = Testbed::Create(opts);
    if (!bed.ok()) return bed.status();
    bed_ = std::move(*bed);
    auto policy = bed_->WritePolicyFile(
        "policy.json", {{bed_->pod(0, 0).name, true}, {bed_->pod(0, 1).name, true}});
    if (!policy.ok()) return policy.status();
    // The default backlog bound except for a reader that stopped while the fast path carried its
    // stream (stopread): 160 MiB for each of 200 connections is a long copy, and what the case
    // checks is that the sender blocks at the bound, whatever it is.
    auto agent = std::make_unique<AgentProcess>(
        *bed_, bed_->node(0), *policy,
        std::vector<std::string>{"--fastpath-max-queued-bytes=" + std::to_string(kMaxQueued)});
    absl::Status s = agent->Start();
    if (s.ok()) agent_ = std::move(agent);
    return s;
  }
  void Teardown() {
    if (agent_) agent_->Kill();
    agent_.reset();
    if (bed_) {
      UninstallAgent(*bed_, bed_->node(0)).IgnoreError();
      bed_->Teardown();
    }
    bed_.reset();
  }
  Testbed& bed() { return *bed_; }
  AgentProcess& agent() { return *agent_; }

 private:
  std::unique_ptr<Testbed> bed_;
  std::unique_ptr<AgentProcess> agent_;
};

class CompatEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { CompatEnv::Get().Teardown(); }
};
const auto* const kEnv = ::testing::AddGlobalTestEnvironment(new CompatEnvironment);

struct RunResult {
  nlohmann::json client, server;
};

class CompatTest : public ::testing::TestWithParam<CompatCase> {
 protected:
  void SetUp() override {
    Testbed::InstallSignalTeardown();
    absl::Status s = CompatEnv::Get().Ensure();
    ASSERT_TRUE(s.ok()) << s;
  }

  // Runs the case with the client in `from` and the server in `to`; the result of each side.
  absl::StatusOr<RunResult> RunPair(const Pod& from, const Pod& to, int port) {
    const CompatCase& c = GetParam();
    Testbed& bed = CompatEnv::Get().bed();
    std::vector<std::string> common = {"--case=" + c.name, "--io=" + c.io,
                                       absl::StrCat("--conns=", Conns())};
    if (c.bytes) {
      common.push_back(absl::StrCat("--bytes=", c.bytes));
    } else if (DefaultBytes()) {
      common.push_back(absl::StrCat("--bytes=", DefaultBytes()));
    }
    std::string bind = c.family == Family::kV4 ? "0.0.0.0" : "::";
    std::string to_addr = c.family == Family::kV6 ? absl::StrCat("[", to.ipv6, "]:", port)
                                                  : absl::StrCat(to.ipv4, ":", port);
    static int run_seq = 0;  // each run its own ready file: the pairs share a port
    const std::string ready = absl::StrCat(bed.work_dir(), "/compat-ready-", port, "-", ++run_seq);
    std::vector<std::string> sargv = {CompatBinary(), "server", absl::StrCat("--port=", port),
                                      "--bind=" + bind, "--ready-file=" + ready};
    sargv.insert(sargv.end(), common.begin(), common.end());
    auto server = bed.Spawn(to, sargv);
    if (!server.ok()) return server.status();
    for (int i = 0; access(ready.c_str(), F_OK) != 0; ++i) {
      if (i > 500 || !(*server)->Running()) {
        return absl::UnavailableError("compat server did not start: " + (*server)->Stderr());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::vector<std::string> cargv = {CompatBinary(), "client", "--to=" + to_addr};
    cargv.insert(cargv.end(), common.begin(), common.end());
    auto out = bed.Run(from, cargv, std::chrono::seconds(300));
    if (!out.ok()) return out.status();
    if (out->exit_code != 0) {
      return absl::InternalError(absl::StrCat("compat client exit ", out->exit_code, ": ",
                                              out->out, out->err));
    }
    auto st = (*server)->Wait(std::chrono::seconds(30));
    if (!st.ok()) {
      return absl::DeadlineExceededError(absl::StrCat(
          "compat server did not finish; client: ", out->out, out->err,
          " server so far: ", (*server)->Stdout(), (*server)->Stderr()));
    }
    RunResult r;
    r.client = nlohmann::json::parse(out->out, nullptr, false);
    r.server = nlohmann::json::parse((*server)->Stdout(), nullptr, false);
    if (r.client.is_discarded() || r.server.is_discarded()) {
      return absl::DataLossError(absl::StrCat("unparsable output: client ", out->out, out->err,
                                              " server ", (*server)->Stdout(),
                                              (*server)->Stderr()));
    }
    return r;
  }

  // Fallback and socket-event counters by reason, for failure messages.
  std::string FastpathCounters() {
    auto m = CompatEnv::Get().agent().Scrape();
    if (!m.ok()) return m.status().ToString();
    return FastpathCounterSummary(*m);
  }

  double Fallbacks(const std::string& reason) {
    auto m = CompatEnv::Get().agent().Scrape();
    return m.ok() ? SumSamples(*m, "shunt_sockmap_fallback_messages_total", {{"reason", reason}})
                  : -1;
  }

  // TCP's receive-side drops in a pod's network namespace (TcpExt of /proc/net/netstat):
  // segments it had advertised room for and dropped for want of memory (RcvPruned, RcvQDrop, and
  // OFODrop for those that came after one). Plain TCP between two pods of one node drops none.
  int64_t ReceiveDrops(const Pod& pod) {
    auto out =
        CompatEnv::Get().bed().Run(pod, {"cat", "/proc/net/netstat"}, std::chrono::seconds(10));
    if (!out.ok() || out->exit_code != 0) return -1;
    std::vector<std::string> lines = absl::StrSplit(out->out, '\n');
    for (size_t i = 0; i + 1 < lines.size(); ++i) {
      if (!absl::StartsWith(lines[i], "TcpExt:") || !absl::StartsWith(lines[i + 1], "TcpExt:")) {
        continue;
      }
      std::vector<std::string> names = absl::StrSplit(lines[i], ' ');
      std::vector<std::string> values = absl::StrSplit(lines[i + 1], ' ');
      int64_t sum = 0;
      for (size_t k = 1; k < names.size() && k < values.size(); ++k) {
        if (names[k] == "RcvPruned" || names[k] == "TCPRcvQDrop" || names[k] == "TCPOFODrop") {
          sum += strtoll(values[k].c_str(), nullptr, 10);
        }
      }
      return sum;
    }
    return -1;
  }

  double Redirected() {
    auto m = CompatEnv::Get().agent().Scrape();
    return m.ok() ? SumSamples(*m, "shunt_sockmap_redirected_messages_total") : -1;
  }
};

TEST_P(CompatTest, SameOutcomesMeshedAndUnmeshed) {
  const CompatCase& c = GetParam();
  Testbed& bed = CompatEnv::Get().bed();
  static int port = 20000;
  ++port;
  double before = Redirected();
  double backlog_before = Fallbacks("peer_backlog");
  // Both ends receive (bidir, the replies).
  auto drops = [&](int a, int b) {
    return ReceiveDrops(bed.pod(0, a)) + ReceiveDrops(bed.pod(0, b));
  };
  const int64_t meshed_drops_before = drops(0, 1);
  auto meshed = RunPair(bed.pod(0, 0), bed.pod(0, 1), port);
  ASSERT_TRUE(meshed.ok()) << meshed.status();
  const int64_t meshed_drops = drops(0, 1) - meshed_drops_before;
  double redirected = Redirected() - before;
  double backlog = Fallbacks("peer_backlog") - backlog_before;
  const int64_t plain_drops_before = drops(2, 3);
  auto plain = RunPair(bed.pod(0, 2), bed.pod(0, 3), port);
  ASSERT_TRUE(plain.ok()) << plain.status();
  const int64_t plain_drops = drops(2, 3) - plain_drops_before;
  ASSERT_GE(meshed_drops_before, 0) << "no TcpExt counters in the pods";
  ASSERT_GE(plain_drops_before, 0) << "no TcpExt counters in the pods";
  // The receiver's TCP never drops what it advertised room for because the sockmap queue took
  // its memory: the sender's RST would then be past what it received, and be ignored. (No more
  // than unmeshed: plain TCP between two pods of one node drops none, measured.)
  EXPECT_LE(meshed_drops, plain_drops) << "TCP receive drops (RcvPruned + TCPRcvQDrop + "
                                          "TCPOFODrop) in the two pods, meshed vs unmeshed";

  const nlohmann::json ok = {{"ok", Conns()}};
  // The unmeshed run is the reference: TCP as the kernel defines it, all "ok".
  EXPECT_EQ(plain->client["outcomes"], ok) << "unmeshed client: " << plain->client.dump();
  EXPECT_EQ(plain->server["outcomes"], ok) << "unmeshed server: " << plain->server.dump();
  // Zero differences meshed.
  EXPECT_EQ(meshed->client["outcomes"], plain->client["outcomes"])
      << "meshed client: " << meshed->client.dump();
  EXPECT_EQ(meshed->server["outcomes"], plain->server["outcomes"])
      << "meshed server: " << meshed->server.dump();
  if (HasFailure()) ADD_FAILURE() << "fast-path counters so far: " << FastpathCounters();
  if (c.name == "stopread") {
    // The sender blocks at the backlog bound plus what TCP buffers, never at the node's memory.
    uint64_t m = meshed->client.value("max_buffered", uint64_t{0});
    uint64_t p = plain->client.value("max_buffered", uint64_t{0});
    EXPECT_GT(p, 0u);
    EXPECT_LE(m, kMaxQueued + 2 * p + (8u << 20)) << "meshed " << m << " plain " << p;
    // ... and it got there on the fast path: its sends met the bound.
    EXPECT_GT(backlog, 0) << FastpathCounters();
  }
  if (c.name == "noread") {
    // The sender blocks at a bound comparable to the plain path's (its TCP buffers), not at the
    // node's TCP memory.
    uint64_t m = meshed->client.value("max_buffered", uint64_t{0});
    uint64_t p = plain->client.value("max_buffered", uint64_t{0});
    EXPECT_GT(p, 0u);
    EXPECT_LE(m, 2 * p + (8u << 20)) << "meshed " << m << " plain " << p;
  }
  if (c.expect_spliced) {
    EXPECT_GT(redirected, 0) << "the fast path carried nothing for a case it can carry; counters "
                             << FastpathCounters();
  }
  RecordProperty("redirected_msgs", std::to_string(static_cast<int64_t>(redirected)));
  std::cout << "fast-path counters after " << c.name << "/" << c.io << ": " << FastpathCounters()
            << "\n";
}

std::vector<CompatCase> AllCases() {
  std::vector<CompatCase> v;
  auto add = [&](std::string name, std::string io, bool spliced, Family f = Family::kV4Mapped,
                 uint64_t bytes = 0) { v.push_back({name, io, f, spliced, bytes}); };
  for (Family f : {Family::kV4, Family::kV6, Family::kV4Mapped}) {
    add("halfclose", "blocking", false, f);
    add("halfclose", "nonblocking", true, f);
    add("splice", "blocking", false, f);
    add("splice", "nonblocking", false, f);
    add("bidir", "nonblocking", true, f);
    add("rst", "nonblocking", true, f);
  }
  add("waitall", "blocking", false);
  add("rcvlowat", "blocking", false);
  add("rcvlowat", "nonblocking", false);
  add("sendfile", "blocking", false);
  add("sendfile", "nonblocking", true);
  add("peek", "blocking", false);
  add("peek", "nonblocking", true);
  add("fionread", "blocking", false);
  // FIONREAD counts one of a spliced socket's two queues (TCP's on 6.1, the sockmap's where
  // tcp_bpf_ioctl exists): its users are seen (fentry) and kept off, or, where they cannot be,
  // a socket is spliced only if all its bytes are redirected (docs/fastpath.md).
  add("fionread", "nonblocking", false);
  add("rcvtimeo", "blocking", false);
  add("shutdown_both", "blocking", false);
  add("shutdown_both", "nonblocking", true);
  add("rst", "blocking", false);
  add("writev", "blocking", false);
  add("writev", "nonblocking", true);
  add("cork", "blocking", false);
  add("cork", "nonblocking", true);
  add("nodelay", "blocking", false);
  add("nodelay", "nonblocking", true);
  add("bidir", "blocking", false);
  add("noread", "nonblocking", false, Family::kV4Mapped, 1 << 20);
  add("stopread", "nonblocking", true, Family::kV4Mapped, 4 << 20);
  add("zerocopy", "blocking", false);
  add("zerocopy", "nonblocking", false);
  add("late_blocking", "blocking", false);
  return v;
}

INSTANTIATE_TEST_SUITE_P(Compat, CompatTest, ::testing::ValuesIn(AllCases()), CaseName);

}  // namespace
}  // namespace shunt::e2e

namespace shunt::e2e {
namespace {

// Ordinary programs, not the suite's own: Python's standard socket module, a server with a
// timeout on its sockets (non-blocking underneath, so spliced once its class is learned), and
// clients of which half block (no timeout: never spliced) and half have a timeout; each connection
// a send, shutdown(SHUT_WR) and a wait for the reply. Meshed and unmeshed must print the same,
// and the clients with a timeout must have been spliced.
constexpr char kPyServer[] = R"(
import socket, sys
ls = socket.socket(socket.AF_INET6); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.settimeout(30); ls.bind(("::", int(sys.argv[1]))); ls.listen(64)
open(sys.argv[3], "w").close()
for _ in range(int(sys.argv[2])):
    c, _ = ls.accept(); c.settimeout(30); n = 0
    while True:
        b = c.recv(65536)
        if not b: break
        n += len(b)
    c.sendall(b"got %d\n" % n); c.close()
)";
constexpr char kPyClient[] = R"(
import socket, sys, collections
out = collections.Counter()
for i in range(int(sys.argv[3])):
    # Half the clients block (no timeout), half have one (non-blocking underneath).
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30 if i % 2 else None)
    s.sendall(b"x" * (1 << 20)); s.shutdown(socket.SHUT_WR)
    try:
        r = b""
        while True:
            b = s.recv(100)
            if not b: break
            r += b
        out[r.decode()] += 1
    except OSError as e:
        out[type(e).__name__] += 1
    s.close()
print(dict(out))
)";

TEST(CompatOrdinaryPrograms, PythonHalfCloseSameMeshedAndUnmeshed) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_FAIL() << "python3 is needed (scripts/setup.sh)";
  ASSERT_TRUE(CompatEnv::Get().Ensure().ok());
  Testbed& bed = CompatEnv::Get().bed();
  auto run = [&](const Pod& from, const Pod& to, int port) -> std::string {
    const std::string ready = absl::StrCat(bed.work_dir(), "/py-ready-", port);
    auto server = bed.Spawn(to, {"/usr/bin/python3", "-c", kPyServer, std::to_string(port),
                                 std::to_string(Conns()), ready});
    EXPECT_TRUE(server.ok());
    if (!server.ok()) return "";
    WaitForFile(ready);
    auto out = bed.Run(from, {"/usr/bin/python3", "-c", kPyClient, to.ipv4, std::to_string(port),
                              std::to_string(Conns())},
                       std::chrono::seconds(300));
    EXPECT_TRUE(out.ok());
    (*server)->Wait(std::chrono::seconds(30)).IgnoreError();
    return out.ok() ? out->out + out->err : "";
  };
  auto redirected = [&] {
    auto m = CompatEnv::Get().agent().Scrape();
    return m.ok() ? SumSamples(*m, "shunt_sockmap_redirected_bytes_total") : -1;
  };
  const std::string plain = run(bed.pod(0, 2), bed.pod(0, 3), 22001);
  const double before = redirected();
  const std::string meshed = run(bed.pod(0, 0), bed.pod(0, 1), 22002);
  // Each client writes its 1 MiB in one sendall(), faster than the server reads: where the
  // queue is bound by the receive buffer (128 KiB at first), only the first tens of KiB of each are
  // redirected (measured on 6.1: 335 KiB of the 50 MiB).
  EXPECT_GT(redirected() - before,
            FastpathQueueBoundByReceiveBuffer(CompatEnv::Get().agent()) ? 0 : 1 << 20)
      << "the clients with a timeout were not spliced";
  EXPECT_EQ(plain, absl::StrCat("{'got 1048576\\n': ", Conns(), "}\n"));
  EXPECT_EQ(meshed, plain);
}

// A splice(2)-based TCP forwarder, as Go's io.Copy between two TCP connections and HAProxy's
// splicing are, written with Python's os.splice: non-blocking sockets and select(), a pipe per
// direction, half-closes passed on. In pod B it forwards each client of pod A to an upstream on
// 127.0.0.1 of pod B, which answers with the length and SHA-256 of what it got. The forwarder's
// sockets read with splice: they must never be redirected into, and everything must arrive.
constexpr char kPyForwarder[] = R"(
import os, select, socket, sys
ls = socket.socket(socket.AF_INET6); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.settimeout(30); ls.bind(("::", int(sys.argv[1]))); ls.listen(64)
open(sys.argv[4], "w").close()
for _ in range(int(sys.argv[3])):
    c, _ = ls.accept(); c.setblocking(False)
    u = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=30); u.setblocking(False)
    # per source socket: [destination, pipe (r, w), bytes in the pipe, end of stream, passed on]
    st = {c: [u, os.pipe(), 0, False, False], u: [c, os.pipe(), 0, False, False]}
    while True:
        for v in st.values():
            if v[3] and v[2] == 0 and not v[4]:
                v[0].shutdown(socket.SHUT_WR); v[4] = True
        if all(v[4] for v in st.values()): break
        rd = [s for s, v in st.items() if not v[3] and v[2] == 0]
        wr = [v[0] for v in st.values() if v[2] > 0]
        rr, ww, _ = select.select(rd, wr, [], 30)
        if not rr and not ww: sys.exit("forwarder stalled")
        for s in rr:
            v = st[s]
            try: k = os.splice(s.fileno(), v[1][1], 65536)
            except BlockingIOError: continue
            if k == 0: v[3] = True
            v[2] += k
        for v in st.values():
            if v[2] and v[0] in ww:
                try: v[2] -= os.splice(v[1][0], v[0].fileno(), v[2])
                except BlockingIOError: pass
    for v in st.values(): os.close(v[1][0]); os.close(v[1][1])
    c.close(); u.close()
)";
constexpr char kPyUpstream[] = R"(
import hashlib, socket, sys
ls = socket.socket(socket.AF_INET); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.settimeout(30); ls.bind(("127.0.0.1", int(sys.argv[1]))); ls.listen(64)
open(sys.argv[3], "w").close()
for _ in range(int(sys.argv[2])):
    c, _ = ls.accept(); c.settimeout(30); h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(65536)
        if not b: break
        n += len(b); h.update(b)
    c.sendall(b"%d %s\n" % (n, h.hexdigest().encode())); c.close()
)";
constexpr char kPyForwardClient[] = R"(
import collections, hashlib, socket, sys
out = collections.Counter()
for i in range(int(sys.argv[3])):
    data = hashlib.sha256(b"%d" % i).digest() * (32768 + i)
    want = b"%d %s\n" % (len(data), hashlib.sha256(data).hexdigest().encode())
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
        s.sendall(data); s.shutdown(socket.SHUT_WR); r = b""
        while True:
            b = s.recv(100)
            if not b: break
            r += b
        out["ok" if r == want else "wrong reply %r" % r[:80]] += 1
        s.close()
    except OSError as e:
        out[type(e).__name__] += 1
print(dict(out))
)";

TEST(CompatOrdinaryPrograms, PythonSpliceForwarderSameMeshedAndUnmeshed) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_FAIL() << "python3 is needed (scripts/setup.sh)";
  ASSERT_TRUE(CompatEnv::Get().Ensure().ok());
  Testbed& bed = CompatEnv::Get().bed();
  const int conns = std::min(Conns(), 200);
  auto wait_ready = [](const std::string& path) {
    EXPECT_TRUE(WaitForFile(path)) << path << " not written in 10 s";
  };
  auto run = [&](const Pod& from, const Pod& to, int port) -> std::string {
    const std::string up_ready = absl::StrCat(bed.work_dir(), "/py-up-", port);
    const std::string fw_ready = absl::StrCat(bed.work_dir(), "/py-fw-", port);
    auto upstream = bed.Spawn(to, {"/usr/bin/python3", "-c", kPyUpstream, std::to_string(port + 1),
                                   std::to_string(conns), up_ready});
    EXPECT_TRUE(upstream.ok());
    if (!upstream.ok()) return "";
    wait_ready(up_ready);
    auto forwarder = bed.Spawn(to, {"/usr/bin/python3", "-c", kPyForwarder, std::to_string(port),
                                    std::to_string(port + 1), std::to_string(conns), fw_ready});
    EXPECT_TRUE(forwarder.ok());
    if (!forwarder.ok()) return "";
    wait_ready(fw_ready);
    auto out = bed.Run(from, {"/usr/bin/python3", "-c", kPyForwardClient, to.ipv4,
                              std::to_string(port), std::to_string(conns)},
                       std::chrono::seconds(600));
    EXPECT_TRUE(out.ok());
    auto fw = (*forwarder)->Wait(std::chrono::seconds(30));
    EXPECT_TRUE(fw.ok() && WIFEXITED(*fw) && WEXITSTATUS(*fw) == 0)
        << "forwarder: " << (*forwarder)->Stdout() << (*forwarder)->Stderr();
    (*upstream)->Wait(std::chrono::seconds(30)).IgnoreError();
    return out.ok() ? out->out + out->err : "";
  };
  auto scrape = [&] {
    auto m = CompatEnv::Get().agent().Scrape();
    return m.ok() ? *m : std::vector<Sample>{};
  };
  const std::string plain = run(bed.pod(0, 2), bed.pod(0, 3), 22011);
  const auto before = scrape();
  const std::string meshed = run(bed.pod(0, 0), bed.pod(0, 1), 22021);
  const auto after = scrape();
  EXPECT_EQ(plain, absl::StrCat("{'ok': ", conns, "}\n"));
  EXPECT_EQ(meshed, plain);
  auto delta = [&](const char* name, std::map<std::string, std::string> match) {
    return SumSamples(after, name, match) - SumSamples(before, name, match);
  };
  // The forwarder was seen to splice, in time: its classes are then kept off the fast path.
  EXPECT_GT(delta("shunt_sockhash_socket_events_total", {{"event", "read_splice"}}), 0)
      << FastpathCounterSummary(after);
  if (conns > 1) {  // the first connection teaches the class
    EXPECT_GT(delta("shunt_sockhash_socket_events_total", {{"event", "skip_learned"}}), 0)
        << FastpathCounterSummary(after);
  }
  EXPECT_EQ(delta("shunt_sockhash_socket_events_total", {{"event", "unprotected"}}), 0)
      << FastpathCounterSummary(after);
}

}  // namespace
}  // namespace shunt::e2e
