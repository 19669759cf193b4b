// The HTTP/2 and gRPC session of the agent's transparent proxy (l7_session.h): the client speaks
// h2c with prior knowledge, the session terminates it with an nghttp2 server session and forwards
// every request as one stream of its own nghttp2 client session towards the server. Headers,
// DATA, trailers, END_STREAM and RST_STREAM (with its code) pass both ways; requests are
// authorized one by one, and denied ones are answered here (403, or a gRPC trailers-only
// PERMISSION_DENIED) without the server ever seeing the stream. Owned by the relay's connection,
// called from its thread only; bytes in, bytes out, no sockets and no timers (streams may live
// for hours: gRPC streaming).
//
// Flow control is end to end. DATA from one side is consumed (its WINDOW_UPDATE sent) only once
// the other side's session has framed it into the output towards the other peer, so a peer that
// does not read closes its sender's window: per stream at `stream_window`, per connection at
// `connection_window` (each direction), and FromClient/FromServer take nothing more while the
// output they feed is over `output_budget` (the relay then stops reading that side). What the
// session holds is bounded by those: per direction, the connection window of buffered DATA plus
// the output budget plus one input slice worth of framing.
//
// Abuse (the session answers with GOAWAY and sets `abort`):
//  - Rapid reset (CVE-2023-44487): more than `rapid_reset_budget` streams reset by the client
//    within `rapid_reset_min_lifetime` of being opened, per `rapid_reset_window` →
//    ENHANCE_YOUR_CALM. nghttp2's own reset limiter (1000 burst, 33/s) stays as a backstop.
//  - CONTINUATION floods (CVE-2024-27316 class): nghttp2 closes the connection after
//    `max_continuations` CONTINUATION frames in one header block; decoded fields beyond
//    `max_header_list_size` are dropped, not kept, and the request answered with 431.
//  - SETTINGS / PING floods: nghttp2 closes the connection when more than `max_outbound_ack`
//    ACKs are owed at once or a SETTINGS frame has more than `max_settings` entries; a peer that
//    does not read its ACKs is throttled by the output budget.
//  - Empty DATA frames (CVE-2019-9518): more than `max_consecutive_empty_frames` in a row →
//    ENHANCE_YOUR_CALM.
//  - RFC 7540 priorities are turned off (SETTINGS_NO_RFC7540_PRIORITIES): PRIORITY frames cost
//    no tree work.
// Drain, a server GOAWAY, a server that closed or broke the protocol: one GOAWAY to the client
// (last-stream-id: the last stream processed; a later one is refused, so that the client retries
// it), the streams in flight finish, then shut_client and shut_server. A client that broke the
// protocol or abused it: GOAWAY (in to_client, for a relay that writes it before resetting) and
// abort. Exchanges still open when the session is destroyed are reported then, broken.
// waiting_client/waiting_server are never set: all the session holds is bounded by the windows.
// Needs nghttp2 with nghttp2_option_set_max_continuations (1.61, or Debian's 1.52.0-1+deb12u2).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/proxy/l7_session.h"

struct nghttp2_session;

namespace shunt::agent {

struct Http2Options {
  // Advertised to the client. Beyond what the server allows, nghttp2 queues the upstream
  // streams (their bodies buffered within the windows) until the server's streams close.
  uint32_t max_concurrent_streams = 1000;
  // SETTINGS_INITIAL_WINDOW_SIZE on both sides. 1 MiB is ~1 GB/s per stream at an in-cluster
  // 1 ms RTT; the connection window is 4x so that one stalled stream cannot take the whole
  // connection's window (equal windows deadlock: PITFALLS 19).
  uint32_t stream_window = 1 << 20;
  uint32_t connection_window = 4 << 20;
  // SETTINGS_MAX_HEADER_LIST_SIZE, enforced on every header block either way (RFC 9113 6.5.2
  // counting: name + value + 32).
  uint32_t max_header_list_size = 64 << 10;
  // FromClient (FromServer) takes no more bytes while to_server (to_client) is over this.
  size_t output_budget = 256 << 10;
  uint32_t rapid_reset_budget = 200;
  absl::Duration rapid_reset_window = absl::Seconds(10);
  absl::Duration rapid_reset_min_lifetime = absl::Seconds(1);
  uint32_t max_consecutive_empty_frames = 16;
  // nghttp2's own limits, set explicitly (their defaults) so that they are visible here.
  size_t max_continuations = 8;
  size_t max_outbound_ack = 1000;
  size_t max_settings = 32;
  // Whether CONNECT streams (tunnels of opaque bytes) are forwarded; else answered 403.
  bool tunnels = true;
  // Injected so that tests control time; absl::Now when empty.
  std::function<absl::Time()> clock;
};

class Http2Session : public L7Session {
 public:
  // InvalidArgument for options that cannot work (windows out of range, a connection window
  // below 4x the stream window); ResourceExhausted when nghttp2 cannot allocate.
  static absl::StatusOr<std::unique_ptr<Http2Session>> Create(Http2Options options,
                                                              L7Authorize authorize,
                                                              ExchangeSink on_exchange);
  ~Http2Session() override;
  Http2Session(const Http2Session&) = delete;
  Http2Session& operator=(const Http2Session&) = delete;

  size_t FromClient(std::string_view data) override;
  size_t FromServer(std::string_view data) override;
  void ClientClosed() override;
  void ServerClosed() override;
  void Drain() override;
  void SetAuthorize(L7Authorize authorize) override;
  // A CONNECT stream is a tunnel of opaque bytes: where they are not admitted, it is answered
  // 403 (extended CONNECT, RFC 8441, is not advertised). Not admitted any more, the tunnels
  // open are reset both ways (CONNECT_ERROR to the client, CANCEL to the server).
  void SetTunnelsAllowed(bool allowed) override;
  size_t held_bytes() const override { return held_[kToClient] + held_[kToServer]; }
  // DATA held until that side's window opens: only a WINDOW_UPDATE read from it moves it on.
  size_t held_towards(int side) const override { return held_[side == 0 ? kToClient : kToServer]; }

  // DATA held for the other side (both directions), and the streams not finished yet: for the
  // relay's budgets and metrics.
  size_t buffered_bytes() const { return held_bytes(); }
  size_t open_streams() const { return streams_.size(); }

 private:
  struct Stream;
  class Fields;
  struct HeaderBlock;
  class Callbacks;
  friend class Callbacks;

  Http2Session(Http2Options options, L7Authorize authorize, ExchangeSink on_exchange);
  absl::Status Init();

  absl::Time Now() const;
  Stream* ByClientId(int32_t id);
  Stream* ByServerId(int32_t id);
  void ForgetServerId(int32_t id);
  void Touch(Stream& s);

  // Called by the nghttp2 callbacks (h2_session.cc).
  void OnRequestHead(Stream& s, bool end_stream);
  void OnRequestTrailers(Stream& s);
  void OnRequestEnd(Stream& s);
  void OnRequestData(Stream& s, const uint8_t* data, size_t len);
  void OnClientReset(Stream& s);
  void OnClientStreamClosed(Stream& s, uint32_t error_code);
  void OnClientStreamEndSent(Stream& s);
  void OnResponseHead(Stream& s, bool end_stream);
  void OnResponseData(Stream& s, const uint8_t* data, size_t len);
  void OnResponseEnd(Stream& s);
  void OnServerStreamGone(Stream& s, uint32_t error_code);
  void OnServerGoaway();

  // Answers a stream from the proxy itself (denied, oversized head, server gone).
  void AnswerLocally(Stream& s, int status, int grpc_status, std::string_view message);
  void ResetClient(Stream& s, uint32_t error_code);
  void ResetServer(Stream& s, uint32_t error_code);
  // Gives the windows back for DATA that will never be forwarded.
  void DropRequestBody(Stream& s);
  void DropResponseBody(Stream& s);
  void MaybeFinish(Stream& s);
  void EmitRecord(Stream& s);
  // Records are handed to the sink outside nghttp2's callbacks, once the slice's time is shared.
  void EmitDone();
  void ShareTime(absl::Duration elapsed);

  void EnhanceYourCalm();
  void UpstreamLost();
  void BeginDrain();
  void Fatal();
  // Frames whatever both sessions have queued into the outputs (until neither has more: each
  // side's sending can release window on the other), then checks whether the session is done.
  void Flush();
  bool Pump(nghttp2_session* session, std::string& output, bool discard);
  void CheckDone();
  size_t Feed(bool client, std::string_view data);

  Http2Options options_;
  L7Authorize authorize_;
  ExchangeSink on_exchange_;
  nghttp2_session* down_ = nullptr;  // nghttp2 server session: the client's side
  nghttp2_session* up_ = nullptr;    // nghttp2 client session: the server's side

  absl::flat_hash_map<int32_t, std::unique_ptr<Stream>> streams_;  // by client stream id
  absl::flat_hash_map<int32_t, int32_t> server_to_client_;
  int32_t last_client_id_ = 0, last_server_id_ = 0;  // 0: none (stream ids are positive)
  Stream* last_client_ = nullptr;
  Stream* last_server_ = nullptr;
  enum { kToClient = 0, kToServer = 1 };
  size_t held_[2] = {0, 0};  // DATA waiting for that side's window, per direction

  bool tunnels_ = true;    // options_.tunnels, then as SetTunnelsAllowed says
  bool draining_ = false;  // no new streams; shut once the last one finished
  bool client_eof_ = false;
  bool upstream_lost_ = false;  // server closed or broke the protocol
  bool up_dead_ = false;        // nothing more is written to the server
  int32_t goaway_last_id_ = 0;  // in the GOAWAY sent to the client
  bool calm_ = false;           // client abuse seen: GOAWAY ENHANCE_YOUR_CALM, then abort
  bool dead_ = false;           // abort or shut set: inputs are dropped

  uint32_t consecutive_empty_frames_ = 0;
  uint32_t rapid_resets_ = 0;
  absl::Time rapid_reset_window_start_ = absl::InfinitePast();

  // Streams that had an event in the current input slice, sharing its processing time.
  std::vector<int32_t> touched_;
  uint64_t slice_epoch_ = 0;
  bool in_slice_ = false;
  absl::Time slice_time_;
  std::vector<std::pair<int32_t, ExchangeRecord>> done_records_;
};

}  // namespace shunt::agent
