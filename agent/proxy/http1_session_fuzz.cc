// libFuzzer target for the proxy's HTTP/1.1 session (http1_session.h); built and run by
// scripts/run-http1-fuzz.sh beside the framer's. The input is a client's bytes and a server's,
// fed in turns and in pieces the input chooses, with a policy that denies "/admin*", a drain and
// the closes at points it chooses. Checked, besides ASan/UBSan:
//  1. No desync: what the session sends the server, parsed again by a fresh strict parser, is
//     a sequence of well-formed requests (never an error), exactly as many heads as the session
//     forwarded, and nothing that was denied.
//  2. The Feed contract: never more taken than given; taking nothing with nothing written and no
//     reason to wait is a stall.
//  3. Bounded outputs: never more than a piece beyond the budget is queued towards a side.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "agent/proxy/http1/framer.h"
#include "agent/proxy/http1_session.h"

namespace shunt::agent {
namespace {

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

// Counts the requests a server would read from the proxy's bytes.
class ServerView : public http1::ParserCallbacks {
 public:
  http1::Action OnRequestHead(http1::RequestHead&& h) override {
    ++heads;
    if (TargetPath(h.target).rfind("/admin", 0) == 0) ++admin;
    return http1::Action::kContinue;
  }
  http1::Action OnResponseHead(http1::ResponseHead&&) override { return http1::Action::kContinue; }
  http1::Action OnBody(std::string_view) override { return http1::Action::kContinue; }
  http1::Action OnTrailers(http1::Headers&&) override { return http1::Action::kContinue; }
  http1::Action OnMessageComplete() override { return http1::Action::kContinue; }
  int heads = 0, admin = 0;
};

}  // namespace
}  // namespace shunt::agent

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shunt::agent;
  if (size < 4) return 0;
  const uint8_t flags = data[0];
  const size_t split = 4 + (size > 4 ? data[1] % (size - 3) : 0);
  const size_t piece = 1 + data[2] % 97;
  const size_t drain_at = data[3];
  std::string_view client(reinterpret_cast<const char*>(data) + 4, std::min(split, size) - 4);
  std::string_view server(reinterpret_cast<const char*>(data) + std::min(split, size),
                          size - std::min(split, size));

  Http1Options options;
  if (flags & 1) options.output_budget = 64;
  if (flags & 2) options.max_pipelined = 2;
  int forwarded = 0, denied = 0;
  Http1Session s(
      options,
      [&](const L7Request& r) {
        L7Verdict v;
        v.allow = r.path.rfind("/admin", 0) != 0;
        if (v.allow) {
          ++forwarded;
        } else {
          ++denied;
        }
        return v;
      },
      [](const ExchangeRecord&) {});
  std::string to_server;  // everything sent to the server, until a tunnel
  bool tunnel_seen = false;
  auto drain_outputs = [&] {
    Check(s.to_server.size() <= options.output_budget + (64 << 10) + (16 << 10));
    Check(s.to_client.size() <= options.output_budget + (64 << 10) + (16 << 10));
    if (!tunnel_seen) to_server += s.to_server;
    if (s.tunnel) tunnel_seen = true;
    s.to_server.clear();
    s.to_client.clear();
  };
  size_t rounds = 0;
  while ((!client.empty() || !server.empty()) && !s.abort && !s.tunnel && rounds++ < 100000) {
    if (rounds == drain_at && (flags & 4)) s.Drain();
    bool progress = false;
    if (!client.empty()) {
      const std::string_view chunk = client.substr(0, piece);
      const size_t n = s.FromClient(chunk);
      Check(n <= chunk.size());
      client.remove_prefix(n);
      progress |= n > 0;
      Check(n > 0 || !s.to_server.empty() || !s.to_client.empty() || s.waiting_client || s.abort ||
            s.tunnel);
    }
    drain_outputs();
    if (!server.empty()) {
      const std::string_view chunk = server.substr(0, piece);
      const size_t n = s.FromServer(chunk);
      Check(n <= chunk.size());
      server.remove_prefix(n);
      progress |= n > 0;
    }
    drain_outputs();
    // Waiting for a server that has nothing more to say: the client's rest stays unread, as it
    // would on a socket.
    if (!progress && server.empty()) break;
  }
  if (!s.abort && !s.tunnel) {
    if (flags & 8) {
      s.ServerClosed();
    } else {
      s.ClientClosed();
    }
    drain_outputs();
  }
  // What the server received frames as exactly the requests forwarded, none of them denied.
  ServerView view;
  http1::Parser parser(http1::Parser::Kind::kRequest, view);
  http1::FeedResult r = parser.Feed(to_server);
  while (r.status == http1::FeedStatus::kUpgradePending) {  // a refused Upgrade: more follows
    parser.ContinueHttp();
    to_server.erase(0, r.consumed);
    r = parser.Feed(to_server);
  }
  Check(r.status != http1::FeedStatus::kError);
  Check(view.heads == forwarded);
  Check(view.admin == 0);
  return 0;
}
