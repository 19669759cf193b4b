// What the relay (tcp_relay.h) runs for a connection it understands at L7 (HTTP/1.1:
// http1_session.h; HTTP/2 and gRPC: http2/): bytes in from each side, bytes out to each side, no
// sockets. The relay reads, offers what it read (FromClient/FromServer take what they can; the
// rest is offered again once the outputs drained), writes to_client/to_server out, and acts on
// the flags. Requests are authorized one by one (`authorize`): denied ones are answered by the
// session (403, or gRPC PERMISSION_DENIED) and never reach the server. Every finished exchange is
// reported (`on_exchange`) with what the metrics export.
//
// Backpressure: a session never holds more than it was given plus its own small framing; the
// relay stops reading a side while the output towards the other is over its budget.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/time/time.h"

namespace shunt::agent {

// What an L7 access rule looks at (AccessPolicy l7: methods, paths).
struct L7Request {
  std::string method;     // "GET"; gRPC: "POST"
  std::string path;       // the target's path, without the query ("/pkg.Service/Method" for gRPC)
  std::string authority;  // Host or :authority
  bool grpc = false;
};
struct L7Verdict {
  bool allow = true;
  std::string policy;  // "namespace/name" of the deciding policy (denied: the one that refused)
};
using L7Authorize = std::function<L7Verdict(const L7Request&)>;

// Reads the bodies of one exchange as they pass through (decoded: without HTTP/1.1's chunk
// framing; HTTP/2's DATA payloads), for what the proxy accounts beyond counts (per-pod API cost:
// agent/cost/). Made for each request the policy lets through (L7Session::observe); told of the
// final response's head, then of each body slice in order; never holds the session up, never
// changes a byte. Its findings are read from the record once the exchange is over.
class BodyObserver {
 public:
  virtual ~BodyObserver() = default;
  // Whether it reads the response's body: then the request's Accept-Encoding is narrowed to
  // the codings it can decode (ReadableAcceptEncoding), so that a client cannot make its
  // response unreadable by asking for another.
  virtual bool ReadsResponse() const { return false; }
  virtual void RequestBody(std::string_view data) = 0;
  // The final response's status and its Content-Type and Content-Encoding ("" when absent).
  virtual void ResponseHead(int status, std::string_view content_type,
                            std::string_view content_encoding) = 0;
  virtual void ResponseBody(std::string_view data) = 0;
};
using ObserverFactory = std::function<std::unique_ptr<BodyObserver>(const L7Request&)>;

// An Accept-Encoding value narrowed to the codings a BodyObserver decodes (gzip, x-gzip,
// deflate, identity, with their weights; "*" as gzip and deflate); "identity" when none is
// left (an absent field would admit any coding, RFC 9110 12.5.3).
inline std::string ReadableAcceptEncoding(std::string_view value) {
  std::string out;
  auto trim = [](std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    return v;
  };
  while (!value.empty()) {
    const size_t comma = value.find(',');
    const std::string_view item = trim(value.substr(0, comma));
    value.remove_prefix(comma == std::string_view::npos ? value.size() : comma + 1);
    std::string coding(trim(item.substr(0, item.find(';'))));
    for (char& c : coding) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    std::string_view keep;
    if (coding == "gzip" || coding == "x-gzip" || coding == "deflate" || coding == "identity") {
      keep = item;
    } else if (coding == "*") {
      keep = "gzip, deflate";
    }
    if (keep.empty()) continue;
    if (!out.empty()) out += ", ";
    out += keep;
  }
  return out.empty() ? "identity" : out;
}

// One request and its response, as the metrics issue exports it.
struct ExchangeRecord {
  L7Request request;
  int status = 0;               // HTTP status sent to the client (0: none, the exchange broke)
  int grpc_status = -1;         // gRPC: from the trailers (-1: not gRPC or none)
  bool denied = false;          // answered by the proxy (policy)
  bool proxy_answered = false;  // answered by the proxy: denied, or refused as malformed (then a
                                // 4xx/5xx for a bad request, 502 for a bad response)
  std::string policy;           // when denied
  uint64_t request_bytes = 0;   // body bytes client -> server
  uint64_t response_bytes = 0;  // body bytes server -> client
  absl::Time start;             // request head complete
  absl::Time first_byte;        // response head from the server (InfinitePast: none)
  absl::Time end;               // response complete (or broken)
  // The time the proxy itself spent on this exchange's bytes (parsing, serialising).
  absl::Duration proxy_time;
  // The request never reached the server (an HTTP/2 stream refused before it was sent: the
  // client retries it).
  bool not_forwarded = false;
  // What read its bodies (null: nothing did).
  std::shared_ptr<BodyObserver> observer;
};
using ExchangeSink = std::function<void(const ExchangeRecord&)>;

class L7Session {
 public:
  virtual ~L7Session() = default;

  // Bytes read from the client / the server. Returns how many were taken (0..size); the relay
  // offers the rest again later (after the outputs drained, or an upgrade was decided). A session
  // that takes nothing while its outputs are empty and it is not waiting for the other side is
  // broken: the relay treats it as an error.
  virtual size_t FromClient(std::string_view data) = 0;
  virtual size_t FromServer(std::string_view data) = 0;
  // The client / server ended its stream (FIN): no more bytes from it.
  virtual void ClientClosed() = 0;
  virtual void ServerClosed() = 0;
  // The agent is going away: finish what is in flight, take no new request (HTTP/1.1:
  // "Connection: close" on the next response; HTTP/2: GOAWAY), then ask to close.
  virtual void Drain() = 0;
  // Whether nothing is in flight (HTTP/1.1: between a response and the next request), and
  // closing now that way (both sides shut). A drained HTTP/1.1 connection is closed so only once
  // it has been idle a while (the relay's sweep): closed at once, a request its client sends at
  // that moment would fail (most clients do not retry it).
  virtual bool Idle() const { return false; }
  virtual void CloseIdle() {}
  // The client's connection is gone (reset, or its writes fail): nothing more comes from it or
  // reaches it. Returns whether the session reads the server on: a response to a priced request
  // (one with an observer) is on its way, whose usage comes at its end and which the upstream
  // bills anyway. Then the relay discards to_client and feeds the server's bytes until
  // `drained` is set (the response ended; its exchange is recorded as any other) or its bounds
  // run out. False: the connection is reset at once.
  virtual bool ClientGone() { return false; }
  // Policy changed: requests from now on are authorized with this (an open HTTP connection is
  // not closed for a policy that denies some of its requests; the requests are).
  virtual void SetAuthorize(L7Authorize authorize) = 0;
  // Whether the connection may become a tunnel (opaque bytes: Upgrade, CONNECT), as the port's
  // policy admits opaque bytes or not; may change with the policy.
  virtual void SetTunnelsAllowed(bool allowed) { (void)allowed; }
  // Bytes held inside the session (beyond to_client and to_server) for the other side: the
  // relay's per-pod buffer budget counts them.
  virtual size_t held_bytes() const { return 0; }
  // Of those, what waits for something to be read from `side` (0 client, 1 server): an HTTP/2
  // peer's WINDOW_UPDATE. The relay reads that side even when its pod is over its buffer budget,
  // since nothing else frees those bytes (what the read may bring is bounded by the windows).
  virtual size_t held_towards(int /*side*/) const { return 0; }

  // Set by the relay before the first bytes: makes the observer of each request let through
  // (unset, or returning null: its bodies are not read).
  ObserverFactory observe;

  // Outputs: the relay writes them out and erases what it wrote.
  std::string to_client, to_server;

  // What the relay does once the outputs are written (checked after every call):
  bool shut_client = false;  // send a FIN to the client (nothing more for it)
  bool shut_server = false;  // send a FIN to the server
  bool abort = false;        // reset both sides now (outputs dropped)
  // The connection became a tunnel (Upgrade: 101, CONNECT: 2xx): once the outputs are written,
  // the relay moves the rest of both streams as opaque bytes (the bytes not taken are its first).
  bool tunnel = false;
  // True while the session waits for the other side before it can take more of a side's bytes
  // (an Upgrade waiting for its response, too many pipelined requests): not an error.
  bool waiting_client = false, waiting_server = false;
  // After ClientGone: what it read the server on for is over (the relay ends the connection);
  // `drained_whole`: the response ended as framed (else the server ended first).
  bool drained = false;
  bool drained_whole = false;
};

}  // namespace shunt::agent
