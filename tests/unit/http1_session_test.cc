// The proxy's HTTP/1.1 session (agent/proxy/http1_session.h), bytes in and out without sockets:
// what the server receives for what the client sent and the other way round, requests refused
// by policy or by the framer, tunnels, drain, backpressure, and the records it reports. The
// relay's sockets around it are tested in tests/e2e (RelayHttp, CaptureTest).
#include "agent/proxy/http1_session.h"

#include <gtest/gtest.h>

#include "tests/unit/recording_observer.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"

namespace shunt::agent {
namespace {

class Session : public ::testing::Test {
 protected:
  void Make(Http1Options options = {}) {
    session_ = std::make_unique<Http1Session>(
        options,
        [this](const L7Request& r) {
          seen_.push_back(r);
          L7Verdict v;
          if (absl::StartsWith(r.path, "/admin")) {
            v.allow = false;
            v.policy = "ns/no-admin";
          }
          return v;
        },
        [this](const ExchangeRecord& r) { records_.push_back(r); });
  }
  void SetUp() override { Make(); }

  // Offers everything, as the relay does; returns what was not taken.
  std::string Client(std::string_view bytes) {
    const size_t n = session_->FromClient(bytes);
    return std::string(bytes.substr(n));
  }
  std::string Server(std::string_view bytes) {
    const size_t n = session_->FromServer(bytes);
    return std::string(bytes.substr(n));
  }
  std::string ToServer() { return std::exchange(session_->to_server, ""); }
  std::string ToClient() { return std::exchange(session_->to_client, ""); }

  std::vector<L7Request> seen_;
  std::vector<ExchangeRecord> records_;
  std::unique_ptr<Http1Session> session_;  // last: its destructor reports into records_
};

TEST_F(Session, KeepAliveRequestsAreForwardedReserialisedAndAnsweredInOrder) {
  EXPECT_EQ(Client("GET /a?x=1 HTTP/1.1\r\nHost:   svc  \r\nX-A: 1\r\n\r\n"
                   "GET /b HTTP/1.1\r\nHost: svc\r\n\r\n"),
            "");
  // What the server gets is what the framer read, written out again: spaces gone.
  EXPECT_EQ(ToServer(),
            "GET /a?x=1 HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\n\r\n"
            "GET /b HTTP/1.1\r\nHost: svc\r\n\r\n");
  ASSERT_EQ(seen_.size(), 2u);
  EXPECT_EQ(seen_[0].path, "/a");
  EXPECT_EQ(seen_[0].authority, "svc");
  EXPECT_EQ(Server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                   "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            "");
  EXPECT_EQ(ToClient(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(records_.size(), 2u);
  EXPECT_EQ(records_[0].status, 200);
  EXPECT_EQ(records_[0].response_bytes, 2u);
  EXPECT_EQ(records_[1].status, 404);
  EXPECT_FALSE(session_->shut_client || session_->shut_server || session_->abort);
}

TEST_F(Session, ChunkedBodiesAreRechunkedWithTheirTrailersAndTheirExtensionsDropped) {
  Client("POST /up HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
         "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 9\r\n\r\n");
  EXPECT_EQ(ToServer(),
            "POST /up HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 9\r\n\r\n");
  Server("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n");
  EXPECT_EQ(ToClient(), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n");
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].request_bytes, 5u);
  EXPECT_EQ(records_[0].response_bytes, 1u);
}

TEST_F(Session, ADeniedRequestIsAnsweredInItsPlaceAndNeverReachesTheServer) {
  Client("GET /a HTTP/1.1\r\nHost: s\r\n\r\n"
         "POST /admin/x HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhello"
         "GET /b HTTP/1.1\r\nHost: s\r\n\r\n");
  EXPECT_EQ(ToServer(), "GET /a HTTP/1.1\r\nHost: s\r\n\r\nGET /b HTTP/1.1\r\nHost: s\r\n\r\n");
  EXPECT_EQ(ToClient(), "") << "the 403 waits for the answer to /a";
  Server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
  const std::string first = ToClient();
  EXPECT_TRUE(absl::StartsWith(first, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 403 "))
      << first;
  EXPECT_FALSE(absl::StrContains(first, "connection: close"));
  Server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb");
  EXPECT_EQ(ToClient(), "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb");
  ASSERT_EQ(records_.size(), 3u);
  EXPECT_TRUE(records_[1].denied);
  EXPECT_EQ(records_[1].status, 403);
  EXPECT_EQ(records_[1].policy, "ns/no-admin");
  EXPECT_FALSE(session_->shut_client);
}

TEST_F(Session, ADeniedRequestWaitingForContinueEndsTheConnectionWithItsAnswer) {
  Client("PUT /admin HTTP/1.1\r\nHost: s\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n");
  EXPECT_EQ(ToServer(), "");
  const std::string answer = ToClient();
  EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 403 Forbidden\r\n")) << answer;
  EXPECT_TRUE(absl::StrContains(answer, "connection: close"));
  EXPECT_TRUE(session_->shut_client && session_->shut_server);
  // The client may still send its body: read and dropped, not forwarded.
  EXPECT_EQ(Client(std::string(100, 'x')), "");
  EXPECT_EQ(ToServer(), "");
}

TEST_F(Session, ContinueAndInterimResponsesPassOn) {
  Client("PUT /f HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
  EXPECT_TRUE(absl::StrContains(ToServer(), "Expect: 100-continue"));
  Server("HTTP/1.1 100 Continue\r\n\r\n");
  EXPECT_EQ(ToClient(), "HTTP/1.1 100 Continue\r\n\r\n");
  Client("abc");
  EXPECT_EQ(ToServer(), "abc");
  Server("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(ToClient(), "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].status, 201);
}

TEST_F(Session, SmugglingAttemptsAreRefusedAndNothingOfThemIsForwarded) {
  for (const char* attack : {
           "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
           "0\r\n\r\nGET /admin HTTP/1.1\r\nHost: s\r\n\r\n",
           "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
           "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
           "GET / HTTP/1.1\nHost: s\n\n",
           "GET / HTTP/1.1\r\nHost: s\r\nX: a\r\n b\r\n\r\n",
       }) {
    SCOPED_TRACE(attack);
    Make();
    EXPECT_EQ(Client(attack), "");
    EXPECT_EQ(ToServer(), "");
    const std::string answer = ToClient();
    EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 400 Bad Request\r\n")) << answer;
    EXPECT_TRUE(absl::StrContains(answer, "connection: close"));
    EXPECT_TRUE(session_->shut_client && session_->shut_server);
  }
}

TEST_F(Session, ABadRequestAfterAGoodOneIsAnsweredAfterTheGoodOnesResponse) {
  Client("GET /a HTTP/1.1\r\nHost: s\r\n\r\nGET /b HTTP/1.1\r\nHost: s\r\nHost: t\r\n\r\n");
  EXPECT_EQ(ToServer(), "GET /a HTTP/1.1\r\nHost: s\r\n\r\n");
  EXPECT_EQ(ToClient(), "");
  EXPECT_FALSE(session_->shut_client);
  Server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  const std::string out = ToClient();
  EXPECT_TRUE(absl::StartsWith(out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 400 "))
      << out;
  EXPECT_TRUE(session_->shut_client && session_->shut_server);
}

TEST_F(Session, AnUpgradeAnsweredWith101BecomesATunnel) {
  EXPECT_EQ(Client("GET /ws HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                   "\x81\x05hello"),
            "\x81\x05hello")
      << "the bytes after an Upgrade wait for its answer";
  EXPECT_TRUE(session_->waiting_client);
  EXPECT_TRUE(absl::StartsWith(ToServer(), "GET /ws HTTP/1.1\r\n"));
  EXPECT_EQ(Server("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket"
                   "\r\n\r\n\x82\x01z"),
            "\x82\x01z");
  EXPECT_TRUE(session_->tunnel);
  EXPECT_TRUE(absl::StartsWith(ToClient(), "HTTP/1.1 101 Switching Protocols\r\n"));
}

TEST_F(Session, AnUpgradeTheServerRefusesLeavesTheConnectionHttp) {
  EXPECT_EQ(Client("GET /ws HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
                   "GET /next HTTP/1.1\r\nHost: s\r\n\r\n"),
            "GET /next HTTP/1.1\r\nHost: s\r\n\r\n");
  ToServer();
  Server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  EXPECT_FALSE(session_->tunnel);
  EXPECT_FALSE(session_->waiting_client);
  EXPECT_EQ(Client("GET /next HTTP/1.1\r\nHost: s\r\n\r\n"), "");
  EXPECT_EQ(ToServer(), "GET /next HTTP/1.1\r\nHost: s\r\n\r\n");
}

// Where the port's policy admits no opaque bytes, no request makes a tunnel: an Upgrade reaches
// the server without its Upgrade fields (answered as HTTP), a 101 anyway is a 502, CONNECT a 403.
constexpr char kBadGateway[] =
    "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: 12\r\nconnection: close\r\n\r\nBad Gateway\n";

TEST_F(Session, WithoutTunnelsAnUpgradeIsPlainHttpAndConnectIsRefused) {
  Http1Options o;
  o.tunnels = false;
  Make(o);
  Client("GET /x HTTP/1.1\r\nHost: s\r\nConnection: Upgrade, HTTP2-Settings, keep-alive\r\n"
         "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n");
  EXPECT_EQ(ToServer(), "GET /x HTTP/1.1\r\nHost: s\r\nConnection: keep-alive\r\n\r\n");
  Server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
  EXPECT_EQ(ToClient(), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
  EXPECT_FALSE(session_->tunnel);
  EXPECT_EQ(Client("GET /ws HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
            "");
  EXPECT_EQ(ToServer(), "GET /ws HTTP/1.1\r\nHost: s\r\n\r\n");
  EXPECT_EQ(Server("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket"
                   "\r\n\r\n\x82\x01z"),
            "");
  EXPECT_FALSE(session_->tunnel);
  EXPECT_EQ(ToClient(), kBadGateway);
  EXPECT_TRUE(session_->shut_client);
  ASSERT_EQ(records_.size(), 2u);
  EXPECT_EQ(records_[1].status, 502);

  Make(o);
  records_.clear();
  EXPECT_EQ(Client("CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n\x00\x01"), "");
  EXPECT_EQ(ToServer(), "");
  EXPECT_TRUE(absl::StartsWith(ToClient(), "HTTP/1.1 403 Forbidden\r\n"));
  EXPECT_FALSE(session_->tunnel);
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_TRUE(records_[0].denied);
}

// A tunnel asked for under a policy that admitted opaque bytes and answered after one that no
// longer does: refused (502), never opened.
TEST_F(Session, ATunnelAnsweredAfterThePolicyStoppedAdmittingTunnelsIsRefused) {
  EXPECT_EQ(Client("CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"), "");
  EXPECT_EQ(ToServer(), "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n");
  session_->SetTunnelsAllowed(false);
  Server("HTTP/1.1 200 Connection established\r\n\r\n\x00\x01");
  EXPECT_FALSE(session_->tunnel);
  EXPECT_EQ(ToClient(), kBadGateway);
  EXPECT_TRUE(session_->shut_client);
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].status, 502);
}

// Drained, an idle connection stays open until CloseIdle (the relay's sweep, once it stayed
// idle): a request that comes meanwhile is answered, with "Connection: close"; a busy one closes
// after its response.
TEST_F(Session, DrainClosesABusyConnectionAfterItsResponseAndAnIdleOneWhenToldItStayedIdle) {
  EXPECT_TRUE(session_->Idle());
  session_->Drain();
  EXPECT_FALSE(session_->shut_client || session_->shut_server);
  session_->CloseIdle();
  EXPECT_TRUE(session_->shut_client && session_->shut_server);

  Make();
  session_->Drain();
  Client("GET /b HTTP/1.1\r\nHost: s\r\n\r\n");
  EXPECT_FALSE(session_->Idle());
  session_->CloseIdle();  // not idle: nothing happens
  EXPECT_FALSE(session_->shut_client);
  EXPECT_EQ(ToServer(), "GET /b HTTP/1.1\r\nHost: s\r\n\r\n");
  Server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(ToClient(), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  EXPECT_TRUE(session_->shut_client && session_->shut_server);

  Make();
  Client("GET /a HTTP/1.1\r\nHost: s\r\n\r\n");
  ToServer();
  session_->Drain();
  EXPECT_FALSE(session_->shut_client);
  Server("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
         "Content-Length: 0\r\n\r\n");
  EXPECT_EQ(ToClient(), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  EXPECT_TRUE(session_->shut_client && session_->shut_server);
}

TEST_F(Session, AResponseTheFramerRefusesIsA502WhenNothingOfItWasSent) {
  Client("GET /a HTTP/1.1\r\nHost: s\r\n\r\n");
  ToServer();
  Server("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab");
  const std::string out = ToClient();
  EXPECT_TRUE(absl::StartsWith(out, "HTTP/1.1 502 Bad Gateway\r\n")) << out;
  EXPECT_TRUE(session_->shut_client && session_->shut_server);
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].status, 502);

  Make();  // broken inside a body already on its way: nothing clean to say, a reset
  Client("GET /a HTTP/1.1\r\nHost: s\r\n\r\n");
  Server("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nzz\r\n");
  EXPECT_TRUE(session_->abort);
}

TEST_F(Session, ABodyUntilTheCloseEndsWithTheServersClose) {
  Client("GET /a HTTP/1.0\r\n\r\n");
  EXPECT_EQ(ToServer(), "GET /a HTTP/1.0\r\n\r\n");
  Server("HTTP/1.0 200 OK\r\n\r\nsome bytes");
  EXPECT_EQ(ToClient(), "HTTP/1.0 200 OK\r\n\r\nsome bytes");
  EXPECT_TRUE(records_.empty());
  session_->ServerClosed();
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].status, 200);
  EXPECT_EQ(records_[0].response_bytes, 10u);
  EXPECT_TRUE(session_->shut_client);
}

TEST_F(Session, AFullOutputHoldsItsSourceBack) {
  Http1Options small;
  small.output_budget = 1000;
  Make(small);
  const std::string body(300000, 'b');
  const std::string request =
      "POST /u HTTP/1.1\r\nHost: s\r\nContent-Length: 300000\r\n\r\n" + body;
  std::string rest = Client(request);
  EXPECT_FALSE(rest.empty()) << "it stopped taking once over its budget";
  EXPECT_LE(session_->to_server.size(), 1000u + 64 * 1024);
  std::string forwarded;
  for (int i = 0; i < 1000 && !rest.empty(); ++i) {
    forwarded += ToServer();
    rest = Client(rest);
  }
  forwarded += ToServer();
  EXPECT_EQ(rest, "");
  EXPECT_TRUE(absl::EndsWith(forwarded, body));
}

TEST_F(Session, PipelinedRequestsBeyondTheCapWaitForResponses) {
  Http1Options options;
  options.max_pipelined = 2;
  Make(options);
  std::string requests;
  for (int i = 0; i < 4; ++i) requests += "GET /p HTTP/1.1\r\nHost: s\r\n\r\n";
  std::string rest = Client(requests);
  EXPECT_EQ(rest.size(), requests.size() / 2);
  EXPECT_TRUE(session_->waiting_client);
  Server("HTTP/1.1 204 No Content\r\n\r\n");
  EXPECT_FALSE(session_->waiting_client);
  rest = Client(rest);
  EXPECT_EQ(rest.size(), requests.size() / 4);
  EXPECT_EQ(session_->in_flight(), 2u);
}

TEST_F(Session, TheServersCloseLeavesUnansweredRequestsUnansweredAndIsPassedOn) {
  Client("GET /a HTTP/1.1\r\nHost: s\r\n\r\nGET /admin HTTP/1.1\r\nHost: s\r\n\r\n");
  session_->ServerClosed();
  EXPECT_EQ(ToClient(), "") << "a 403 now would be read as the answer to /a";
  EXPECT_TRUE(session_->shut_client);
  EXPECT_EQ(records_.size(), 2u);
  EXPECT_EQ(records_[0].status, 0);
}

TEST_F(Session, NothingAfterARefusalThatClosesIsForwardedAndAHeadsRefusalHasNoBody) {
  Client("GET /admin HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
         "POST /pay HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(ToServer(), "") << "/pay must not reach the server behind a closing 403";
  EXPECT_TRUE(absl::StartsWith(ToClient(), "HTTP/1.1 403 "));
  Make();
  Client("HEAD /admin HTTP/1.1\r\nHost: s\r\n\r\n");
  EXPECT_TRUE(absl::EndsWith(ToClient(), "content-length: 14\r\n\r\n"));
}

TEST_F(Session, AfterATunnelTheClientsBytesAreLeftToTheRelay) {
  Client("GET /ws HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
  Server("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
  ASSERT_TRUE(session_->tunnel);
  EXPECT_EQ(session_->FromClient("raw bytes"), 0u) << "returns at once, takes nothing";
}

TEST(TargetPath, IsThePathWithoutQueryInEveryForm) {
  EXPECT_EQ(TargetPath("/a/b?c=d"), "/a/b");
  EXPECT_EQ(TargetPath("http://h:80/x?y"), "/x");
  EXPECT_EQ(TargetPath("http://h:80"), "/");
  EXPECT_EQ(TargetPath("http://h?q"), "/");
  EXPECT_EQ(TargetPath("h:443"), "");
  EXPECT_EQ(TargetPath("*"), "*");
}

}  // namespace
}  // namespace shunt::agent

namespace shunt::agent {
namespace {


// Bodies as they are, not as they were framed: chunked ones decoded; interim responses are not
// the response; a denied request is never observed.
TEST_F(Session, AnObserverSeesEachLetThroughExchangesDecodedBodies) {
  std::vector<std::string> observed;
  session_->observe = [&](const L7Request& r) -> std::unique_ptr<BodyObserver> {
    observed.push_back(r.path);
    return std::make_unique<RecordingObserver>();
  };
  EXPECT_EQ(Client("POST /v1/chat HTTP/1.1\r\nHost: llm\r\nTransfer-Encoding: chunked\r\n"
                   "Expect: 100-continue\r\n\r\n"
                   "5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n"
                   "GET /admin HTTP/1.1\r\nHost: llm\r\n\r\n"),
            "");
  ToServer();
  EXPECT_EQ(Server("HTTP/1.1 100 Continue\r\n\r\n"
                   "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                   "Content-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "6\r\ndata: \r\n4\r\n{}\n\n\r\n0\r\n\r\n"),
            "");
  ToClient();
  ASSERT_EQ(records_.size(), 2u) << "the 403 in place of the second";
  auto* o = dynamic_cast<RecordingObserver*>(records_[0].observer.get());
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(o->request, "{\"a\": 1}");
  EXPECT_EQ(o->status, 200);
  EXPECT_EQ(o->head, "text/event-stream|identity");
  EXPECT_EQ(o->response, "data: {}\n\n");
  EXPECT_EQ(records_[1].observer, nullptr) << "denied: never observed";
  EXPECT_EQ(observed, std::vector<std::string>{"/v1/chat"});
}

}  // namespace
}  // namespace shunt::agent

namespace shunt::agent {
namespace {

// A client gone while the response to a priced (observed) request streams: the session reads
// the server on to the end of that response, discarding it, and records the exchange whole;
// without an observer, or before its request was whole, it does not.
TEST_F(Session, AClientGoneMidResponseHasItsPricedResponseReadToItsEnd) {
  session_->observe = [](const L7Request& r) -> std::unique_ptr<BodyObserver> {
    if (r.path != "/priced") return nullptr;
    return std::make_unique<RecordingObserver>();
  };
  EXPECT_EQ(Client("GET /priced HTTP/1.1\r\nHost: llm\r\n\r\n"), "");
  ToServer();
  EXPECT_EQ(Server("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"),
            "");
  ToClient();
  EXPECT_TRUE(session_->ClientGone());
  EXPECT_FALSE(session_->drained);
  EXPECT_EQ(Server("4\r\nlast\r\n0\r\n\r\n"), "");
  EXPECT_TRUE(session_->drained);
  EXPECT_TRUE(session_->drained_whole);
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].status, 200);
  auto* o = dynamic_cast<RecordingObserver*>(records_[0].observer.get());
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(o->response, "firstlast") << "read to its end";
  EXPECT_EQ(records_[0].response_bytes, 9u);
  // The server ends before the response does: over, not whole (its tokens are not charged).
  Make();
  session_->observe = [](const L7Request&) -> std::unique_ptr<BodyObserver> {
    return std::make_unique<RecordingObserver>();
  };
  EXPECT_EQ(Client("GET /priced HTTP/1.1\r\nHost: llm\r\n\r\n"), "");
  EXPECT_EQ(Server("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"), "");
  EXPECT_TRUE(session_->ClientGone());
  session_->ServerClosed();
  EXPECT_TRUE(session_->drained);
  EXPECT_FALSE(session_->drained_whole);
  // Not priced: nothing to read on for.
  Make();
  EXPECT_EQ(Client("GET /free HTTP/1.1\r\nHost: llm\r\n\r\n"), "");
  EXPECT_FALSE(session_->ClientGone());
  // Priced but the request was not whole (its body cut): the server never answers it.
  Make();
  session_->observe = [](const L7Request&) -> std::unique_ptr<BodyObserver> {
    return std::make_unique<RecordingObserver>();
  };
  EXPECT_EQ(Client("POST /priced HTTP/1.1\r\nHost: llm\r\nContent-Length: 10\r\n\r\nabc"), "");
  EXPECT_FALSE(session_->ClientGone());
}

}  // namespace
}  // namespace shunt::agent

namespace shunt::agent {
namespace {

TEST(ReadableAcceptEncoding, KeepsTheCodingsAReaderDecodes) {
  EXPECT_EQ(ReadableAcceptEncoding("gzip, deflate, br, zstd"), "gzip, deflate");
  EXPECT_EQ(ReadableAcceptEncoding("br;q=1.0, GZIP;q=0.5"), "GZIP;q=0.5");
  EXPECT_EQ(ReadableAcceptEncoding("br"), "identity");
  EXPECT_EQ(ReadableAcceptEncoding(""), "identity");
  EXPECT_EQ(ReadableAcceptEncoding("*;q=0.1"), "gzip, deflate");
  EXPECT_EQ(ReadableAcceptEncoding(" identity ,zstd"), "identity");
}

class ReadingObserver final : public BodyObserver {
 public:
  bool ReadsResponse() const override { return true; }
  void RequestBody(std::string_view) override {}
  void ResponseHead(int, std::string_view, std::string_view) override {}
  void ResponseBody(std::string_view) override {}
};

// A request whose response is read for its usage asks only for codings the reader decodes:
// a client cannot make its response unreadable (and free) with "br".
TEST_F(Session, AnObservedRequestAsksOnlyForCodingsItsReaderDecodes) {
  session_->observe = [](const L7Request& r) -> std::unique_ptr<BodyObserver> {
    if (r.path == "/free") return nullptr;
    return std::make_unique<ReadingObserver>();
  };
  EXPECT_EQ(Client("GET /a HTTP/1.1\r\nHost: llm\r\nAccept-Encoding: br\r\n"
                   "Accept-Encoding: gzip;q=0.5\r\n\r\n"
                   "GET /b HTTP/1.1\r\nHost: llm\r\n\r\n"
                   "GET /free HTTP/1.1\r\nHost: llm\r\nAccept-Encoding: br\r\n\r\n"),
            "");
  EXPECT_EQ(ToServer(),
            "GET /a HTTP/1.1\r\nHost: llm\r\nAccept-Encoding: gzip;q=0.5\r\n\r\n"
            "GET /b HTTP/1.1\r\nHost: llm\r\nAccept-Encoding: identity\r\n\r\n"
            "GET /free HTTP/1.1\r\nHost: llm\r\nAccept-Encoding: br\r\n\r\n");
}

}  // namespace
}  // namespace shunt::agent
