// HTTP/1.1 through the agent's transparent proxy (an L7Session, l7_session.h): each direction
// framed by the strict parser (http1/framer.h), heads forwarded re-serialised (never as the raw
// bytes a client sent: what the server parses is what the proxy parsed), bodies as decoded and
// re-chunked. One client connection, one server connection: keep-alive and pipelining pass
// through with their order kept, 100-continue and interim responses pass on, an Upgrade answered
// with 101 (or CONNECT with 2xx) turns the connection into a tunnel.
//
// Requests are authorized one by one. A denied one never reaches the server: the proxy answers
// 403 in its place in the response order (after the responses to the requests before it), reads
// and drops its body, and keeps the connection (closes it after the 403 when the client waits
// for a 100-continue, since it may or may not send the body then). A request the framer refuses
// (smuggling attempts, bad framing) is answered with its status (400, 414, 431, 501, 505) and
// "Connection: close", after the responses before it; a response it refuses is a 502 when its
// head was not forwarded yet, a reset otherwise.
#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <string_view>

#include "agent/proxy/http1/framer.h"
#include "agent/proxy/l7_session.h"

namespace shunt::agent {

struct Http1Options {
  http1::Limits limits;
  size_t max_pipelined = 64;         // requests read ahead of their responses
  size_t output_budget = 256 << 10;  // bytes queued towards a side before its source is not read
  // Whether a request may turn the connection into a tunnel (opaque bytes the proxy cannot
  // decide on). When not (the port's policy admits no opaque bytes): CONNECT is answered 403,
  // and an Upgrade is forwarded without its Upgrade (and HTTP2-Settings) fields, so that the
  // server answers it as HTTP (RFC 9110 7.8 lets it ignore them); a 101 anyway is a bad
  // response (502).
  bool tunnels = true;
};

class Http1Session final : public L7Session {
 public:
  Http1Session(Http1Options options, L7Authorize authorize, ExchangeSink sink);
  ~Http1Session() override;

  size_t FromClient(std::string_view data) override;
  size_t FromServer(std::string_view data) override;
  void ClientClosed() override;
  void ServerClosed() override;
  void Drain() override;
  bool Idle() const override;
  void CloseIdle() override;
  void SetAuthorize(L7Authorize authorize) override;
  void SetTunnelsAllowed(bool allowed) override { tunnels_ = allowed; }
  // Reads on for the response at the front when it is priced (observed) and its request went
  // to the server whole.
  bool ClientGone() override;

  // How many exchanges are waiting for their response (for tests and the relay's drain).
  size_t in_flight() const { return queue_.size(); }

 private:
  // One request and what answers it: the server (forwarded) or the proxy (`local_status`).
  struct Exchange {
    ExchangeRecord record;
    int local_status = 0;        // 403, 400...: answered by the proxy
    bool close_after = false;    // the proxy's answer ends the connection
    bool complete = false;       // the request is all read
    std::string method;          // for the response parser
    bool no_tunnel = false;      // its Upgrade was removed: a 101 to it is refused
  };
  class RequestEvents;
  class ResponseEvents;

  size_t FeedServer(std::string_view data);
  void UpdateDrained();     // after ClientGone: sets `drained` once the front is over
  void EmitLocalAnswers();  // answers of the proxy at the head of the queue, in order
  void Finish(Exchange& e);
  void ShutBoth();

  const Http1Options options_;
  L7Authorize authorize_;
  ExchangeSink sink_;
  std::unique_ptr<RequestEvents> request_events_;
  std::unique_ptr<ResponseEvents> response_events_;
  http1::Parser requests_;
  http1::Parser responses_;
  std::deque<Exchange> queue_;  // in request order; the front is answered next

  // Request side.
  bool in_request_ = false;       // a head was read, its message not complete
  bool discard_request_ = false;  // the current request's body is dropped (answered locally)
  bool request_chunked_ = false;
  bool request_trailers_sent_ = false;
  bool client_done_ = false;      // nothing more from the client is read (dropped)
  bool upgrade_pending_ = false;  // an Upgrade / CONNECT waits for its response
  bool paused_for_pipeline_ = false;

  // Response side.
  bool response_chunked_ = false;
  bool response_trailers_sent_ = false;
  bool response_interim_ = false;
  bool response_tunnel_ = false;
  bool response_head_sent_ = false;  // of the front exchange's final response
  bool response_closes_ = false;     // the response being read ends the connection
  bool server_done_ = false;
  bool refused_tunnel_ = false;  // a 101 to a request whose Upgrade was removed
  bool tunnels_ = true;          // options_.tunnels, then as SetTunnelsAllowed says

  bool draining_ = false;
  bool client_gone_ = false;
};

// The path of a request target, without query, for policy ("/a/b" of "http://h/a/b?x", "*").
std::string TargetPath(std::string_view target);

}  // namespace shunt::agent
