// HTTP/2 and gRPC through the agent's relay (agent/proxy/tcp_relay.h, http2/h2_session.h) on
// loopback, as root (IP_TRANSPARENT), with ordinary clients and servers: curl and h2load
// (nghttp2's) against nginx speaking h2c, and a gRPC client of the test's Echo service
// (proto/echo.proto) against its gRPC server. The port needs L7 (a DENY of /admin* and of
// Echo/Admin): the relay sniffs the HTTP/2 preface and reads every stream; denied ones are
// answered 403 or PERMISSION_DENIED and never reach the server; drain is a GOAWAY.
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "agent/capture/netns.h"
#include "agent/proxy/tcp_relay.h"
#include "echo.grpc.pb.h"
#include "tests/e2e/echo_service.h"
#include "tests/e2e/relay_util.h"
#include "tests/test_util.h"

namespace shunt::agent {
namespace {

using namespace std::chrono_literals;

// nginx (Debian's, one process) serving h2c with prior knowledge on a loopback port: every path
// answers 200 "hello <path>\n". Its files under a directory of its own, removed with it.
class NginxH2 {
 public:
  // The port it listens on; 0 when it did not come up.
  uint16_t Start() {
    char tmpl[] = "/tmp/shunt-h2-nginx-XXXXXX";
    if (!mkdtemp(tmpl)) return 0;
    dir_ = tmpl;
    dir_guard_.path = dir_;
    UniqueFd probe = Listen(false);
    const uint16_t port = PortOf(probe.get());
    probe.Reset();
    std::ofstream(dir_ + "/nginx.conf") << NginxH2Config(dir_, absl::StrCat("127.0.0.1:", port));
    child_.pid = fork();
    if (child_.pid == 0) {
      execlp("nginx", "nginx", "-p", (dir_ + "/").c_str(), "-c", (dir_ + "/nginx.conf").c_str(),
             "-e", (dir_ + "/error.log").c_str(), nullptr);
      _exit(127);
    }
    const bool up = shunt::test::Eventually(
        [&] {
          UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
          sockaddr_storage a = Loopback(port);
          return connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(sockaddr_in)) == 0;
        },
        10s);
    return up ? port : 0;
  }
  std::string Log() const { return Output("cat " + dir_ + "/error.log 2>&1"); }
  const std::string& Dir() const { return dir_; }

 private:
  struct RemovedAtEnd {
    std::string path;
    ~RemovedAtEnd() {
      if (!path.empty()) Output("rm -rf " + path);
    }
  };
  std::string dir_;
  RemovedAtEnd dir_guard_;  // after nginx is gone (members go in reverse order)
  Child child_;
};

using shunt::test::EchoService;

class H2RelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    signal(SIGPIPE, SIG_IGN);
    auto ns = OpenNetns("/proc/self/ns/net");
    ASSERT_TRUE(ns.ok());
    netns_ = std::move(*ns);
    auto r = TcpRelay::Start(RelayOptions{});
    ASSERT_TRUE(r.ok()) << r.status();
    relay_ = std::move(*r);
    UniqueFd front = Listen(true);
    front_port_ = PortOf(front.get());
    front_fd_ = front.get();
    front_dup_ = UniqueFd(dup(front.get()));  // a successor's copy of the listener (handoff)
    ASSERT_TRUE(relay_->AddListener(std::move(front), Decide()).ok());
  }
  // The decision: as an L7 DENY of /admin* and Echo/Admin at the port makes it (HTTP read
  // request by request, opaque bytes refused).
  RelayDecide Decide() {
    return [this](const sockaddr_storage&, const sockaddr_storage&, RelayCheck) {
      RelayDecision d;
      d.allow = true;
      d.netns_fd = netns_.get();
      d.as = Loopback(0);
      d.to = Loopback(upstream_port_.load());
      d.l7 = true;
      d.opaque_allow = opaque_allow_.load();
      d.protocol = protocol_.load();
      d.authorize = DenyAdmin("/shunt.test.Echo/Admin");
      d.exchanges = RecordInto(mu_, records_);
      return d;
    };
  }
  void TearDown() override {
    if (grpc_server_) grpc_server_->Shutdown(std::chrono::system_clock::now() + 5s);
  }

  // The Echo server on a loopback port of its own, the relay's upstream.
  void StartEcho() {
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&echo_);
    grpc_server_ = b.BuildAndStart();
    ASSERT_TRUE(grpc_server_ && port > 0);
    upstream_port_ = static_cast<uint16_t>(port);
  }
  std::unique_ptr<shunt::test::Echo::Stub> EchoThroughTheRelay() {
    return shunt::test::Echo::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", front_port_), grpc::InsecureChannelCredentials()));
  }
  std::vector<ExchangeRecord> Records() {
    absl::MutexLock l(&mu_);
    return records_;
  }
  std::string Base() const { return absl::StrCat("http://127.0.0.1:", front_port_); }

  UniqueFd netns_;
  std::unique_ptr<TcpRelay> relay_;
  uint16_t front_port_ = 0;
  int front_fd_ = -1;
  UniqueFd front_dup_;
  std::atomic<uint16_t> upstream_port_{0};
  std::atomic<RelayDecision::Protocol> protocol_{RelayDecision::Protocol::kSniff};  // appProtocol
  std::atomic<bool> opaque_allow_{false};
  EchoService echo_;
  std::unique_ptr<grpc::Server> grpc_server_;
  absl::Mutex mu_;
  std::vector<ExchangeRecord> records_ ABSL_GUARDED_BY(mu_);
};

// curl, one request per connection (curl 7.88's several URLs over prior knowledge lose all but
// the first even without a proxy), and nghttp2's client with three on one connection.
TEST_F(H2RelayTest, CurlAndNghttpOverH2cGetTheirAnswersAndA403ForADeniedPath) {
  NginxH2 nginx;
  upstream_port_ = nginx.Start();
  ASSERT_NE(upstream_port_.load(), 0) << nginx.Log();
  auto curl = [&](const std::string& path) {
    return Output("timeout 20 curl -s --http2-prior-knowledge -w '|%{http_code}|%{http_version}' " +
                  Base() + path);
  };
  EXPECT_EQ(curl("/one"), "hello /one\n|200|2") << nginx.Log();
  EXPECT_EQ(curl("/admin/x"), "denied by policy\n|403|2");
  // nghttp -s: a line per stream, "id responseEnd requestStart process code size path".
  const std::string stats = Output("timeout 20 nghttp -s " + Base() + "/a " + Base() + "/admin/y " +
                                   Base() + "/b 2>&1");
  std::map<std::string, std::string> codes;
  for (absl::string_view line : absl::StrSplit(stats, '\n')) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() == 7 && absl::StartsWith(f[6], "/")) codes[std::string(f[6])] = std::string(f[4]);
  }
  EXPECT_EQ(codes, (std::map<std::string, std::string>{{"/a", "200"}, {"/admin/y", "403"},
                                                       {"/b", "200"}}))
      << stats;
  EXPECT_TRUE(shunt::test::Eventually([&] { return relay_->stats().active == 0; }, 5s));
  const RelayStats st = relay_->stats();
  EXPECT_EQ(st.http2_connections, 3u);
  EXPECT_EQ(st.http_requests, 5u);
  EXPECT_EQ(st.http_denied, 2u);
  const std::vector<ExchangeRecord> records = Records();
  ASSERT_EQ(records.size(), 5u);
  EXPECT_EQ(records[0].status, 200);
  EXPECT_EQ(records[0].response_bytes, std::string("hello /one\n").size());
  EXPECT_EQ(records[1].request.path, "/admin/x");
  EXPECT_TRUE(records[1].denied);
  EXPECT_EQ(records[1].policy, "test/no-admin");
}

TEST_F(H2RelayTest, H2loadManyConcurrentStreamsAllSucceedAndDeniedOnesAllGet403) {
  NginxH2 nginx;
  upstream_port_ = nginx.Start();
  ASSERT_NE(upstream_port_.load(), 0) << nginx.Log();
  // 4 connections, 32 streams at once on each.
  const std::string ok = Output("timeout 60 h2load -n 4000 -c 4 -m 32 " + Base() + "/one 2>&1");
  EXPECT_TRUE(absl::StrContains(ok, "4000 succeeded, 0 failed, 0 errored")) << ok;
  EXPECT_TRUE(absl::StrContains(ok, "status codes: 4000 2xx, 0 3xx, 0 4xx, 0 5xx")) << ok;
  const std::string denied =
      Output("timeout 60 h2load -n 400 -c 2 -m 16 " + Base() + "/admin/x 2>&1");
  EXPECT_TRUE(absl::StrContains(denied, "status codes: 0 2xx, 0 3xx, 400 4xx, 0 5xx")) << denied;
  EXPECT_TRUE(shunt::test::Eventually([&] { return relay_->stats().active == 0; }, 5s));
  const RelayStats st = relay_->stats();
  EXPECT_EQ(st.http2_connections, 6u);
  EXPECT_EQ(st.http_requests, 4400u);
  EXPECT_EQ(st.http_denied, 400u);
}

TEST_F(H2RelayTest, GrpcUnaryAndStreamingCallsCarryTheirBodiesAndTrailersAndADeniedMethodFails) {
  StartEcho();
  if (HasFatalFailure()) return;
  auto stub = EchoThroughTheRelay();
  // Unary, 1 MiB each way, the server's trailing metadata back.
  shunt::test::Chunk req, resp;
  req.set_data(std::string(1 << 20, 'u'));
  req.set_seq(7);
  grpc::ClientContext unary;
  unary.set_deadline(std::chrono::system_clock::now() + 20s);
  grpc::Status s = stub->Unary(&unary, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
  EXPECT_EQ(resp.data(), req.data());
  const auto trailers = unary.GetServerTrailingMetadata();
  auto seq = trailers.find("x-echo-seq");
  ASSERT_NE(seq, trailers.end());
  EXPECT_EQ(std::string(seq->second.data(), seq->second.size()), "7");
  // Bidirectional streaming: 1000 messages of 16 KiB, written while the answers are read.
  grpc::ClientContext chat_ctx;
  chat_ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto chat = stub->Chat(&chat_ctx);
  constexpr int kMessages = 1000;
  std::thread writer([&] {
    shunt::test::Chunk c;
    for (int i = 0; i < kMessages; ++i) {
      c.set_seq(i);
      c.set_data(std::string(16 << 10, static_cast<char>('a' + i % 26)));
      if (!chat->Write(c)) return;
    }
    chat->WritesDone();
  });
  shunt::test::Chunk got;
  int read = 0;
  while (chat->Read(&got)) {
    EXPECT_EQ(got.seq(), read);
    EXPECT_EQ(got.data(), std::string(16 << 10, static_cast<char>('a' + read % 26)));
    ++read;
  }
  writer.join();
  EXPECT_EQ(read, kMessages);
  s = chat->Finish();
  EXPECT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
  // A method the policy denies: PERMISSION_DENIED from the proxy; the server never called.
  grpc::ClientContext admin;
  admin.set_deadline(std::chrono::system_clock::now() + 20s);
  s = stub->Admin(&admin, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << s.error_message();
  EXPECT_EQ(echo_.admin_calls.load(), 0);
  EXPECT_EQ(echo_.unary_calls.load(), 1);
  const RelayStats st = relay_->stats();
  EXPECT_EQ(st.http2_connections, 1u) << "one channel, one connection";
  EXPECT_EQ(st.http_denied, 1u);
  const std::vector<ExchangeRecord> records = Records();
  ASSERT_EQ(records.size(), 3u);
  EXPECT_TRUE(records[0].request.grpc);
  EXPECT_EQ(records[0].request.path, "/shunt.test.Echo/Unary");
  EXPECT_EQ(records[0].grpc_status, 0);
  EXPECT_GE(records[0].request_bytes, 1u << 20);
  EXPECT_GE(records[1].response_bytes, kMessages * (16u << 10));
  EXPECT_EQ(records[2].grpc_status, 7);
  EXPECT_TRUE(records[2].denied);
}

// The agent going away (Drain, its listener handed to a successor as the agent's restart does):
// a GOAWAY; the stream in flight goes on to its end, and the next call opens a new connection,
// which the successor serves.
TEST_F(H2RelayTest, DrainSendsAGoawayTheOpenStreamFinishesAndTheNextCallTakesANewConnection) {
  StartEcho();
  if (HasFatalFailure()) return;
  auto stub = EchoThroughTheRelay();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 30s);
  auto chat = stub->Chat(&ctx);
  shunt::test::Chunk c, got;
  auto round = [&](int seq) {
    c.set_seq(seq);
    c.set_data("m" + std::to_string(seq));
    ASSERT_TRUE(chat->Write(c));
    ASSERT_TRUE(chat->Read(&got));
    EXPECT_EQ(got.seq(), seq);
  };
  for (int i = 0; i < 10; ++i) round(i);
  relay_->Drain();
  relay_->RemoveListener(front_fd_);
  auto successor = TcpRelay::Start(RelayOptions{});
  ASSERT_TRUE(successor.ok()) << successor.status();
  ASSERT_TRUE((*successor)->AddListener(std::move(front_dup_), Decide()).ok());
  for (int i = 10; i < 110; ++i) round(i);
  chat->WritesDone();
  EXPECT_FALSE(chat->Read(&got));
  grpc::Status s = chat->Finish();
  EXPECT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
  EXPECT_TRUE(shunt::test::Eventually([&] { return relay_->stats().active == 0; }, 10s))
      << "the drained connection ends once its last stream did";
  shunt::test::Chunk req, resp;
  req.set_seq(1);
  grpc::ClientContext unary;
  unary.set_deadline(std::chrono::system_clock::now() + 20s);
  s = stub->Unary(&unary, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
  EXPECT_EQ(relay_->stats().http2_connections, 1u);
  EXPECT_EQ(relay_->stats().resets, 0u);
  EXPECT_EQ((*successor)->stats().http2_connections, 1u);
  EXPECT_EQ(echo_.unary_calls.load(), 1);
}

// A port declared HTTP (appProtocol http) is never opaque: a server that greets first, or a client
// that speaks something else, is reset (counted not_http); declared HTTP/2 (grpc) is read as such
// from the first byte.
TEST_F(H2RelayTest, APortDeclaredHttpIsNeverOpaqueAndOneDeclaredGrpcIsHttp2ButForTheWorkloadsOwnTls) {
  UniqueFd backend = Listen(false);
  upstream_port_ = PortOf(backend.get());
  protocol_ = RelayDecision::Protocol::kHttp;
  opaque_allow_ = true;  // declared HTTP is never opaque, even where opaque bytes are admitted
  {
    UniqueFd c = Connect(front_port_);
    UniqueFd s(accept4(backend.get(), nullptr, nullptr, SOCK_CLOEXEC));
    WriteAll(s.get(), "220 mail ESMTP\r\n");  // a greeting: not HTTP
    int err = 0;
    EXPECT_EQ(ReadAll(c.get(), &err), "");
    EXPECT_EQ(err, ECONNRESET);
  }
  {
    UniqueFd c = Connect(front_port_);
    UniqueFd s(accept4(backend.get(), nullptr, nullptr, SOCK_CLOEXEC));
    WriteAll(c.get(), std::string("\x16\x03\x01\x00\x05hello", 10));  // TLS: not HTTP
    int err = 0;
    EXPECT_EQ(ReadAll(c.get(), &err), "");
    EXPECT_EQ(err, ECONNRESET);
  }
  EXPECT_EQ(relay_->stats().not_http, 2u);
  EXPECT_EQ(relay_->stats().opaque_l7, 0u);
  // Declared grpc, and the workload's own TLS on it (gRPC over TLS): opaque bytes, both ways.
  protocol_ = RelayDecision::Protocol::kHttp2;
  {
    UniqueFd c = Connect(front_port_);
    const std::string hello("\x16\x03\x01\x00\x05hello", 10);
    WriteAll(c.get(), hello);
    UniqueFd s(accept4(backend.get(), nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(s.valid());
    std::string got(hello.size(), '\0');
    ASSERT_EQ(recv(s.get(), got.data(), got.size(), MSG_WAITALL), ssize_t(hello.size()));
    EXPECT_EQ(got, hello);
    WriteAll(s.get(), std::string("\x16\x03\x03\x00\x02ok", 7));
    shutdown(s.get(), SHUT_WR);
    shutdown(c.get(), SHUT_WR);
    int err = 0;
    EXPECT_EQ(ReadAll(c.get(), &err), std::string("\x16\x03\x03\x00\x02ok", 7));
    EXPECT_EQ(err, 0);
  }
  EXPECT_EQ(relay_->stats().opaque_l7, 1u);
  EXPECT_EQ(relay_->stats().http2_connections, 0u);
  // Where opaque bytes are not admitted, that TLS is refused (reset).
  opaque_allow_ = false;
  {
    UniqueFd c = Connect(front_port_);
    WriteAll(c.get(), std::string("\x16\x03\x01\x00\x05hello", 10));
    int err = 0;
    EXPECT_EQ(ReadAll(c.get(), &err), "");
    EXPECT_EQ(err, ECONNRESET);
  }
  EXPECT_EQ(relay_->stats().opaque_refused, 1u);
  // Anything else is HTTP/2 at once, and the call works as sniffed ones do.
  backend.Reset();
  StartEcho();
  if (HasFatalFailure()) return;
  auto stub = EchoThroughTheRelay();
  shunt::test::Chunk req, resp;
  req.set_data("declared");
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 20s);
  grpc::Status st = stub->Unary(&ctx, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(resp.data(), "declared");
  EXPECT_EQ(relay_->stats().http2_connections, 1u);
}

// A pod over its buffer budget still reads the WINDOW_UPDATEs that move the DATA its HTTP/2
// sessions hold: nghttp's 64 KiB windows against the relay's 1 MiB ones make the relay hold
// most of each response for the client, far over a 64 KiB budget. Without reading the client's
// WINDOW_UPDATEs nothing would ever move again (the downloads would time out).
TEST_F(H2RelayTest, APodOverItsBufferBudgetStillReadsTheWindowUpdatesItsHeldDataWaitsFor) {
  NginxH2 nginx;
  upstream_port_ = nginx.Start();
  ASSERT_NE(upstream_port_.load(), 0);
  Output("mkdir -p " + nginx.Dir() + "/files && head -c 8388608 /dev/urandom > " + nginx.Dir() +
         "/files/big");
  const std::string want = Output("sha256sum < " + nginx.Dir() + "/files/big");
  RelayOptions o;
  o.max_buffered_per_group = 64 << 10;
  auto small = TcpRelay::Start(o);
  ASSERT_TRUE(small.ok()) << small.status();
  UniqueFd front = Listen(true);
  const uint16_t port = PortOf(front.get());
  ASSERT_TRUE((*small)->AddListener(std::move(front), Decide()).ok());
  const std::string url = absl::StrCat("http://127.0.0.1:", port, "/files/big");
  // Four at once, each on a connection of its own; each download checksummed.
  std::vector<std::string> got(4);
  std::vector<std::thread> clients;
  for (size_t i = 0; i < got.size(); ++i) {
    clients.emplace_back(
        [&, i] { got[i] = Output("timeout 60 nghttp -w 16 -W 16 " + url + " | sha256sum"); });
  }
  for (auto& t : clients) t.join();
  for (const std::string& g : got) EXPECT_EQ(g, want);
  const RelayStats st = (*small)->stats();
  EXPECT_GT(st.buffer_budget_waits, 0u);  // the budget was reached, and held the others back
  EXPECT_EQ(st.http2_connections, 4u);
  EXPECT_TRUE(shunt::test::Eventually([&] { return (*small)->stats().buffered == 0; }, 10s));
}

}  // namespace
}  // namespace shunt::agent
