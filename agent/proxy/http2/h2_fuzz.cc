// libFuzzer target for the HTTP/2 session (h2_session.h); built and run by scripts/run-h2-fuzz.sh.
// The input is what a client sends; its first bytes choose how it is fed:
//   byte 0: bit 0 split the rest (at byte 1's fraction) into client bytes and raw server bytes,
//           bit 1 tiny limits (so that windows, budgets and flood limits are hit), bit 2 prepend
//           the client preface, bit 3 the relay stalls writing to_server for a while, bit 4
//           Drain, bit 5 ClientClosed, bit 6 ServerClosed at the end, bit 7 deny odd paths.
//   byte 1: the split point; byte 2: the feeding piece size.
// A fake server (a real nghttp2 server session) answers every request: with a body and gRPC
// trailers, trailers-only, a reset or a plain body, by stream id. The raw server bytes go in
// after its first frames, at a frame boundary. Checked: FromClient/FromServer never take more
// than offered, never take nothing with empty outputs, and the outputs stay bounded; ASan and
// UBSan catch the rest.
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <string_view>

#include "agent/proxy/http2/h2_session.h"

namespace shunt::agent {
namespace {

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

class FakeServer {
 public:
  FakeServer() {
    nghttp2_session_callbacks* cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &FrameRecv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, &StreamClose);
    nghttp2_session_server_new(&session_, cb, this);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 8},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 32 << 10}};
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, iv, 2);
  }
  ~FakeServer() { nghttp2_session_del(session_); }

  void Input(std::string_view bytes) {
    if (broken_ || bytes.empty()) return;
    if (nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(bytes.data()),
                                 bytes.size()) < 0) {
      broken_ = true;
    }
  }
  std::string Output() {
    std::string out;
    for (;;) {
      const uint8_t* data;
      const ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n <= 0) break;
      out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
    return out;
  }

 private:
  static int StreamClose(nghttp2_session*, int32_t id, uint32_t, void* self) {
    static_cast<FakeServer*>(self)->sent_.erase(id);
    return 0;
  }
  static int FrameRecv(nghttp2_session* s, const nghttp2_frame* f, void*) {
    if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
        !(f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      return 0;
    }
    const int32_t id = f->hd.stream_id;
    static const nghttp2_nv kOk[] = {
        {(uint8_t*)":status", (uint8_t*)"200", 7, 3, 0},
        {(uint8_t*)"content-type", (uint8_t*)"application/grpc", 12, 16, 0}};
    static const nghttp2_nv kTrailersOnly[] = {{(uint8_t*)":status", (uint8_t*)"200", 7, 3, 0},
                                               {(uint8_t*)"grpc-status", (uint8_t*)"5", 11, 1, 0}};
    nghttp2_data_provider body{};
    body.read_callback = &Read;
    switch ((id >> 1) % 4) {
      case 0:
        nghttp2_submit_response(s, id, kOk, 2, &body);
        break;
      case 1:
        nghttp2_submit_response(s, id, kTrailersOnly, 2, nullptr);
        break;
      case 2:
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
        break;
      default:
        nghttp2_submit_response(s, id, kOk, 1, &body);
        break;
    }
    return 0;
  }
  // 40 KiB of body (beyond a tiny window), then gRPC trailers on every other stream.
  static ssize_t Read(nghttp2_session* s, int32_t id, uint8_t* buf, size_t len, uint32_t* flags,
                      nghttp2_data_source*, void* self) {
    size_t& sent = static_cast<FakeServer*>(self)->sent_[id];
    const size_t n = std::min<size_t>(len, (40 << 10) - sent);
    std::memset(buf, 'r', n);
    sent += n;
    if (sent == (40 << 10)) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      if ((id >> 1) % 4 == 0) {
        static const nghttp2_nv kTrailers[] = {{(uint8_t*)"grpc-status", (uint8_t*)"0", 11, 1, 0}};
        if (nghttp2_submit_trailer(s, id, kTrailers, 1) == 0) {
          *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
      }
    }
    return static_cast<ssize_t>(n);
  }

  nghttp2_session* session_ = nullptr;
  bool broken_ = false;
  std::map<int32_t, size_t> sent_;  // body bytes sent per stream
};

struct Run {
  Http2Session& session;
  FakeServer& server;
  size_t bound;
  bool stall_server = false;

  void CheckBounded() {
    Check(session.to_client.size() <= bound);
    Check(session.to_server.size() <= bound);
  }
  size_t Offer(bool client, std::string_view bytes) {
    const size_t n = client ? session.FromClient(bytes) : session.FromServer(bytes);
    Check(n <= bytes.size());
    if (!bytes.empty() && n == 0) {
      Check(!session.to_client.empty() || !session.to_server.empty() || session.waiting_client ||
            session.waiting_server);
    }
    CheckBounded();
    return n;
  }
  // The relay's writes: the client's bytes are dropped (nobody answers them), the server's go
  // to the fake server, whose answers come back.
  void Relay() {
    std::string pending;
    for (int round = 0; round < 64; ++round) {
      session.to_client.clear();
      if (!stall_server) {
        server.Input(session.to_server);
        session.to_server.clear();
      }
      pending += server.Output();
      if (pending.empty() || session.abort) break;
      const size_t n = Offer(false, pending);
      pending.erase(0, n);
      if (n == 0 && stall_server) break;
    }
  }
};

}  // namespace
}  // namespace shunt::agent

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shunt::agent;
  if (size < 3) return 0;
  const uint8_t mode = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data) + 3, size - 3);
  std::string client_bytes, server_bytes;
  if (mode & 1) {
    const size_t cut = rest.size() * data[1] / 255;
    client_bytes = rest.substr(0, cut);
    server_bytes = rest.substr(cut);
  } else {
    client_bytes = rest;
  }
  if (mode & 4) client_bytes.insert(0, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
  const size_t piece = 1 + data[2] * 64;

  Http2Options options;
  if (mode & 2) {
    options.stream_window = 16 << 10;
    options.connection_window = 64 << 10;
    options.output_budget = 4 << 10;
    options.max_concurrent_streams = 4;
    options.max_header_list_size = 1024;
    options.rapid_reset_budget = 3;
    options.max_consecutive_empty_frames = 2;
  }
  // What a call may add beyond the budget: the window DATA it releases, one slice's worth of
  // frames and their re-encoded header blocks.
  const size_t bound = options.output_budget * 4 + options.connection_window + (4 << 20);
  const bool deny_odd = mode & 128;
  auto created = Http2Session::Create(
      options,
      [deny_odd](const L7Request& r) {
        return L7Verdict{!(deny_odd && r.path.size() % 2 == 1), "fuzz/policy"};
      },
      [](const ExchangeRecord& r) { Check(r.status >= 0 && r.end >= r.start); });
  Check(created.ok());
  Http2Session& session = **created;
  FakeServer server;
  Run run{session, server, bound, static_cast<bool>(mode & 8)};

  run.Relay();
  if (!server_bytes.empty()) {
    size_t off = 0;
    for (int i = 0; i < 64 && off < server_bytes.size() && !session.abort; ++i) {
      off += run.Offer(false, std::string_view(server_bytes).substr(off));
      session.to_client.clear();
      session.to_server.clear();
    }
  }
  size_t off = 0;
  for (int i = 0; off < client_bytes.size() && !session.abort && i < 100000; ++i) {
    const std::string_view chunk = std::string_view(client_bytes).substr(off, piece);
    off += run.Offer(true, chunk);
    if (i == 8) run.stall_server = false;
    run.Relay();
  }
  run.stall_server = false;
  if (mode & 16) session.Drain();
  run.Relay();
  if (mode & 32) session.ClientClosed();
  run.Relay();
  if (mode & 64) session.ServerClosed();
  run.Relay();
  return 0;
}
