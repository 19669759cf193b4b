// The in-node fast path end to end: a real shunt-agent in a node of the test bed, real sock_ops and
// sk_msg programs on the node's pod cgroups, real TCP between pods (network namespaces + veth).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/e2e/e2e_util.h"
#include "tests/test_util.h"
#include "tests/testbed/testbed.h"

namespace shunt::e2e {
namespace {

using namespace std::chrono_literals;
using testbed::Pod;
using testbed::ProcessPtr;
using testbed::Testbed;

constexpr uint64_t kMiB = 1 << 20;

bool FileExists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

// Every fast-path test runs on a node laid out by each of kubelet's cgroup drivers.
class FastpathTest : public ::testing::TestWithParam<testbed::CgroupDriver> {
 protected:
  virtual std::vector<std::string> AgentFlags() const { return {}; }
  // Pods 0 and 1 meshed, pod 2 not; a subclass may mesh pod 2 and add a pod 3 (meshed).
  virtual bool ThreeMeshedPods() const { return false; }

  void SetUp() override {
    testbed::Options opts;
    opts.nodes = 1;
    opts.pods_per_node = ThreeMeshedPods() ? 4 : 3;
    opts.drivers = {GetParam()};
    auto bed = Testbed::Create(opts);
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = std::move(*bed);
    std::map<std::string, bool> meshed = {{P(0).name, true}, {P(1).name, true}};
    if (ThreeMeshedPods()) meshed[P(2).name] = true;
    auto policy = bed_->WritePolicyFile("policy.json", meshed);
    ASSERT_TRUE(policy.ok()) << policy.status();
    policy_ = *policy;
    agent_ = std::make_unique<AgentProcess>(*bed_, bed_->node(0), policy_, AgentFlags());
    ASSERT_TRUE(agent_->Start().ok()) << agent_->Stderr();
  }

  void TearDown() override {
    if (agent_) agent_->Kill();
    if (bed_) {
      auto out = UninstallAgent(*bed_, bed_->node(0));
      EXPECT_TRUE(out.ok() && out->exit_code == 0) << (out.ok() ? out->err : "");
      bed_->Teardown();
    }
  }

  const Pod& P(int i) const { return bed_->pod(0, i); }

  ProcessPtr Server(const Pod& pod, int port, const std::string& mode, int conns,
                    const std::string& bind = "::", std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {absl::StrCat("--port=", port), "--bind=" + bind,
                                     "--mode=" + mode, absl::StrCat("--conns=", conns)};
    for (auto& e : extra) args.push_back(e);
    auto p = StartTestpeerServer(*bed_, pod, args);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  }

  // Runs the verify client in `pod`; returns its JSON result (fails the test on error).
  nlohmann::json Verify(const Pod& pod, const std::string& to, uint64_t bytes,
                        std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"verify", "--to=" + to, absl::StrCat("--bytes=", bytes),
                                     "--seed=7"};
    for (auto& e : extra) args.push_back(e);
    auto r = RunTestpeer(*bed_, pod, args);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : nlohmann::json{};
  }

  // One short connection that teaches the fast path how the client's and the server's class
  // read (docs/fastpath.md, "Classes are learned"): where FIONREAD users cannot be seen, only
  // sockets of classes that read safely before are spliced, so the first connection between two
  // pods is plain TCP. The server must accept one connection more for it.
  void Teach(const Pod& pod, const std::string& to, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"verify", "--to=" + to, "--bytes=65536"};
    if (extra.empty()) extra = {"--seed=7"};
    for (auto& e : extra) args.push_back(e);
    auto r = RunTestpeer(*bed_, pod, args);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->value("ok", 0), 1) << r->dump();
  }

  double Redirected(const std::string& metric, const Pod& src, const Pod& dst) {
    auto s = agent_->Scrape();
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return -1;
    if (getenv("SHUNT_DEBUG_COUNTERS")) {  // prints the fast path's counters at each check
      for (const auto& x : *s) {
        if (x.name.rfind("shunt_sock", 0) == 0 && x.value > 0) {
          std::string l;
          for (auto& [k, v] : x.labels) l += k + "=" + v + ",";
          std::cout << x.name << "{" << l << "} " << x.value << "\n";
        }
      }
    }
    return SumSamples(*s, metric, {{"source_pod", src.name}, {"destination_pod", dst.name}});
  }

  // Bytes from src's sockets to dst's the fast path moved (e2e::SplicedOrBound).
  double SplicedOrBound(const Pod& src, const Pod& dst) {
    auto s = agent_->Scrape();
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return -1;
    return e2e::SplicedOrBound(*agent_, *s,
                               {{"source_pod", src.name}, {"destination_pod", dst.name}});
  }

  // Link id of each link pinned by the agent of node 0, by pin name.
  std::map<std::string, int64_t> PinnedLinkIds() {
    std::map<std::string, int64_t> ids;
    const std::string dir = "/sys/fs/bpf/shunt/" + bed_->node(0).name;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      const std::string name = e.path().filename();
      if (name.rfind("link_", 0) != 0) continue;
      auto out = bed_->RunOnNode(bed_->node(0),
                                 {"bpftool", "-j", "link", "show", "pinned", e.path()}, 10s);
      if (!out.ok()) continue;
      auto j = nlohmann::json::parse(out->out, nullptr, false);
      if (j.is_object()) ids[name] = j.value("id", int64_t{-1});
    }
    return ids;
  }

  std::unique_ptr<Testbed> bed_;
  std::string policy_;
  std::unique_ptr<AgentProcess> agent_;
};

TEST_P(FastpathTest, MeshedPodsAreSplicedInTheKernel) {
  auto server = Server(P(1), 8080, "verify", 2);
  ASSERT_TRUE(server);
  Teach(P(0), P(1).ipv4 + ":8080");
  auto before0 = bed_->PodLinkStats(P(0));
  auto before1 = bed_->PodLinkStats(P(1));
  ASSERT_TRUE(before0.ok() && before1.ok());

  // Below what a receiver's sockmap queue may hold with TCP's default maxima (10 MiB; see
  // HundredMebibyteTransferIsIntact for a stream larger than that to a slower reader).
  const uint64_t payload = 8 * kMiB;
  auto r = Verify(P(0), P(1).ipv4 + ":8080", payload);
  EXPECT_EQ(r.value("ok", 0), 1);

  auto after0 = bed_->PodLinkStats(P(0));
  auto after1 = bed_->PodLinkStats(P(1));
  ASSERT_TRUE(after0.ok() && after1.ok());
  // The payload never crossed the veths: only the handshake, ACKs and FIN did.
  const double spliced = Redirected("shunt_sockmap_redirected_bytes_total", P(0), P(1));
  EXPECT_LT(after0->tx_bytes - before0->tx_bytes,
            MayTakeTheStack(*agent_, payload, spliced, payload / 100));
  EXPECT_LT(after1->rx_bytes - before1->rx_bytes,
            MayTakeTheStack(*agent_, payload, spliced, payload / 100));
  EXPECT_GE(SplicedOrBound(P(0), P(1)), payload);
  EXPECT_GT(Redirected("shunt_sockmap_redirected_messages_total", P(0), P(1)), 0);
  // The reply went the other way through the redirect too.
  EXPECT_GT(Redirected("shunt_sockmap_redirected_bytes_total", P(1), P(0)), 0);
}

TEST_P(FastpathTest, HundredMebibyteTransferIsIntact) {
  auto server = Server(P(1), 8081, "verify", 2);
  ASSERT_TRUE(server);
  Teach(P(0), P(1).ipv4 + ":8081");
  auto r = Verify(P(0), P(1).ipv4 + ":8081", 100 * kMiB);
  EXPECT_EQ(r.value("ok", 0), 1);
  EXPECT_EQ(r.value("bytes", uint64_t{0}), 100 * kMiB);
  // The verifying reader is slower than the sender: its sockmap queue fills up to what TCP would
  // buffer at most (tcp_rmem + tcp_wmem maxima, tens of MiB), then the sender goes through the
  // stack, where TCP's flow control holds it back; the stream stays whole either way.
  EXPECT_GE(Redirected("shunt_sockmap_redirected_bytes_total", P(0), P(1)), 8 * kMiB);
  auto m = agent_->Scrape();
  ASSERT_TRUE(m.ok());
  const double fell_back = SumSamples(*m, "shunt_sockmap_fallback_bytes_total",
                                      {{"source_pod", P(0).name}, {"destination_pod", P(1).name}});
  const double redirected = Redirected("shunt_sockmap_redirected_bytes_total", P(0), P(1));
  EXPECT_GE(redirected + fell_back, 100 * kMiB) << "every send is counted one way or the other";
}

TEST_P(FastpathTest, ThousandConcurrentShortConnectionsAreIntact) {
  auto server = Server(P(1), 8082, "verify", 1001);
  ASSERT_TRUE(server);
  Teach(P(0), P(1).ipv4 + ":8082");
  auto r = Verify(P(0), P(1).ipv4 + ":8082", 4096, {"--conns=1000", "--concurrent"});
  EXPECT_EQ(r.value("connections", 0), 1000);
  EXPECT_EQ(r.value("ok", 0), 1000);
  EXPECT_EQ(r.value("failed", -1), 0);
  EXPECT_GE(Redirected("shunt_sockmap_redirected_bytes_total", P(0), P(1)), 1000 * 4096.0);
  auto s = agent_->Scrape();
  ASSERT_TRUE(s.ok());
  // Every closed socket left the sockhash. A socket can linger in FIN_WAIT2 until
  // tcp_fin_timeout (60 s by default) before it reaches CLOSE: wait past that, bounded.
  auto deadline = std::chrono::steady_clock::now() + 75s;
  double live = 0;
  do {
    s = agent_->Scrape();
    ASSERT_TRUE(s.ok());
    live = SumSamples(*s, "shunt_sockhash_sockets");
    if (live == 0) break;
    std::this_thread::sleep_for(100ms);
  } while (std::chrono::steady_clock::now() < deadline);
  if (live != 0) {
    for (const Pod* p : {&P(0), &P(1)}) {
      auto ss = bed_->Run(*p, {"ss", "-tan"}, 10s);
      ADD_FAILURE() << p->name << " sockets:\n" << (ss.ok() ? ss->out : "");
    }
  }
  EXPECT_EQ(live, 0);
  EXPECT_GE(SumSamples(*s, "shunt_sockhash_socket_events_total", {{"event", "inserted"}}), 2000);
}

// Python, non-blocking: a server that answers its first connection (which teaches the fast path
// how both programs read) and never reads the next one, and a client that connects twice: the
// second time it sends until its socket is full, then close()s. That socket then waits in
// FIN_WAIT1 behind its unsent bytes (its peer reads nothing), for minutes, but the kernel took
// it out of the sockhash at close().
constexpr char kPyCloseOneEnd[] = R"(
import select, socket, sys, time
role, addr, port, ready = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if role == "server":
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setblocking(False); ls.bind(("0.0.0.0", port)); ls.listen(8)
    open(ready, "w").close()
    live, held = [ls], []
    while True:
        for s in select.select(live, [], [], 1)[0]:
            if s is ls:
                c, _ = ls.accept(); c.setblocking(False); held.append(c)
                if len(held) == 1: live.append(c)  # the others are never read
                continue
            d = s.recv(65536)
            if d: s.send(d)
            else: live.remove(s)
c = socket.socket(); c.setblocking(False); c.connect_ex((addr, port))
select.select([], [c], [], 10); c.send(b"x" * 1000); got = b""
while len(got) < 1000:
    if not select.select([c], [], [], 10)[0]: sys.exit("stalled")
    got += c.recv(65536)
c.close()
c = socket.socket(); c.setblocking(False); c.connect_ex((addr, port))
select.select([], [c], [], 10); sent = 0
while select.select([], [c], [], 1)[1] and sent < (256 << 20):
    try: sent += c.send(b"y" * 65536)
    except BlockingIOError: pass
c.close()
print("done", sent)
)";

// shunt_sockhash_sockets counts what the sockhash holds: a socket leaves it at close() (the
// kernel unlinks it then), not when it reaches TCP_CLOSE, which unsent bytes to a peer that does
// not read put off (FIN_WAIT1, for minutes). Fails without the count at close(): the client's
// pod read 1 until then.
TEST_P(FastpathTest, ASocketLeavesTheCountAtCloseNotAtTcpClose) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_FAIL() << "python3 is needed (scripts/setup.sh)";
  const std::string ready = bed_->work_dir() + "/close-one-end";
  auto server =
      bed_->Spawn(P(1), {"/usr/bin/python3", "-c", kPyCloseOneEnd, "server", "-", "8096", ready});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE(WaitForFile(ready)) << (*server)->Stderr();
  auto client = bed_->Run(
      P(0), {"/usr/bin/python3", "-c", kPyCloseOneEnd, "client", P(1).ipv4, "8096", ready}, 60s);
  ASSERT_TRUE(client.ok() && client->out.find("done") != std::string::npos)
      << (client.ok() ? client->out + client->err : client.status().ToString());
  auto gauge = [&](const Pod& p) {
    auto s = agent_->Scrape();
    return s.ok() ? SumSamples(*s, "shunt_sockhash_sockets", {{"pod", p.name}}) : -1;
  };
  auto s = agent_->Scrape();
  ASSERT_TRUE(s.ok());
  // The second connection at least (where fentry sees reads, 6.1, the first one too).
  ASSERT_GE(SumSamples(*s, "shunt_sockhash_socket_events_total",
                       {{"pod", P(0).name}, {"event", "inserted"}}),
            1)
      << "the client was spliced: " << FastpathCounterSummary(*s);
  EXPECT_TRUE(shunt::test::Eventually([&] { return gauge(P(0)) == 0; }, 5s, 50ms)) << gauge(P(0));
  auto ss = bed_->Run(P(0), {"ss", "-tan", "state", "fin-wait-1"}, 10s);
  ASSERT_TRUE(ss.ok());
  EXPECT_NE(ss->out.find(P(1).ipv4 + ":8096"), std::string::npos)
      << "the closed socket is still in FIN_WAIT1 (what made the count wrong):\n"
      << ss->out;
  EXPECT_GE(gauge(P(1)), 1) << "the server's ends are open (CLOSE_WAIT), still spliced";
}

TEST_P(FastpathTest, UnmeshedPodIsUntouched) {
  auto server = Server(P(2), 8083, "verify", 2);
  ASSERT_TRUE(server);
  auto before = bed_->PodLinkStats(P(2));
  ASSERT_TRUE(before.ok());
  const uint64_t payload = 8 * kMiB;
  EXPECT_EQ(Verify(P(0), P(2).ipv4 + ":8083", payload).value("ok", 0), 1);  // meshed -> unmeshed
  auto after = bed_->PodLinkStats(P(2));
  ASSERT_TRUE(after.ok());
  EXPECT_GE(after->rx_bytes - before->rx_bytes, payload) << "the payload took the normal path";
  EXPECT_EQ(Redirected("shunt_sockmap_redirected_bytes_total", P(0), P(2)), 0);

  auto client_server = Server(P(0), 8084, "verify", 1);
  ASSERT_TRUE(client_server);
  EXPECT_EQ(Verify(P(2), P(0).ipv4 + ":8084", payload).value("ok", 0), 1);  // unmeshed -> meshed
  auto s = agent_->Scrape();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(SumSamples(*s, "shunt_sockmap_redirected_bytes_total", {{"source_pod", P(2).name}}), 0);
  EXPECT_GE(SumSamples(*s, "shunt_sockhash_socket_events_total",
                       {{"pod", P(0).name}, {"event", "peer_not_local"}}),
            2);
}

// An ordinary non-blocking program (Python's selectors): a server that reads to the end, then
// answers and closes; a client that connects, sends, shuts down its side and reads the answer.
constexpr char kPyL4Peer[] = R"(
import selectors, socket, sys
mode, host, port, count, send_n, reply_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
def pump(s, out, want_eof):
    sel = selectors.DefaultSelector()
    got = 0
    while True:
        ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
        sel.register(s, ev)
        sel.select(10)
        sel.unregister(s)
        if out:
            try:
                out = out[s.send(out):]
            except BlockingIOError:
                pass
            if not out and not want_eof:
                return got
            continue
        try:
            b = s.recv(65536)
        except BlockingIOError:
            continue
        if not b:
            return got
        got += len(b)
if mode == 'server':
    l = socket.socket(fam)
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.setblocking(False)
    l.bind((host, port))
    l.listen(64)
    print('ready', flush=True)
    for _ in range(count):
        sel = selectors.DefaultSelector(); sel.register(l, selectors.EVENT_READ); sel.select(30)
        c, _ = l.accept()
        c.setblocking(False)
        got = pump(c, b'', True)
        assert got == send_n, got
        pump(c, b'r' * reply_n, False)
        c.close()
else:
    for _ in range(count):
        s = socket.socket(fam)
        s.setblocking(False)
        err = s.connect_ex((host, port))
        sel = selectors.DefaultSelector(); sel.register(s, selectors.EVENT_WRITE); sel.select(10)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            print('refused', err, flush=True)
            s.close()
            continue
        pump(s, b'c' * send_n, False)
        s.shutdown(socket.SHUT_WR)
        got = pump(s, b'', True)
        assert got == reply_n, got
        s.close()
    print('done', flush=True)
)";

// The kernel's L4 metrics (docs/metrics.md) of every connection of a meshed pod: to a meshed
// pod of the node (spliced once its classes are learned), to an unmeshed one (plain TCP), and a
// connect() refused: each end counted by its meshed pod, bytes exactly what the programs moved.
TEST_P(FastpathTest, EveryConnectionOfAMeshedPodIsMeasuredByTheKernelSplicedOrNot) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_FAIL() << "python3 is needed (scripts/setup.sh)";
  constexpr int kMeshed = 4, kPlain = 2;
  constexpr uint64_t kSend = 300000, kReply = 5000;
  auto server = [&](const Pod& pod, int port, int conns) {
    auto p = bed_->Spawn(pod, {"/usr/bin/python3", "-c", kPyL4Peer, "server", "::",
                               absl::StrCat(port), absl::StrCat(conns), absl::StrCat(kSend),
                               absl::StrCat(kReply)});
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  };
  auto meshed = server(P(1), 8095, kMeshed);
  auto plain = server(P(2), 8096, kPlain);
  ASSERT_TRUE(meshed && plain);
  auto listening = [&](const Pod& pod, int port) {
    for (int i = 0; i < 100; ++i) {
      auto out = bed_->Run(pod, {"ss", "-Hltn", absl::StrCat("sport = :", port)}, 10s);
      if (out.ok() && out->out.find("LISTEN") != std::string::npos) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  };
  ASSERT_TRUE(listening(P(1), 8095) && listening(P(2), 8096));
  auto client = [&](const std::string& host, int port, int conns) {
    auto r = bed_->Run(P(0), {"/usr/bin/python3", "-c", kPyL4Peer, "client", host,
                              absl::StrCat(port), absl::StrCat(conns), absl::StrCat(kSend),
                              absl::StrCat(kReply)},
                       60s);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->exit_code, 0) << r->out << r->err;
  };
  client(P(1).ipv4, 8095, kMeshed);
  client(P(2).ipv6, 8096, kPlain);
  client(P(1).ipv4, 8099, 1);  // nothing listens there: refused

  const std::map<std::string, std::string> to_meshed = {{"source_pod", P(0).name},
                                                        {"destination_pod", P(1).name}};
  auto with = [](std::map<std::string, std::string> m, const std::string& reporter) {
    m["reporter"] = reporter;
    return m;
  };
  std::vector<Sample> s;
  for (auto deadline = std::chrono::steady_clock::now() + 15s;
       std::chrono::steady_clock::now() < deadline; std::this_thread::sleep_for(200ms)) {
    auto scraped = agent_->Scrape();
    ASSERT_TRUE(scraped.ok()) << scraped.status();
    s = *scraped;
    if (SumSamples(s, "shunt_connections_closed_total", {{"source_pod", P(0).name}}) >=
            2 * kMeshed + kPlain &&
        SumSamples(s, "shunt_connection_failures_total", {{"source_pod", P(0).name}}) >= 1) {
      break;
    }
  }
  for (const char* reporter : {"source", "destination"}) {
    SCOPED_TRACE(reporter);
    const auto m = with(to_meshed, reporter);
    EXPECT_EQ(SumSamples(s, "shunt_connections_opened_total", m), kMeshed);
    EXPECT_EQ(SumSamples(s, "shunt_connections_closed_total", m), kMeshed);
    EXPECT_EQ(SumSamples(s, "shunt_connection_received_bytes_total", m), kMeshed * kSend);
    EXPECT_EQ(SumSamples(s, "shunt_connection_sent_bytes_total", m), kMeshed * kReply);
    EXPECT_EQ(SumSamples(s, "shunt_connection_duration_seconds_count", m), kMeshed);
    EXPECT_EQ(SumSamples(s, "shunt_connection_rtt_seconds_count", m), kMeshed);
  }
  // Setup: the client's connect() (a server's end measures none).
  EXPECT_EQ(SumSamples(s, "shunt_connection_setup_seconds_count", with(to_meshed, "source")),
            kMeshed);
  EXPECT_EQ(SumSamples(s, "shunt_connection_setup_seconds_count", with(to_meshed, "destination")),
            0);
  EXPECT_GT(SumSamples(s, "shunt_connection_setup_seconds_sum", with(to_meshed, "source")), 0);
  EXPECT_GT(SumSamples(s, "shunt_connection_duration_seconds_sum", with(to_meshed, "source")), 0);
  // Spliced in the kernel: those bytes never touched TCP, and are counted all the same.
  EXPECT_GT(Redirected("shunt_sockmap_redirected_bytes_total", P(0), P(1)) +
                Redirected("shunt_sockmap_redirected_bytes_total", P(1), P(0)),
            0)
      << FastpathCounterSummary(s);
  // To the unmeshed pod (over IPv6): its client's end only.
  const std::map<std::string, std::string> to_plain = {{"source_pod", P(0).name},
                                                       {"destination_pod", P(2).name}};
  EXPECT_EQ(SumSamples(s, "shunt_connections_opened_total", with(to_plain, "source")), kPlain);
  EXPECT_EQ(SumSamples(s, "shunt_connection_received_bytes_total", with(to_plain, "source")),
            kPlain * kSend);
  EXPECT_EQ(SumSamples(s, "shunt_connection_sent_bytes_total", with(to_plain, "source")),
            kPlain * kReply);
  EXPECT_EQ(SumSamples(s, "shunt_connections_opened_total", with(to_plain, "destination")), 0);
  // The refused connect(): a failure, never an opened connection.
  EXPECT_EQ(SumSamples(s, "shunt_connection_failures_total", with(to_meshed, "source")), 1);
  EXPECT_EQ(SumSamples(s, "shunt_sockhash_socket_events_total",
                       {{"event", "connection_event_lost"}}),
            0);
}

TEST_P(FastpathTest, DualStackServerWithIpv4ClientIsRedirected) {
  auto server = Server(P(1), 8085, "verify", 3, "::");
  ASSERT_TRUE(server);
  Teach(P(0), P(1).ipv4 + ":8085");
  auto before = bed_->PodLinkStats(P(1));
  ASSERT_TRUE(before.ok());
  const uint64_t payload = 16 * kMiB;
  EXPECT_EQ(Verify(P(0), P(1).ipv4 + ":8085", payload).value("ok", 0), 1);
  EXPECT_EQ(Verify(P(0), "[" + P(1).ipv6 + "]:8085", payload).value("ok", 0), 1);
  auto after = bed_->PodLinkStats(P(1));
  ASSERT_TRUE(after.ok());
  const double spliced = Redirected("shunt_sockmap_redirected_bytes_total", P(0), P(1));
  EXPECT_LT(after->rx_bytes - before->rx_bytes,
            MayTakeTheStack(*agent_, 2 * payload, spliced, payload / 50));
  EXPECT_GE(SplicedOrBound(P(0), P(1)), 2 * payload);
}

TEST_P(FastpathTest, LoopbackInTwoPodsNeverCrosses) {
  // Both pods run a server on 127.0.0.1:9000 and a client to it, at the same time. Each server
  // accepts only its own pod's seed: a byte from the other pod would fail the check.
  auto s0 = Server(P(0), 9000, "verify", 2, "127.0.0.1", {"--expect-seed=100"});
  auto s1 = Server(P(1), 9000, "verify", 2, "127.0.0.1", {"--expect-seed=200"});
  ASSERT_TRUE(s0 && s1);
  Teach(P(0), "127.0.0.1:9000", {"--seed=100"});
  Teach(P(1), "127.0.0.1:9000", {"--seed=200"});
  auto c0 = bed_->Spawn(
      P(0), {TestpeerBinary(), "verify", "--to=127.0.0.1:9000", absl::StrCat("--bytes=", 32 * kMiB),
             "--seed=100", "--bind=127.0.0.1:41000"});
  auto c1 = bed_->Spawn(
      P(1), {TestpeerBinary(), "verify", "--to=127.0.0.1:9000", absl::StrCat("--bytes=", 32 * kMiB),
             "--seed=200", "--bind=127.0.0.1:41000"});
  ASSERT_TRUE(c0.ok() && c1.ok());
  auto r0 = (*c0)->Wait(60s);
  auto r1 = (*c1)->Wait(60s);
  ASSERT_TRUE(r0.ok() && r1.ok());
  EXPECT_TRUE(WIFEXITED(*r0) && WEXITSTATUS(*r0) == 0) << (*c0)->Stdout() << (*c0)->Stderr();
  EXPECT_TRUE(WIFEXITED(*r1) && WEXITSTATUS(*r1) == 0) << (*c1)->Stdout() << (*c1)->Stderr();
  auto w0 = s0->Wait(10s);
  auto w1 = s1->Wait(10s);
  ASSERT_TRUE(w0.ok() && w1.ok());
  EXPECT_EQ(WEXITSTATUS(*w0), 0) << s0->Stdout();
  EXPECT_EQ(WEXITSTATUS(*w1), 0) << s1->Stdout();
  // Inside each pod, loopback traffic was redirected -- to the same pod.
  EXPECT_GE(SplicedOrBound(P(0), P(0)), 32 * kMiB);
  EXPECT_GE(SplicedOrBound(P(1), P(1)), 32 * kMiB);
  EXPECT_EQ(Redirected("shunt_sockmap_redirected_bytes_total", P(0), P(1)), 0);
  EXPECT_EQ(Redirected("shunt_sockmap_redirected_bytes_total", P(1), P(0)), 0);
}

TEST_P(FastpathTest, AgentKilledAndRestartedMidTransfer) {
  auto server = Server(P(1), 8086, "verify", 3);
  ASSERT_TRUE(server);
  Teach(P(0), P(1).ipv4 + ":8086");
  const uint64_t payload = 96 * kMiB;
  // ~4 s at 200 Mbit/s: long enough to kill and restart the agent in the middle.
  auto client =
      bed_->Spawn(P(0), {TestpeerBinary(), "hold", "--to=" + P(1).ipv4 + ":8086",
                         absl::StrCat("--bytes=", payload), "--seed=9", "--rate-mbps=200"});
  ASSERT_TRUE(client.ok());
  std::this_thread::sleep_for(1s);
  const auto links_before = PinnedLinkIds();
  EXPECT_GE(links_before.size(), 2u) << "the sockops link and read tracing";
  agent_->Kill();
  std::this_thread::sleep_for(500ms);
  ASSERT_TRUE((*client)->Running()) << "the transfer should still be going";
  agent_ = std::make_unique<AgentProcess>(*bed_, bed_->node(0), policy_);
  ASSERT_TRUE(agent_->Start().ok()) << agent_->Stderr();
  // The same version restarted keeps every attachment: the cgroup link is updated in place, the
  // tracing links (same instructions) are kept, so no traced function is patched under load.
  EXPECT_EQ(PinnedLinkIds(), links_before) << agent_->Stderr();
  auto done = (*client)->Wait(60s);
  ASSERT_TRUE(done.ok());
  EXPECT_TRUE(WIFEXITED(*done) && WEXITSTATUS(*done) == 0)
      << (*client)->Stdout() << (*client)->Stderr();
  auto r = nlohmann::json::parse((*client)->Stdout(), nullptr, false);
  EXPECT_EQ(r.value("ok", 0), 1) << (*client)->Stdout();
  // Counters survived the restart (pinned maps) and the spliced path carried the payload.
  const double carried = SplicedOrBound(P(0), P(1));
  EXPECT_GE(carried, payload);
  // New connections after the restart are redirected too.
  EXPECT_EQ(Verify(P(0), P(1).ipv4 + ":8086", 4 * kMiB).value("ok", 0), 1);
  EXPECT_GE(SplicedOrBound(P(0), P(1)), carried + 4 * kMiB);
}

// Uninstalling the agent in the middle of checksummed transfers between meshed pods loses and
// corrupts nothing: sockets leave the sockhash only once nothing is queued for them (the kernel
// frees a socket's sockmap queue with its sockhash entry), then carry on as plain TCP.
TEST_P(FastpathTest, UninstallMidTransferLosesNothing) {
  constexpr int kConns = 4;
  // A slow reader (64 KiB per 5 ms): the senders run ahead, so bytes wait in its sockmap queues
  // when the agent is uninstalled.
  auto server = Server(P(1), 8090, "verify", kConns + 1, "::", {"--read-delay-us=5000"});
  ASSERT_TRUE(server);
  // The class of this server is learned on a first connection, so that the ones below are
  // spliced from their first byte.
  ASSERT_EQ(Verify(P(0), P(1).ipv4 + ":8090", 1 * kMiB).value("ok", 0), 1);
  const uint64_t payload = 16 * kMiB;
  std::vector<ProcessPtr> clients;
  for (int i = 0; i < kConns; ++i) {
    auto c =
        bed_->Spawn(P(0), {TestpeerBinary(), "verify", "--to=" + P(1).ipv4 + ":8090",
                           absl::StrCat("--bytes=", payload), absl::StrCat("--seed=", 50 + i)});
    ASSERT_TRUE(c.ok());
    clients.push_back(std::move(*c));
  }
  // Uninstalled once they are well under way (how soon depends on the machine: an emulated CPU
  // takes seconds).
  double spliced = 0;
  // Where the queue is bound by the receive buffer (FastpathQueueBoundByReceiveBuffer) a stream
  // faster than its reader is spliced for its first tens of KiB at most (measured on 6.1: 64
  // bytes of the four), then takes the stack: there this test does not cover bytes waiting in a
  // sockmap queue at uninstall, only that the transfers are intact.
  const double want = FastpathQueueBoundByReceiveBuffer(*agent_) ? 0 : 8 * kMiB;
  for (int i = 0; i < 200 && spliced <= want; ++i) {
    std::this_thread::sleep_for(50ms);
    spliced = Redirected("shunt_sockmap_redirected_bytes_total", P(0), P(1));
  }
  EXPECT_GT(spliced, want) << "the transfers should be on the fast path before uninstall";
  agent_->Kill();
  auto out = UninstallAgent(*bed_, bed_->node(0));
  ASSERT_TRUE(out.ok() && out->exit_code == 0) << (out.ok() ? out->err : "");
  for (auto& c : clients) {
    auto done = c->Wait(60s);
    ASSERT_TRUE(done.ok());
    EXPECT_TRUE(WIFEXITED(*done) && WEXITSTATUS(*done) == 0) << c->Stdout() << c->Stderr();
    auto r = nlohmann::json::parse(c->Stdout(), nullptr, false);
    EXPECT_EQ(r.value("ok", 0), 1) << c->Stdout();  // the server checked every byte
  }
  agent_.reset();  // nothing left to stop; TearDown's uninstall finds nothing
}

TEST_P(FastpathTest, MalformedPolicyKeepsThePreviousStateInForce) {
  {
    std::string tmp = policy_ + ".tmp";
    FILE* f = fopen(tmp.c_str(), "w");
    ASSERT_NE(f, nullptr);
    fputs("{\"workloads\": [ {\"uid\": 42, garbage", f);
    fclose(f);
    ASSERT_EQ(rename(tmp.c_str(), policy_.c_str()), 0);
  }
  // The agent reports it: a clear log line, the error counter, /readyz.
  auto deadline = std::chrono::steady_clock::now() + 10s;
  double errors = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    auto s = agent_->Scrape();
    ASSERT_TRUE(s.ok());
    errors = SumSamples(*s, "shunt_policy_errors_total");
    if (errors > 0) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_GE(errors, 1);
  EXPECT_NE(agent_->Stderr().find("rejected"), std::string::npos) << agent_->Stderr();
  EXPECT_NE(agent_->Stderr().find(policy_), std::string::npos) << "the error names the file";
  auto ready = agent_->Get("/readyz");
  ASSERT_TRUE(ready.ok());
  EXPECT_EQ(ready->code, 503);
  EXPECT_NE(ready->body.find("rejected"), std::string::npos) << ready->body;
  // The previous policy is still enforced: meshed pods are still spliced.
  auto server = Server(P(1), 8087, "verify", 2);
  ASSERT_TRUE(server);
  Teach(P(0), P(1).ipv4 + ":8087");
  const double before = SplicedOrBound(P(0), P(1));
  EXPECT_EQ(Verify(P(0), P(1).ipv4 + ":8087", 4 * kMiB).value("ok", 0), 1);
  EXPECT_GE(SplicedOrBound(P(0), P(1)), before + 4 * kMiB);
}

TEST_P(FastpathTest, HealthAndReadiness) {
  auto health = agent_->Get("/healthz");
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(health->code, 200);
  auto ready = agent_->Get("/readyz");
  ASSERT_TRUE(ready.ok());
  EXPECT_EQ(ready->code, 200) << ready->body;
  auto s = agent_->Scrape();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(SumSamples(*s, "shunt_agent_synced"), 1);
  EXPECT_EQ(SumSamples(*s, "shunt_policy_meshed_local_workloads"), 2);
  EXPECT_EQ(SumSamples(*s, "shunt_policy_local_workloads"), 3);
}

std::string DriverName(const ::testing::TestParamInfo<testbed::CgroupDriver>& info) {
  return info.param == testbed::CgroupDriver::kSystemd ? "systemd" : "cgroupfs";
}

INSTANTIATE_TEST_SUITE_P(Drivers, FastpathTest,
                         ::testing::Values(testbed::CgroupDriver::kSystemd,
                                           testbed::CgroupDriver::kCgroupfs),
                         DriverName);

// A sockhash of 1 entry: most sockets cannot be inserted. Traffic must still flow, intact, on the
// normal path, and the agent must say why.
class FullSockhashTest : public FastpathTest {
 protected:
  std::vector<std::string> AgentFlags() const override { return {"--sockhash-size=1"}; }
};

TEST_P(FullSockhashTest, FullMapFallsBackToTheNormalPathNeverDrops) {
  auto server = Server(P(1), 8090, "verify", 21);
  ASSERT_TRUE(server);
  Teach(P(0), P(1).ipv4 + ":8090");
  auto r = Verify(P(0), P(1).ipv4 + ":8090", 256 * 1024, {"--conns=20", "--concurrent"});
  EXPECT_EQ(r.value("ok", 0), 20);
  EXPECT_EQ(r.value("failed", -1), 0);
  auto s = agent_->Scrape();
  ASSERT_TRUE(s.ok());
  EXPECT_GT(SumSamples(*s, "shunt_sockhash_socket_events_total", {{"event", "sockhash_full"}}), 0)
      << FastpathCounterSummary(*s);
  EXPECT_EQ(SumSamples(*s, "shunt_bpf_map_capacity_entries", {{"map", "shunt_sk_v1"}}), 1);
  // The one socket that made it in found no peer (it could not get in): it says so, or, where
  // only pairs are spliced (first connections plain), its peer took it out again.
  EXPECT_GT(
      SumSamples(*s, "shunt_sockmap_fallback_messages_total", {{"reason", "peer_not_ready"}}) +
          SumSamples(*s, "shunt_sockhash_socket_events_total", {{"event", "evicted"}}),
      0)
      << FastpathCounterSummary(*s);
}

INSTANTIATE_TEST_SUITE_P(Drivers, FullSockhashTest,
                         ::testing::Values(testbed::CgroupDriver::kSystemd), DriverName);

// A spliced connection between pods 0 and 1 with bytes queued unread both ways, and pod 2 (meshed
// too) building a socket pair with that very 4-tuple: it puts both pods' IPs on the loopback of a
// network namespace of its own (unshare, as user namespaces let any pod) and connects them. Its
// sockets must not take the pair's place in the sockhash (nor evict it): the bytes queued for
// pods 0 and 1 would go with their entries, a silent hole in both streams.
class HijackTest : public FastpathTest {
 protected:
  bool ThreeMeshedPods() const override { return true; }
};

// One end of the pair: a first connection that teaches the fast path (a hello each way, read
// non-blocking; the server's answer comes after its read), then the connection: a hello each way
// (both ends are then known to read safely), 1000 bytes each way left unread, then, once the file
// argv[5] exists, 100000 more and a half-close; then everything the other end sent is read and
// checked. Prints its length and whether it is intact.
constexpr char kPyHijackEnd[] = R"(
import hashlib, os, select, socket, sys, time
role, addr, port, ready, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def wait(s, w=False):
    r = select.select([] if w else [s], [s] if w else [], [], 30)
    if not (r[1] if w else r[0]): sys.exit("stalled")
def send(s, d):
    while d:
        wait(s, True); d = d[s.send(d):]
def recv(s, n=None):
    out = b""
    while n is None or len(out) < n:
        wait(s); k = s.recv(65536 if n is None else n - len(out))
        if not k: break
        out += k
    return out
def data(tag, n): return (hashlib.sha256(tag).digest() * (n // 32 + 1))[:n]
if role == "server":
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setblocking(False); ls.bind(("0.0.0.0", port)); ls.listen(8)
    open(ready + ".listening", "w").close()
def conn(src_port):
    if role == "server":
        wait(ls); c, _ = ls.accept(); c.setblocking(False); return c
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if src_port: c.bind(("0.0.0.0", src_port))
    c.setblocking(False); c.connect_ex((addr, port)); wait(c, True); return c
mine, theirs = (b"s", b"c") if role == "server" else (b"c", b"s")
# The server answers only once it has read: both classes are learned before the next connect
# (where FIONREAD readers cannot be seen, a class must have read before its socket is spliced).
c = conn(0)
if role == "server": assert recv(c, 5) == b"hello"; send(c, b"hello")
else: send(c, b"hello"); assert recv(c, 5) == b"hello"
c.close()
c = conn(int(sys.argv[6]) if role == "client" else 0)
send(c, b"hello"); assert recv(c, 5) == b"hello"
send(c, data(mine + b"1", 1000)); open(ready, "w").close()
while not os.path.exists(go): time.sleep(0.01)
send(c, data(mine + b"2", 100000)); c.shutdown(socket.SHUT_WR)
got = recv(c); want = data(theirs + b"1", 1000) + data(theirs + b"2", 100000)
print(len(got), "intact" if got == want else "CORRUPT")
)";

// The third pod: in a network namespace of its own, both pods' IPs on its loopback and a socket
// pair between them with the pair's 4-tuple (argv: client address and port, server address and
// port), which then carries a few bytes.
constexpr char kPyHijacker[] = R"(
import select, socket, sys
ca, cp, sa, sp = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.setblocking(False); ls.bind((sa, sp)); ls.listen(1)
c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
c.setblocking(False); c.bind((ca, cp)); c.connect_ex((sa, sp))
select.select([ls], [], [], 10); s, _ = ls.accept(); s.setblocking(False)
select.select([], [c], [], 10); c.send(b"x" * 1000)
select.select([s], [], [], 10); s.recv(65536)
print("built", c.getsockname(), c.getpeername())
)";

TEST_P(HijackTest, AnotherPodCannotTakeOverASplicedConnectionsKeys) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_FAIL() << "python3 is needed (scripts/setup.sh)";
  const int port = 8097, client_port = 30197;  // below the ephemeral range
  const std::string dir = bed_->work_dir();
  const std::string go = dir + "/hijack-go";
  auto server = bed_->Spawn(P(1), {"/usr/bin/python3", "-c", kPyHijackEnd, "server", "-",
                                   std::to_string(port), dir + "/hijack-server", go});
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE(WaitForFile(dir + "/hijack-server.listening")) << (*server)->Stderr();
  auto client = bed_->Spawn(
      P(0), {"/usr/bin/python3", "-c", kPyHijackEnd, "client", P(1).ipv4, std::to_string(port),
             dir + "/hijack-client", go, std::to_string(client_port)});
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE(WaitForFile(dir + "/hijack-server") && WaitForFile(dir + "/hijack-client"))
      << (*server)->Stderr() << (*client)->Stderr();
  auto before = agent_->Scrape();
  ASSERT_TRUE(before.ok());

  const std::string script =
      absl::StrCat("ip link set lo up && ip addr add ", P(0).ipv4, "/32 dev lo && ip addr add ",
                   P(1).ipv4, "/32 dev lo && exec /usr/bin/python3 -c \"$0\" ", P(0).ipv4, " ",
                   client_port, " ", P(1).ipv4, " ", port);
  auto hijack = bed_->Run(P(2), {"unshare", "-n", "sh", "-c", script, kPyHijacker}, 30s);
  ASSERT_TRUE(hijack.ok()) << hijack.status();
  EXPECT_EQ(hijack->exit_code, 0) << hijack->err;
  EXPECT_NE(hijack->out.find("built"), std::string::npos) << hijack->out << hijack->err;
  auto after = agent_->Scrape();
  ASSERT_TRUE(after.ok());

  ASSERT_TRUE(std::ofstream(go).good());
  auto s = (*server)->Wait(30s), c = (*client)->Wait(30s);
  EXPECT_TRUE(s.ok() && WIFEXITED(*s) && WEXITSTATUS(*s) == 0) << (*server)->Stderr();
  EXPECT_TRUE(c.ok() && WIFEXITED(*c) && WEXITSTATUS(*c) == 0) << (*client)->Stderr();
  EXPECT_EQ((*server)->Stdout(), "101000 intact\n");
  EXPECT_EQ((*client)->Stdout(), "101000 intact\n");

  // The pair was spliced both ways (the bytes queued unread were at risk) ...
  // (Where the queue is bound by the receive buffer, the 100000 bytes sent at once to a
  // reader that has not read take the stack: the 1000 before them were at risk.)
  const double sent_at_risk = FastpathQueueBoundByReceiveBuffer(*agent_) ? 1000 : 101000;
  EXPECT_GE(Redirected("shunt_sockmap_redirected_bytes_total", P(0), P(1)), sent_at_risk);
  EXPECT_GE(Redirected("shunt_sockmap_redirected_bytes_total", P(1), P(0)), sent_at_risk);
  // ... and the third pod's sockets were turned away for their addresses, before anything else.
  auto delta = [&](const char* event) {
    return SumSamples(*after, "shunt_sockhash_socket_events_total",
                      {{"event", event}, {"pod", P(2).name}}) -
           SumSamples(*before, "shunt_sockhash_socket_events_total",
                      {{"event", event}, {"pod", P(2).name}});
  };
  EXPECT_EQ(delta("skip_foreign_address"), 2) << FastpathCounterSummary(*after);
  EXPECT_EQ(delta("inserted"), 0) << FastpathCounterSummary(*after);
  EXPECT_EQ(SumSamples(*after, "shunt_sockhash_socket_events_total", {{"event", "evicted"}}) -
                SumSamples(*before, "shunt_sockhash_socket_events_total", {{"event", "evicted"}}),
            0)
      << FastpathCounterSummary(*after);
}

INSTANTIATE_TEST_SUITE_P(Drivers, HijackTest, ::testing::Values(testbed::CgroupDriver::kSystemd),
                         DriverName);

// Without the kernel objects of a running agent: uninstall leaves nothing behind.
TEST(FastpathUninstall, LeavesNoProgramLinkPinOrMap) {
  testbed::Options opts;
  opts.nodes = 1;
  opts.pods_per_node = 2;
  auto bed = Testbed::Create(opts);
  ASSERT_TRUE(bed.ok()) << bed.status();
  auto policy = (*bed)->WritePolicyFile("policy.json", {{(*bed)->pod(0, 0).name, true}});
  ASSERT_TRUE(policy.ok());
  const auto& node = (*bed)->node(0);
  {
    AgentProcess agent(**bed, node, *policy);
    ASSERT_TRUE(agent.Start().ok()) << agent.Stderr();
    agent.Kill();  // a crashed agent: everything is still pinned
  }
  const std::string pin_dir = "/sys/fs/bpf/shunt/" + node.name;
  ASSERT_TRUE(FileExists(pin_dir + "/link_sockops"));
  auto cg = (*bed)->RunOnNode(node, {"bpftool", "-j", "cgroup", "show", node.cgroup_root}, 10s);
  ASSERT_TRUE(cg.ok());
  EXPECT_NE(cg->out.find("shunt_sockops"), std::string::npos) << cg->out;

  auto out = UninstallAgent(**bed, node);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->exit_code, 0) << out->err;
  EXPECT_FALSE(FileExists(pin_dir));

  cg = (*bed)->RunOnNode(node, {"bpftool", "-j", "cgroup", "show", node.cgroup_root}, 10s);
  ASSERT_TRUE(cg.ok());
  EXPECT_EQ(cg->out.find("shunt_sockops"), std::string::npos) << cg->out;
  // Programs and maps are freed by the kernel asynchronously (RCU): poll, bounded.
  bool gone = false;
  std::string progs, maps;
  for (int i = 0; i < 100 && !gone; ++i) {
    auto p = (*bed)->RunOnNode(node, {"bpftool", "-j", "prog", "show"}, 10s);
    auto m = (*bed)->RunOnNode(node, {"bpftool", "-j", "map", "show"}, 10s);
    ASSERT_TRUE(p.ok() && m.ok());
    progs = p->out;
    maps = m->out;
    gone = progs.find("\"shunt_sockops\"") == std::string::npos &&
           progs.find("\"shunt_sk_msg\"") == std::string::npos &&
           maps.find("\"shunt_") == std::string::npos;
    if (!gone) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(gone) << progs << maps;
  (*bed)->Teardown();
}

TEST(FastpathStartup, MissingPrivilegeIsOneClearLineAndExitCode2) {
  testbed::Options opts;
  opts.nodes = 1;
  opts.pods_per_node = 1;
  auto bed = Testbed::Create(opts);
  ASSERT_TRUE(bed.ok()) << bed.status();
  const auto& node = (*bed)->node(0);
  // Drop every capability: the probe must name what is missing instead of failing later.
  auto out =
      (*bed)->RunOnNode(node,
                        {"setpriv", "--inh-caps=-all", "--bounding-set=-all", "--", AgentBinary(),
                         "--node-name=" + node.name, "--cgroup-root=" + node.cgroup_root},
                        30s);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->exit_code, 2) << out->err;
  EXPECT_NE(out->err.find("kernel feature missing: privileges"), std::string::npos) << out->err;
  EXPECT_FALSE(FileExists("/sys/fs/bpf/shunt/" + node.name));
  (*bed)->Teardown();
}

}  // namespace
}  // namespace shunt::e2e
