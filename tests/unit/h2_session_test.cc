// Http2Session (agent/proxy/http2/h2_session.h) driven in memory: a real nghttp2 client session
// plays the client, a real nghttp2 server session the server, and the harness moves bytes between
// them and the session the way the relay does (it writes the outputs and erases them, re-offers
// what a side did not take).
#include "agent/proxy/http2/h2_session.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/unit/recording_observer.h"

namespace shunt::agent {
namespace {

using Fields = std::vector<std::pair<std::string, std::string>>;

std::string Get(const Fields& fields, const std::string& name) {
  for (const auto& [n, v] : fields) {
    if (n == name) return v;
  }
  return "";
}

std::vector<nghttp2_nv> Nva(const Fields& fields) {
  std::vector<nghttp2_nv> nva;
  for (const auto& [n, v] : fields) {
    nva.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                   reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(),
                   NGHTTP2_NV_FLAG_NONE});
  }
  return nva;
}

// One end of a connection (the test's client or server), recording what it received.
class Peer {
 public:
  struct StreamLog {
    std::vector<Fields> blocks;  // header blocks in order: head(s), then trailers
    std::string data;
    bool end = false;  // END_STREAM received
    bool closed = false;
    uint32_t close_code = 0;
    bool rst_received = false;
    uint32_t rst_code = 0;
    size_t unconsumed = 0;  // manual window mode: DATA not yet given back
  };
  struct Options {
    bool manual_window = false;
    uint32_t initial_window = 65535;
    size_t max_send_header_block = 64 << 10;
  };

  Peer(bool server, Options options) : server_(server), options_(options) {
    nghttp2_session_callbacks* cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, &BeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(cb, &Header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &FrameRecv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &DataChunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, &StreamClose);
    nghttp2_option* opt;
    nghttp2_option_new(&opt);
    if (options.manual_window) nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_send_header_block_length(opt, options.max_send_header_block);
    if (server) {
      nghttp2_session_server_new2(&session_, cb, this, opt);
    } else {
      nghttp2_session_client_new2(&session_, cb, this, opt);
    }
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, options.initial_window},
                                   {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000}};
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, iv, 2);
  }
  ~Peer() { nghttp2_session_del(session_); }

  nghttp2_session* session() { return session_; }

  int32_t Request(const Fields& head, std::string body = "", bool end = true,
                  const Fields& trailers = {}) {
    std::vector<nghttp2_nv> nva = Nva(head);
    const bool headers_only = body.empty() && end && trailers.empty();
    const int32_t id = nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(),
                                              headers_only ? nullptr : &provider_, nullptr);
    if (!headers_only) out_[id] = {std::move(body), 0, end, trailers};
    return id;
  }
  void Respond(int32_t id, const Fields& head, std::string body = "", bool end = true,
               const Fields& trailers = {}) {
    std::vector<nghttp2_nv> nva = Nva(head);
    const bool headers_only = body.empty() && end && trailers.empty();
    ASSERT_EQ(nghttp2_submit_response(session_, id, nva.data(), nva.size(),
                                      headers_only ? nullptr : &provider_),
              0);
    if (!headers_only) out_[id] = {std::move(body), 0, end, trailers};
  }
  // More body for a stream whose provider is open (end: then END_STREAM or the trailers).
  void Send(int32_t id, const std::string& more, bool end) {
    out_[id].data += more;
    out_[id].end = end;
    nghttp2_session_resume_data(session_, id);
  }
  void Reset(int32_t id, uint32_t code) {
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, id, code);
  }
  void ConsumeAll() {
    for (auto& [id, log] : streams) {
      if (log.unconsumed) nghttp2_session_consume(session_, id, log.unconsumed);
      log.unconsumed = 0;
    }
  }

  std::string Output() {
    std::string out;
    for (;;) {
      const uint8_t* data;
      const ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n <= 0) break;
      out.append(reinterpret_cast<const char*>(data), n);
    }
    sent_bytes += out.size();
    return out;
  }
  void Input(std::string_view bytes) {
    if (bytes.empty()) return;
    const ssize_t n = nghttp2_session_mem_recv(
        session_, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    if (n < 0) recv_error = static_cast<int>(n);
  }

  std::map<int32_t, StreamLog> streams;
  std::vector<int32_t> requests;  // server: streams in the order their heads arrived
  bool goaway = false;
  uint32_t goaway_code = 0;
  int32_t goaway_last_id = -1;
  int recv_error = 0;
  size_t sent_bytes = 0;
  size_t body_bytes_sent = 0;

 private:
  struct Body {
    std::string data;
    size_t off = 0;
    bool end = true;
    Fields trailers;
  };

  static Peer& Self(void* p) { return *static_cast<Peer*>(p); }
  static int BeginHeaders(nghttp2_session*, const nghttp2_frame* f, void* p) {
    Self(p).streams[f->hd.stream_id].blocks.emplace_back();
    return 0;
  }
  static int Header(nghttp2_session*, const nghttp2_frame* f, const uint8_t* n, size_t nl,
                    const uint8_t* v, size_t vl, uint8_t, void* p) {
    Self(p).streams[f->hd.stream_id].blocks.back().emplace_back(
        std::string(reinterpret_cast<const char*>(n), nl),
        std::string(reinterpret_cast<const char*>(v), vl));
    return 0;
  }
  static int FrameRecv(nghttp2_session*, const nghttp2_frame* f, void* p) {
    Peer& self = Self(p);
    if (f->hd.type == NGHTTP2_GOAWAY) {
      self.goaway = true;
      self.goaway_code = f->goaway.error_code;
      self.goaway_last_id = f->goaway.last_stream_id;
    }
    if (f->hd.type == NGHTTP2_RST_STREAM) {
      self.streams[f->hd.stream_id].rst_received = true;
      self.streams[f->hd.stream_id].rst_code = f->rst_stream.error_code;
    }
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
      self.requests.push_back(f->hd.stream_id);
    }
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      self.streams[f->hd.stream_id].end = true;
    }
    return 0;
  }
  static int DataChunk(nghttp2_session*, uint8_t, int32_t id, const uint8_t* d, size_t len,
                       void* p) {
    StreamLog& log = Self(p).streams[id];
    log.data.append(reinterpret_cast<const char*>(d), len);
    if (Self(p).options_.manual_window) log.unconsumed += len;
    return 0;
  }
  static int StreamClose(nghttp2_session*, int32_t id, uint32_t code, void* p) {
    Self(p).streams[id].closed = true;
    Self(p).streams[id].close_code = code;
    return 0;
  }
  static ssize_t Read(nghttp2_session* s, int32_t id, uint8_t* buf, size_t len, uint32_t* flags,
                      nghttp2_data_source*, void* p) {
    Peer& self = Self(p);
    Body& b = self.out_[id];
    const size_t n = std::min(len, b.data.size() - b.off);
    std::copy_n(b.data.data() + b.off, n, buf);
    b.off += n;
    self.body_bytes_sent += n;
    if (b.off == b.data.size()) {
      if (!b.end) return n == 0 ? ssize_t{NGHTTP2_ERR_DEFERRED} : static_cast<ssize_t>(n);
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      if (!b.trailers.empty()) {
        std::vector<nghttp2_nv> nva = Nva(b.trailers);
        nghttp2_submit_trailer(s, id, nva.data(), nva.size());
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      }
    }
    return static_cast<ssize_t>(n);
  }

  bool server_;
  Options options_;
  nghttp2_session* session_ = nullptr;
  nghttp2_data_provider provider_{{.ptr = nullptr}, &Read};
  std::map<int32_t, Body> out_;
};

Fields Get_(std::string path, std::string authority = "svc.ns:8080") {
  return {{":method", "GET"}, {":scheme", "http"}, {":authority", authority}, {":path", path}};
}
Fields Post(std::string path, std::string content_type = "application/octet-stream") {
  return {{":method", "POST"},
          {":scheme", "http"},
          {":authority", "svc.ns:8080"},
          {":path", path},
          {"content-type", content_type}};
}
Fields Grpc(std::string path) {
  Fields f = Post(path, "application/grpc");
  f.emplace_back("te", "trailers");
  return f;
}

struct FakeClock {
  absl::Time now = absl::FromUnixSeconds(1700000000);
  void Advance(absl::Duration d) { now += d; }
};

class H2Test : public ::testing::Test {
 protected:
  void Start(Http2Options options = {}, Peer::Options client_options = {},
             Peer::Options server_options = {}) {
    options.clock = [this] { return clock_.now; };
    auto created = Http2Session::Create(
        std::move(options), [this](const L7Request& r) { return authorize_(r); },
        [this](const ExchangeRecord& r) { records_.push_back(r); });
    ASSERT_TRUE(created.ok()) << created.status();
    session_ = std::move(created).value();
    client_ = std::make_unique<Peer>(false, client_options);
    server_ = std::make_unique<Peer>(true, server_options);
  }

  // One relay round after another until nothing moves.
  void Pump() {
    for (int i = 0; i < 100000; ++i) {
      bool moved = false;
      client_pending_ += client_->Output();
      if (!client_pending_.empty() && !session_->abort) {
        const size_t n = session_->FromClient(client_pending_);
        EXPECT_LE(n, client_pending_.size());
        if (n == 0 && session_->to_client.empty() && session_->to_server.empty()) {
          ADD_FAILURE() << "took nothing with empty outputs";
          return;
        }
        client_pending_.erase(0, n);
        moved |= n > 0;
      }
      server_pending_ += server_->Output();
      if (!server_pending_.empty() && !session_->abort) {
        const size_t n = session_->FromServer(server_pending_);
        server_pending_.erase(0, n);
        moved |= n > 0;
      }
      max_to_server_ = std::max(max_to_server_, session_->to_server.size());
      max_to_client_ = std::max(max_to_client_, session_->to_client.size());
      max_buffered_ = std::max(max_buffered_, session_->buffered_bytes());
      if (server_reads_ && !session_->to_server.empty()) {
        server_->Input(session_->to_server);
        session_->to_server.clear();
        moved = true;
      }
      if (client_reads_ && !session_->to_client.empty()) {
        client_->Input(session_->to_client);
        session_->to_client.clear();
        moved = true;
      }
      if (!moved) return;
    }
    ADD_FAILURE() << "pump did not settle";
  }

  FakeClock clock_;
  std::function<L7Verdict(const L7Request&)> authorize_ = [](const L7Request&) {
    return L7Verdict{};
  };
  std::vector<ExchangeRecord> records_;
  std::unique_ptr<Http2Session> session_;
  std::unique_ptr<Peer> client_, server_;
  std::string client_pending_, server_pending_;
  bool server_reads_ = true, client_reads_ = true;
  size_t max_to_server_ = 0, max_to_client_ = 0, max_buffered_ = 0;
};

TEST_F(H2Test, UnaryRequestAndResponseWithBodies) {
  Start();
  Fields head = Post("/upload?x=1");
  head.emplace_back("x-custom", "yes");
  const int32_t id = client_->Request(head, "hello", true);
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  const int32_t sid = server_->requests[0];
  const Peer::StreamLog& got = server_->streams[sid];
  EXPECT_EQ(Get(got.blocks[0], ":method"), "POST");
  EXPECT_EQ(Get(got.blocks[0], ":path"), "/upload?x=1");
  EXPECT_EQ(Get(got.blocks[0], ":authority"), "svc.ns:8080");
  EXPECT_EQ(Get(got.blocks[0], "x-custom"), "yes");
  EXPECT_EQ(got.data, "hello");
  EXPECT_TRUE(got.end);
  clock_.Advance(absl::Milliseconds(5));
  server_->Respond(sid, {{":status", "201"}, {"x-reply", "1"}}, "world!");
  Pump();
  const Peer::StreamLog& resp = client_->streams[id];
  ASSERT_FALSE(resp.blocks.empty());
  EXPECT_EQ(Get(resp.blocks[0], ":status"), "201");
  EXPECT_EQ(Get(resp.blocks[0], "x-reply"), "1");
  EXPECT_EQ(resp.data, "world!");
  EXPECT_TRUE(resp.end);
  EXPECT_TRUE(resp.closed);
  EXPECT_EQ(resp.close_code, NGHTTP2_NO_ERROR);

  ASSERT_EQ(records_.size(), 1u);
  const ExchangeRecord& r = records_[0];
  EXPECT_EQ(r.request.method, "POST");
  EXPECT_EQ(r.request.path, "/upload");
  EXPECT_EQ(r.request.authority, "svc.ns:8080");
  EXPECT_FALSE(r.request.grpc);
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.grpc_status, -1);
  EXPECT_FALSE(r.denied);
  EXPECT_FALSE(r.proxy_answered);
  EXPECT_EQ(r.request_bytes, 5u);
  EXPECT_EQ(r.response_bytes, 6u);
  EXPECT_EQ(r.first_byte - r.start, absl::Milliseconds(5));
  EXPECT_GE(r.end, r.first_byte);
  EXPECT_EQ(session_->open_streams(), 0u);
  EXPECT_EQ(session_->buffered_bytes(), 0u);
  EXPECT_FALSE(session_->abort || session_->shut_client || session_->shut_server);
}

TEST_F(H2Test, PrefaceAndFramesDeliveredOneByteAtATime) {
  Start();
  const int32_t id = client_->Request(Get_("/one"));
  const std::string bytes = client_->Output();
  for (char c : bytes) ASSERT_EQ(session_->FromClient(std::string_view(&c, 1)), 1u);
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  server_->Respond(server_->requests[0], {{":status", "200"}}, "ok");
  Pump();
  EXPECT_EQ(client_->streams[id].data, "ok");
  EXPECT_FALSE(session_->abort);
}

TEST_F(H2Test, GrpcTrailersPassThroughBothWays) {
  Start();
  const int32_t id = client_->Request(Grpc("/pkg.Svc/Method"), std::string("\0\0\0\0\x02hi", 7),
                                      true, {{"x-req-trailer", "t"}});
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  const int32_t sid = server_->requests[0];
  ASSERT_EQ(server_->streams[sid].blocks.size(), 2u);
  EXPECT_EQ(Get(server_->streams[sid].blocks[0], "te"), "trailers");
  EXPECT_EQ(Get(server_->streams[sid].blocks[1], "x-req-trailer"), "t");
  server_->Respond(sid, {{":status", "200"}, {"content-type", "application/grpc"}},
                   std::string("\0\0\0\0\x03"
                               "abc",
                               8),
                   true, {{"grpc-status", "0"}, {"grpc-message", "fine"}});
  Pump();
  const Peer::StreamLog& resp = client_->streams[id];
  ASSERT_EQ(resp.blocks.size(), 2u);
  EXPECT_EQ(Get(resp.blocks[1], "grpc-status"), "0");
  EXPECT_EQ(Get(resp.blocks[1], "grpc-message"), "fine");
  EXPECT_EQ(resp.data.size(), 8u);
  EXPECT_TRUE(resp.end);
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_TRUE(records_[0].request.grpc);
  EXPECT_EQ(records_[0].request.path, "/pkg.Svc/Method");
  EXPECT_EQ(records_[0].grpc_status, 0);
  EXPECT_EQ(records_[0].status, 200);
}

TEST_F(H2Test, GrpcTrailersOnlyResponseCarriesItsStatus) {
  Start();
  const int32_t id = client_->Request(Grpc("/pkg.Svc/Missing"), std::string("\0\0\0\0\0", 5));
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  server_->Respond(server_->requests[0], {{":status", "200"},
                                          {"content-type", "application/grpc"},
                                          {"grpc-status", "5"},
                                          {"grpc-message", "not found"}});
  Pump();
  const Peer::StreamLog& resp = client_->streams[id];
  ASSERT_EQ(resp.blocks.size(), 1u);
  EXPECT_EQ(Get(resp.blocks[0], "grpc-status"), "5");
  EXPECT_TRUE(resp.end);
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].grpc_status, 5);
}

// The client does not give its window back: the session holds at most one stream window, and
// the server is stopped by flow control instead of the session buffering its 2 MiB.
TEST_F(H2Test, ServerStreamingToASlowReaderIsBoundedByTheWindows) {
  Http2Options options;
  options.stream_window = 64 << 10;
  options.connection_window = 256 << 10;
  Start(options, {.manual_window = true, .initial_window = 64 << 10});
  const int32_t id = client_->Request(Grpc("/pkg.Svc/Stream"), std::string(5, '\0'));
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  const int32_t sid = server_->requests[0];
  std::string message;
  for (int i = 0; i < 128; ++i) message += std::string(16 << 10, static_cast<char>('a' + i % 26));
  server_->Respond(sid, {{":status", "200"}, {"content-type", "application/grpc"}}, "", false);
  for (int i = 0; i < 128; ++i) {
    server_->Send(sid, message.substr(i * (16 << 10), 16 << 10), false);
    Pump();
  }
  // Client window (64 KiB) + the session's stream window (64 KiB) at most, nothing more.
  EXPECT_LE(server_->body_bytes_sent, (128u << 10) + 1);
  EXPECT_LE(max_buffered_, 64u << 10);
  // The client's connection window (65535) is the smaller one here.
  EXPECT_GE(client_->streams[id].data.size(), 60u << 10);
  EXPECT_LE(client_->streams[id].data.size(), 64u << 10);
  server_->Send(sid, "", true);
  // The client reads in steps; each step lets exactly what it consumed through.
  for (int i = 0; i < 1000 && !client_->streams[id].end; ++i) {
    client_->ConsumeAll();
    Pump();
  }
  EXPECT_EQ(client_->streams[id].data, message);
  EXPECT_TRUE(client_->streams[id].end);
  EXPECT_LE(max_buffered_, 64u << 10);
}

// The server's socket is not read (the relay cannot write to_server): the session stops taking
// the client's bytes at its output budget, and what it holds stays bounded.
TEST_F(H2Test, UploadToAServerThatDoesNotReadIsBoundedByTheOutputBudget) {
  Http2Options options;
  options.stream_window = 64 << 10;
  options.connection_window = 256 << 10;
  options.output_budget = 64 << 10;
  Start(options);
  std::string body(4 << 20, 'x');
  for (size_t i = 0; i < body.size(); i += 997) body[i] = static_cast<char>(i % 251);
  const int32_t id = client_->Request(Post("/big"), body);
  server_reads_ = false;
  Pump();
  // One slice of input and one DATA frame beyond the budget at most.
  EXPECT_LE(max_to_server_, (64u << 10) + (16u << 10) + 1024);
  EXPECT_LE(session_->buffered_bytes(), 64u << 10);
  EXPECT_FALSE(client_pending_.empty());  // the rest waits in the "socket"
  server_reads_ = true;
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  EXPECT_EQ(server_->streams[server_->requests[0]].data, body);
  server_->Respond(server_->requests[0], {{":status", "200"}});
  Pump();
  EXPECT_TRUE(client_->streams[id].end);
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].request_bytes, body.size());
}

// The server reads its socket but its application does not consume: the client's window is not
// opened beyond what the server's window took.
TEST_F(H2Test, UploadIsHeldBackByTheServersWindowEndToEnd) {
  Http2Options options;
  options.stream_window = 64 << 10;
  options.connection_window = 256 << 10;
  Start(options, {}, {.manual_window = true, .initial_window = 64 << 10});
  const std::string body(1 << 20, 'y');
  client_->Request(Post("/big"), body);
  Pump();
  // Server window (64 KiB) + the session's stream window (64 KiB).
  EXPECT_LE(client_->body_bytes_sent, 128u << 10);
  EXPECT_LE(max_buffered_, 64u << 10);
  for (int i = 0; i < 1000 && server_->streams[1].data.size() < body.size(); ++i) {
    server_->ConsumeAll();
    Pump();
  }
  EXPECT_EQ(server_->streams[1].data, body);
}

TEST_F(H2Test, HundredConcurrentStreams) {
  Start();
  std::vector<int32_t> ids;
  for (int i = 0; i < 100; ++i) {
    ids.push_back(client_->Request(Post("/s/" + std::to_string(i)), "req" + std::to_string(i)));
  }
  Pump();
  ASSERT_EQ(server_->requests.size(), 100u);
  std::vector<int32_t> order = server_->requests;
  std::reverse(order.begin(), order.end());
  for (int32_t sid : order) {
    const std::string path = Get(server_->streams[sid].blocks[0], ":path");
    server_->Respond(sid, {{":status", "200"}}, "resp for " + path);
  }
  Pump();
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(client_->streams[ids[i]].data, "resp for /s/" + std::to_string(i));
    EXPECT_TRUE(client_->streams[ids[i]].end);
  }
  EXPECT_EQ(records_.size(), 100u);
  EXPECT_EQ(session_->open_streams(), 0u);
}

// More streams than the server allows: the rest wait for its streams to finish, none is lost.
TEST_F(H2Test, StreamsBeyondTheServersLimitWaitForIt) {
  Start();
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 2}};
  nghttp2_submit_settings(server_->session(), NGHTTP2_FLAG_NONE, iv, 1);
  Pump();
  std::vector<int32_t> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(client_->Request(Get_("/q")));
  Pump();
  EXPECT_EQ(server_->requests.size(), 2u);
  for (size_t answered = 0; answered < server_->requests.size(); ++answered) {
    server_->Respond(server_->requests[answered], {{":status", "200"}}, "x");
    Pump();
  }
  EXPECT_EQ(server_->requests.size(), 6u);
  for (int32_t id : ids) EXPECT_TRUE(client_->streams[id].end);
}

TEST_F(H2Test, ClientResetReachesTheServerWithItsCode) {
  Start();
  const int32_t id = client_->Request(Post("/stream"), "part", false);
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  const int32_t sid = server_->requests[0];
  clock_.Advance(absl::Seconds(5));
  client_->Reset(id, NGHTTP2_CANCEL);
  Pump();
  EXPECT_TRUE(server_->streams[sid].rst_received);
  EXPECT_EQ(server_->streams[sid].rst_code, NGHTTP2_CANCEL);
  EXPECT_EQ(session_->open_streams(), 0u);
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].status, 0);
  EXPECT_FALSE(session_->abort);
}

TEST_F(H2Test, ServerResetReachesTheClientWithItsCode) {
  Start();
  const int32_t id = client_->Request(Grpc("/pkg.Svc/Stream"), std::string(5, '\0'), false);
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  server_->Reset(server_->requests[0], NGHTTP2_INTERNAL_ERROR);
  Pump();
  EXPECT_TRUE(client_->streams[id].rst_received);
  EXPECT_EQ(client_->streams[id].rst_code, NGHTTP2_INTERNAL_ERROR);
  EXPECT_EQ(session_->open_streams(), 0u);
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].status, 0);
  EXPECT_EQ(records_[0].first_byte, absl::InfinitePast());
}

TEST_F(H2Test, DeniedPlainRequestGets403AndTheServerNeverSeesIt) {
  Http2Options options;
  options.stream_window = 64 << 10;
  options.connection_window = 256 << 10;
  Start(options);
  std::vector<L7Request> asked;
  authorize_ = [&](const L7Request& r) {
    asked.push_back(r);
    return r.path == "/admin" ? L7Verdict{false, "ns/deny-admin"} : L7Verdict{};
  };
  // Its body is discarded but its window given back: the next request's 1 MiB still passes.
  const int32_t denied = client_->Request(Post("/admin?q"), std::string(200 << 10, 'd'));
  Pump();
  EXPECT_TRUE(server_->requests.empty());
  const Peer::StreamLog& resp = client_->streams[denied];
  ASSERT_FALSE(resp.blocks.empty());
  EXPECT_EQ(Get(resp.blocks[0], ":status"), "403");
  EXPECT_EQ(resp.data, "denied by policy\n");
  EXPECT_TRUE(resp.end);
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0].method, "POST");
  EXPECT_EQ(asked[0].path, "/admin");
  EXPECT_EQ(asked[0].authority, "svc.ns:8080");
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_TRUE(records_[0].denied);
  EXPECT_TRUE(records_[0].proxy_answered);
  EXPECT_EQ(records_[0].policy, "ns/deny-admin");
  EXPECT_EQ(records_[0].status, 403);
  EXPECT_EQ(records_[0].first_byte, absl::InfinitePast());

  const std::string body(1 << 20, 'o');
  const int32_t ok = client_->Request(Post("/ok"), body);
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  EXPECT_EQ(server_->streams[server_->requests[0]].data, body);
  server_->Respond(server_->requests[0], {{":status", "200"}});
  Pump();
  EXPECT_TRUE(client_->streams[ok].end);
}

TEST_F(H2Test, DeniedGrpcRequestGetsPermissionDeniedTrailersOnly) {
  Start();
  authorize_ = [](const L7Request& r) {
    EXPECT_TRUE(r.grpc);
    return L7Verdict{false, "ns/no-grpc"};
  };
  const int32_t id = client_->Request(Grpc("/pkg.Svc/Method"), std::string(5, '\0'));
  Pump();
  EXPECT_TRUE(server_->requests.empty());
  const Peer::StreamLog& resp = client_->streams[id];
  ASSERT_EQ(resp.blocks.size(), 1u);
  EXPECT_EQ(Get(resp.blocks[0], ":status"), "200");
  EXPECT_EQ(Get(resp.blocks[0], "content-type"), "application/grpc");
  EXPECT_EQ(Get(resp.blocks[0], "grpc-status"), "7");
  EXPECT_EQ(Get(resp.blocks[0], "grpc-message"), "denied by policy");
  EXPECT_TRUE(resp.end);
  EXPECT_TRUE(resp.data.empty());
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_TRUE(records_[0].denied);
  EXPECT_EQ(records_[0].grpc_status, 7);
  EXPECT_EQ(records_[0].policy, "ns/no-grpc");
}

// CONNECT over HTTP/2 is a tunnel of opaque bytes: forwarded where they are admitted, else 403
// (the port's policy cannot decide on what the tunnel carries); a policy change that no longer
// admits them resets the tunnels open.
TEST_F(H2Test, ConnectIsATunnelOnlyWhereOpaqueBytesAreAdmittedAndOneOpenIsResetWhenTheyAreNoMore) {
  Start();
  const Fields connect = {{":method", "CONNECT"}, {":authority", "db:5432"}};
  const int32_t allowed = client_->Request(connect, "ab", /*end=*/false);
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u) << "tunnels allowed: forwarded";
  session_->SetTunnelsAllowed(false);
  const int32_t refused = client_->Request(connect, "ab", /*end=*/false);
  Pump();
  EXPECT_EQ(server_->requests.size(), 1u) << "not admitted: the server never sees it";
  ASSERT_FALSE(client_->streams[refused].blocks.empty());
  EXPECT_EQ(Get(client_->streams[refused].blocks[0], ":status"), "403");
  ASSERT_EQ(records_.size(), 2u);
  EXPECT_TRUE(records_[0].denied || records_[1].denied);
  // The tunnel opened under the old policy: reset both ways, never carried on.
  EXPECT_TRUE(client_->streams[allowed].rst_received);
  EXPECT_EQ(client_->streams[allowed].rst_code, NGHTTP2_CONNECT_ERROR);
  EXPECT_TRUE(client_->streams[allowed].blocks.empty());
  ASSERT_EQ(server_->requests.size(), 1u);
  EXPECT_EQ(server_->streams[server_->requests[0]].rst_code, NGHTTP2_CANCEL);
}

TEST_F(H2Test, SetAuthorizeAppliesToLaterRequests) {
  Start();
  const int32_t first = client_->Request(Get_("/x"));
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  session_->SetAuthorize([](const L7Request&) { return L7Verdict{false, "ns/now-denied"}; });
  const int32_t second = client_->Request(Get_("/x"));
  Pump();
  EXPECT_EQ(server_->requests.size(), 1u);
  EXPECT_EQ(Get(client_->streams[second].blocks[0], ":status"), "403");
  server_->Respond(server_->requests[0], {{":status", "200"}});
  Pump();
  EXPECT_TRUE(client_->streams[first].end);  // the open stream was not touched
}

TEST_F(H2Test, RapidResetFloodGetsEnhanceYourCalmAndAbort) {
  Http2Options options;
  options.rapid_reset_budget = 50;
  Start(options);
  for (int i = 0; i < 200 && !session_->abort; ++i) {
    const int32_t id = client_->Request(Get_("/flood"));
    client_pending_ += client_->Output();  // the HEADERS leave before the reset
    client_->Reset(id, NGHTTP2_CANCEL);
    if (i % 10 == 9) Pump();
  }
  Pump();
  EXPECT_TRUE(session_->abort);
  client_->Input(session_->to_client);  // what a relay writing before it resets would deliver
  EXPECT_TRUE(client_->goaway);
  EXPECT_EQ(client_->goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
  EXPECT_LE(server_->requests.size(), 60u);
}

TEST_F(H2Test, ResetsOfLongLivedStreamsAreNotAFlood) {
  Http2Options options;
  options.rapid_reset_budget = 5;
  Start(options);
  for (int i = 0; i < 20; ++i) {
    const int32_t id = client_->Request(Get_("/long"));
    Pump();
    clock_.Advance(absl::Seconds(2));
    client_->Reset(id, NGHTTP2_CANCEL);
    Pump();
  }
  EXPECT_FALSE(session_->abort);
  EXPECT_FALSE(client_->goaway);
  EXPECT_EQ(server_->requests.size(), 20u);
}

// Raw frames, for what a well-behaved nghttp2 client would not send.
std::string Frame(uint8_t type, uint8_t flags, int32_t stream, std::string_view payload) {
  std::string f;
  f.push_back(static_cast<char>(payload.size() >> 16));
  f.push_back(static_cast<char>(payload.size() >> 8));
  f.push_back(static_cast<char>(payload.size()));
  f.push_back(static_cast<char>(type));
  f.push_back(static_cast<char>(flags));
  f.push_back(static_cast<char>((stream >> 24) & 0x7f));
  f.push_back(static_cast<char>(stream >> 16));
  f.push_back(static_cast<char>(stream >> 8));
  f.push_back(static_cast<char>(stream));
  f.append(payload);
  return f;
}
std::string Preface() {
  return std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + Frame(NGHTTP2_SETTINGS, 0, 0, "");
}

TEST_F(H2Test, ContinuationFloodIsRefusedWithoutBuffering) {
  Start();
  std::string bytes = Preface();
  // HEADERS without END_HEADERS, then CONTINUATION frames that never end the block.
  bytes += Frame(NGHTTP2_HEADERS, 0, 1, "\x82");  // :method GET
  for (int i = 0; i < 1000; ++i)
    bytes += Frame(NGHTTP2_CONTINUATION, 0, 1, std::string(64, '\x82'));
  size_t taken = 0;
  while (taken < bytes.size() && !session_->abort) {
    const size_t n = session_->FromClient(std::string_view(bytes).substr(taken));
    ASSERT_GT(n, 0u);
    taken += n;
  }
  EXPECT_TRUE(session_->abort);
  EXPECT_LT(session_->to_client.size(), 1024u);
  EXPECT_EQ(session_->buffered_bytes(), 0u);
  client_->Input(session_->to_client.substr(0));
  session_->to_server.clear();
}

TEST_F(H2Test, HugeHeaderListIsAnswered431AndNotForwarded) {
  Start({}, {.max_send_header_block = 1 << 20});
  Fields head = Get_("/huge");
  for (int i = 0; i < 25; ++i)
    head.emplace_back("x-big-" + std::to_string(i), std::string(4000, 'h'));
  const int32_t id = client_->Request(head);
  const int32_t next = client_->Request(Get_("/small"));
  Pump();
  ASSERT_FALSE(client_->streams[id].blocks.empty());
  EXPECT_EQ(Get(client_->streams[id].blocks[0], ":status"), "431");
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].status, 431);
  EXPECT_TRUE(records_[0].proxy_answered);
  EXPECT_FALSE(records_[0].denied);
  ASSERT_EQ(server_->requests.size(), 1u);  // only /small
  EXPECT_EQ(Get(server_->streams[server_->requests[0]].blocks[0], ":path"), "/small");
  EXPECT_FALSE(session_->abort);
  server_->Respond(server_->requests[0], {{":status", "200"}});
  Pump();
  EXPECT_TRUE(client_->streams[next].end);
}

TEST_F(H2Test, GarbageInsteadOfThePrefaceAborts) {
  Start();
  const std::string garbage = "GET / HTTP/1.1\r\nHost: x\r\n\r\n" + std::string(100, '\xff');
  EXPECT_EQ(session_->FromClient(garbage), garbage.size());
  EXPECT_TRUE(session_->abort);
  EXPECT_EQ(session_->FromClient("more"), 4u);  // dropped, no crash
}

TEST_F(H2Test, PingFloodFromAClientThatDoesNotReadIsThrottled) {
  Http2Options options;
  options.output_budget = 16 << 10;
  Start(options);
  std::string bytes = Preface();
  for (int i = 0; i < 50000; ++i) bytes += Frame(NGHTTP2_PING, 0, 0, std::string(8, 'p'));
  size_t taken = 0;
  for (int i = 0; i < 1000; ++i) {
    const size_t n = session_->FromClient(std::string_view(bytes).substr(taken));
    if (n == 0) break;
    taken += n;
  }
  EXPECT_LT(taken, bytes.size());
  EXPECT_LE(session_->to_client.size(), 4 * (16u << 10) + (32u << 10));
  EXPECT_FALSE(session_->to_client.empty());  // taking nothing is fine: outputs are pending
}

TEST_F(H2Test, EmptyDataFloodGetsEnhanceYourCalm) {
  Start();
  const int32_t id = client_->Request(Post("/empty"), "", false);
  Pump();
  std::string bytes;
  for (int i = 0; i < 100; ++i) bytes += Frame(NGHTTP2_DATA, 0, id, "");
  session_->FromClient(bytes);
  EXPECT_TRUE(session_->abort);
  client_->Input(session_->to_client);
  EXPECT_TRUE(client_->goaway);
  EXPECT_EQ(client_->goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
}

// Found by the fuzzer: once the session has queued its GOAWAY, a malformed frame later in the
// same input must not reach nghttp2 (it asserted in nghttp2_session_mem_recv).
TEST_F(H2Test, AFloodFollowedByAMalformedFrameInTheSameReadStopsCleanly) {
  Http2Options options;
  options.max_consecutive_empty_frames = 2;
  Start(options);
  std::string bytes =
      Preface() + Frame(NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1, "\x83\x86\x84\x41\x03svc");
  for (int i = 0; i < 5; ++i) bytes += Frame(NGHTTP2_DATA, 0, 1, "");
  bytes += Frame(NGHTTP2_PING, 0, 0, std::string(9, 'p'));  // FRAME_SIZE_ERROR
  EXPECT_EQ(session_->FromClient(bytes), bytes.size());
  EXPECT_TRUE(session_->abort);
  client_->Input(session_->to_client);
  EXPECT_EQ(client_->goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
}

TEST_F(H2Test, DrainSendsGoawayFinishesInFlightThenShuts) {
  Start();
  const int32_t id = client_->Request(Get_("/slow"));
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  session_->Drain();
  Pump();
  EXPECT_TRUE(client_->goaway);
  EXPECT_EQ(client_->goaway_code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(client_->goaway_last_id, id);
  EXPECT_FALSE(session_->shut_client || session_->shut_server || session_->abort);
  server_->Respond(server_->requests[0], {{":status", "200"}}, "late");
  Pump();
  EXPECT_EQ(client_->streams[id].data, "late");
  EXPECT_TRUE(client_->streams[id].end);
  EXPECT_TRUE(session_->shut_client);
  EXPECT_TRUE(session_->shut_server);
  EXPECT_FALSE(session_->abort);
}

// A request the client sent before it saw the GOAWAY is above its last-stream-id: not
// forwarded (the client retries it elsewhere), and the drain does not wait for it.
TEST_F(H2Test, ARequestRacingTheDrainGoawayIsNotForwarded) {
  Start();
  const int32_t first = client_->Request(Get_("/first"));
  Pump();
  client_reads_ = false;
  session_->Drain();
  const int32_t late = client_->Request(Get_("/late"));
  Pump();
  EXPECT_EQ(server_->requests.size(), 1u);
  client_reads_ = true;
  Pump();
  EXPECT_EQ(client_->goaway_last_id, first);
  EXPECT_GT(late, client_->goaway_last_id);
  EXPECT_TRUE(client_->streams[late].closed);
  server_->Respond(server_->requests[0], {{":status", "200"}});
  Pump();
  EXPECT_TRUE(client_->streams[first].end);
  EXPECT_TRUE(session_->shut_client && session_->shut_server);
  EXPECT_EQ(server_->requests.size(), 1u);
}

TEST_F(H2Test, InformationalResponsesAreForwardedBeforeTheFinalOne) {
  Start();
  Fields head = Post("/expect");
  head.emplace_back("expect", "100-continue");
  const int32_t id = client_->Request(head, "", false);
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  const int32_t sid = server_->requests[0];
  const Fields continue_head = {{":status", "100"}};
  std::vector<nghttp2_nv> cont = Nva(continue_head);
  nghttp2_submit_headers(server_->session(), NGHTTP2_FLAG_NONE, sid, nullptr, cont.data(),
                         cont.size(), nullptr);
  Pump();
  ASSERT_EQ(client_->streams[id].blocks.size(), 1u);
  EXPECT_EQ(Get(client_->streams[id].blocks[0], ":status"), "100");
  client_->Send(id, "body", true);
  Pump();
  EXPECT_EQ(server_->streams[sid].data, "body");
  server_->Respond(sid, {{":status", "200"}}, "done");
  Pump();
  ASSERT_EQ(client_->streams[id].blocks.size(), 2u);
  EXPECT_EQ(Get(client_->streams[id].blocks[1], ":status"), "200");
  EXPECT_EQ(client_->streams[id].data, "done");
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].status, 200);
}

TEST_F(H2Test, DrainWithNothingInFlightShutsAtOnce) {
  Start();
  Pump();
  session_->Drain();
  EXPECT_TRUE(session_->shut_client && session_->shut_server);
  client_->Input(session_->to_client);
  EXPECT_TRUE(client_->goaway);
}

TEST_F(H2Test, ServerGoawayRefusesStreamsAboveItsLastIdSoClientsRetry) {
  Start();
  const int32_t a = client_->Request(Get_("/a"));
  const int32_t b = client_->Request(Get_("/b"));
  Pump();
  ASSERT_EQ(server_->requests.size(), 2u);
  nghttp2_submit_goaway(server_->session(), NGHTTP2_FLAG_NONE, server_->requests[0],
                        NGHTTP2_NO_ERROR, nullptr, 0);
  server_->Respond(server_->requests[0], {{":status", "200"}}, "a");
  Pump();
  EXPECT_EQ(client_->streams[a].data, "a");
  EXPECT_TRUE(client_->streams[a].end);
  EXPECT_TRUE(client_->streams[b].rst_received);
  EXPECT_EQ(client_->streams[b].rst_code, NGHTTP2_REFUSED_STREAM);
  EXPECT_TRUE(client_->goaway);  // new requests go to a new connection
  EXPECT_TRUE(session_->shut_client && session_->shut_server);
}

TEST_F(H2Test, ServerClosingMidResponseEndsTheClientsStreams) {
  Start();
  const int32_t plain = client_->Request(Get_("/p"));
  const int32_t grpc = client_->Request(Grpc("/pkg.Svc/M"), std::string(5, '\0'));
  const int32_t half = client_->Request(Get_("/h"));
  Pump();
  ASSERT_EQ(server_->requests.size(), 3u);
  server_->Respond(server_->requests[2], {{":status", "200"}}, "partial", false);
  Pump();
  session_->ServerClosed();
  Pump();
  EXPECT_EQ(Get(client_->streams[plain].blocks[0], ":status"), "502");
  EXPECT_EQ(Get(client_->streams[grpc].blocks[0], "grpc-status"), "14");
  EXPECT_TRUE(client_->streams[half].rst_received);
  EXPECT_EQ(client_->streams[half].rst_code, NGHTTP2_INTERNAL_ERROR);
  EXPECT_TRUE(session_->shut_client && session_->shut_server);
  ASSERT_EQ(records_.size(), 3u);
  for (const ExchangeRecord& r : records_) {
    // The two answered with 502 / UNAVAILABLE by the proxy; the reset one had its head already.
    EXPECT_EQ(r.proxy_answered, r.status == 502 || r.grpc_status == 14);
    EXPECT_FALSE(r.denied);
  }
}

TEST_F(H2Test, ClientClosedFinishesCompleteRequestsThenShuts) {
  Start();
  const int32_t done = client_->Request(Get_("/done"));
  client_->Request(Post("/open"), "x", false);
  Pump();
  ASSERT_EQ(server_->requests.size(), 2u);
  session_->ClientClosed();
  Pump();
  EXPECT_TRUE(server_->streams[server_->requests[1]].rst_received);
  EXPECT_FALSE(session_->shut_client);
  server_->Respond(server_->requests[0], {{":status", "200"}}, "bye");
  Pump();
  EXPECT_EQ(client_->streams[done].data, "bye");
  EXPECT_TRUE(session_->shut_client && session_->shut_server);
}

TEST_F(H2Test, StreamsLiveForHours) {
  Start();
  const int32_t id = client_->Request(Grpc("/pkg.Svc/Chat"), std::string(5, '\0'), false);
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  const int32_t sid = server_->requests[0];
  server_->Respond(sid, {{":status", "200"}, {"content-type", "application/grpc"}}, "", false,
                   {{"grpc-status", "0"}});
  for (int hour = 0; hour < 5; ++hour) {
    clock_.Advance(absl::Hours(1));
    client_->Send(id, std::string(5, 'c'), false);
    server_->Send(sid, std::string(5, 's'), false);
    Pump();
  }
  client_->Send(id, "", true);
  server_->Send(sid, "", true);
  Pump();
  EXPECT_EQ(server_->streams[sid].data.size(), 30u);
  EXPECT_EQ(client_->streams[id].data.size(), 25u);
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].grpc_status, 0);
  EXPECT_GE(records_[0].end - records_[0].start, absl::Hours(5));
}

TEST_F(H2Test, ServerClosingTheRequestEarlyStopsTheClientWithNoError) {
  Start();
  const int32_t id = client_->Request(Post("/upload"), "some", false);
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  const int32_t sid = server_->requests[0];
  server_->Respond(sid, {{":status", "413"}}, "too big");
  Pump();
  server_->Reset(sid, NGHTTP2_NO_ERROR);
  Pump();
  EXPECT_EQ(client_->streams[id].data, "too big");
  EXPECT_TRUE(client_->streams[id].end);
  EXPECT_TRUE(client_->streams[id].rst_received);
  EXPECT_EQ(client_->streams[id].rst_code, NGHTTP2_NO_ERROR);
  EXPECT_EQ(session_->open_streams(), 0u);
  ASSERT_EQ(records_.size(), 1u);
  EXPECT_EQ(records_[0].status, 413);
}

TEST(H2Options, CreateRejectsWindowsThatCanDeadlock) {
  Http2Options equal;
  equal.connection_window = equal.stream_window;
  EXPECT_FALSE(Http2Session::Create(equal, nullptr, nullptr).ok());
  Http2Options tiny;
  tiny.stream_window = 1000;
  EXPECT_FALSE(Http2Session::Create(tiny, nullptr, nullptr).ok());
  EXPECT_TRUE(Http2Session::Create({}, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace shunt::agent

namespace shunt::agent {
namespace {


// HTTP/2: the observer of a stream sees its DATA payloads each way and its final response head.
TEST_F(H2Test, AnObserverSeesAStreamsBodiesAndItsResponseHead) {
  Start();
  session_->observe = [](const L7Request&) -> std::unique_ptr<BodyObserver> {
    return std::make_unique<RecordingObserver>();
  };
  const int32_t id = client_->Request(Post("/v1/embeddings"), "{\"model\":\"m\"}", true);
  Pump();
  ASSERT_EQ(server_->requests.size(), 1u);
  server_->Respond(server_->requests[0],
                   {{":status", "200"}, {"content-type", "application/json"},
                    {"content-encoding", "gzip"}},
                   "{\"usage\":{}}");
  Pump();
  EXPECT_EQ(client_->streams[id].data, "{\"usage\":{}}");
  ASSERT_EQ(records_.size(), 1u);
  auto* o = dynamic_cast<RecordingObserver*>(records_[0].observer.get());
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(o->request, "{\"model\":\"m\"}");
  EXPECT_EQ(o->status, 200);
  EXPECT_EQ(o->head, "application/json|gzip");
  EXPECT_EQ(o->response, "{\"usage\":{}}");
}

}  // namespace
}  // namespace shunt::agent
