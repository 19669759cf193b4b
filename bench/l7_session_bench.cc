// What the transparent proxy's L7 sessions cost per request, in user space alone: no sockets, no
// kernel, one thread. A client and a server (nghttp2 sessions for HTTP/2, fixed bytes for
// HTTP/1.1) talk to each other directly (the baseline: what the two endpoints' own framing
// costs), then through the proxy's session (Http2Session, Http1Session), in the same run; the
// difference is the proxy's cost per request. The shapes are the relay bench's: h2load's GET
// with 10 streams in flight per connection, wrk's keep-alive GET one at a time, nginx's 200 with
// a 64-byte body. Every response is checked (status, body length).
//
//   ./build/shunt-bench-l7-session --requests=200000 --rounds=5
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "agent/proxy/http1_session.h"
#include "agent/proxy/http2/h2_session.h"

ABSL_FLAG(int, requests, 200000, "Requests per measurement.");
ABSL_FLAG(int, rounds, 5, "Rounds (median reported).");
ABSL_FLAG(int, streams, 10, "HTTP/2 streams in flight (h2load -m).");
ABSL_FLAG(bool, authorize, true, "Give the session an authorize callback (as the agent does).");

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "l7-session bench: %s\n", what);
  std::exit(1);
}

const std::string kBody = std::string(63, 'x') + "\n";

nghttp2_nv Nv(std::string_view name, std::string_view value) {
  return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
          reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
          NGHTTP2_NV_FLAG_NONE};
}

// h2load's side: keeps `streams` GETs in flight, counts the complete 200s.
struct H2Client {
  nghttp2_session* session = nullptr;
  int target = 0, submitted = 0, done = 0, in_flight = 0, streams = 0;
  size_t body_bytes = 0;

  static int OnClose(nghttp2_session*, int32_t, uint32_t error_code, void* user) {
    auto* c = static_cast<H2Client*>(user);
    if (error_code != NGHTTP2_NO_ERROR) Die("a stream was reset");
    ++c->done;
    --c->in_flight;
    return 0;
  }
  static int OnData(nghttp2_session*, uint8_t, int32_t, const uint8_t*, size_t len, void* user) {
    static_cast<H2Client*>(user)->body_bytes += len;
    return 0;
  }
  static int OnHeader(nghttp2_session*, const nghttp2_frame*, const uint8_t* name, size_t namelen,
                      const uint8_t* value, size_t valuelen, uint8_t, void*) {
    if (std::string_view(reinterpret_cast<const char*>(name), namelen) == ":status" &&
        std::string_view(reinterpret_cast<const char*>(value), valuelen) != "200") {
      Die("a response was not 200");
    }
    return 0;
  }

  explicit H2Client(int target_requests, int in_flight_streams)
      : target(target_requests), streams(in_flight_streams) {
    nghttp2_session_callbacks* cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, OnClose);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, OnData);
    nghttp2_session_callbacks_set_on_header_callback(cb, OnHeader);
    nghttp2_session_client_new(&session, cb, this);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry s[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (1 << 30) - 1}};
    nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, s, 1);
  }
  ~H2Client() { nghttp2_session_del(session); }

  void Submit() {
    static const nghttp2_nv nva[] = {Nv(":method", "GET"), Nv(":path", "/"),
                                     Nv(":scheme", "http"), Nv(":authority", "10.0.0.4:8082"),
                                     Nv("user-agent", "h2load nghttp2/1.52.0")};
    while (in_flight < streams && submitted < target) {
      if (nghttp2_submit_request(session, nullptr, nva, std::size(nva), nullptr, nullptr) < 0) {
        Die("submit_request");
      }
      ++submitted;
      ++in_flight;
    }
  }
};

// nginx's side: answers each GET with a 200 and the body.
struct H2Server {
  nghttp2_session* session = nullptr;

  static ssize_t Read(nghttp2_session*, int32_t, uint8_t* buf, size_t length, uint32_t* flags,
                      nghttp2_data_source*, void*) {
    const size_t n = std::min(length, kBody.size());
    std::memcpy(buf, kBody.data(), n);
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }
  static int OnFrame(nghttp2_session* session, const nghttp2_frame* frame, void*) {
    if (frame->hd.type == NGHTTP2_HEADERS && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      static const std::string len = std::to_string(kBody.size());
      const nghttp2_nv nva[] = {Nv(":status", "200"),
                                Nv("server", "nginx/1.22.1"),
                                Nv("date", "Mon, 07 Dec 2026 03:00:00 GMT"),
                                Nv("content-type", "application/octet-stream"),
                                Nv("content-length", len)};
      nghttp2_data_provider body{};
      body.read_callback = Read;
      nghttp2_submit_response(session, frame->hd.stream_id, nva, std::size(nva), &body);
    }
    return 0;
  }

  H2Server() {
    nghttp2_session_callbacks* cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, OnFrame);
    nghttp2_session_server_new(&session, cb, this);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry s[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 128}};
    nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, s, 1);
  }
  ~H2Server() { nghttp2_session_del(session); }
};

void Send(nghttp2_session* from, std::string& out) {
  for (;;) {
    const uint8_t* data;
    const ssize_t n = nghttp2_session_mem_send(from, &data);
    if (n < 0) Die("mem_send");
    if (n == 0) return;
    out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
  }
}

void Recv(nghttp2_session* to, std::string& in) {
  if (in.empty()) return;
  const ssize_t n =
      nghttp2_session_mem_recv(to, reinterpret_cast<const uint8_t*>(in.data()), in.size());
  if (n != static_cast<ssize_t>(in.size())) Die("mem_recv");
  in.clear();
}

shunt::agent::L7Authorize Authorize() {
  if (!absl::GetFlag(FLAGS_authorize)) return nullptr;
  return [](const shunt::agent::L7Request& r) {
    return shunt::agent::L7Verdict{.allow = r.method != "DELETE", .policy = ""};
  };
}

// Seconds for `requests` HTTP/2 requests, directly or through an Http2Session.
double RunH2(int requests, bool proxied, uint64_t* records) {
  H2Client client(requests, absl::GetFlag(FLAGS_streams));
  H2Server server;
  std::unique_ptr<shunt::agent::Http2Session> proxy;
  if (proxied) {
    auto s = shunt::agent::Http2Session::Create(
        shunt::agent::Http2Options{}, Authorize(),
        [records](const shunt::agent::ExchangeRecord& r) {
          if (r.status == 200) ++*records;
        });
    if (!s.ok()) Die("Http2Session::Create");
    proxy = std::move(*s);
  }
  std::string c2s, s2c;
  const auto t0 = Clock::now();
  while (client.done < requests) {
    client.Submit();
    Send(client.session, c2s);
    if (proxy) {
      if (proxy->FromClient(c2s) != c2s.size()) Die("FromClient took less");
      c2s.clear();
      c2s.swap(proxy->to_server);
    }
    Recv(server.session, c2s);
    Send(server.session, s2c);
    if (proxy) {
      if (proxy->FromServer(s2c) != s2c.size()) Die("FromServer took less");
      s2c.clear();
      s2c.swap(proxy->to_client);
    }
    Recv(client.session, s2c);
    if (proxy && proxy->abort) Die("the session aborted");
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (client.body_bytes != static_cast<size_t>(requests) * kBody.size()) Die("short bodies");
  return secs;
}

// Seconds for `requests` HTTP/1.1 keep-alive requests, one at a time, through an Http1Session
// (directly the endpoints here are fixed bytes: the baseline is the copy of those bytes).
double RunH1(int requests, bool proxied, uint64_t* records) {
  const std::string request = "GET / HTTP/1.1\r\nHost: 10.0.0.4:8081\r\n\r\n";
  const std::string response = "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec "
                               "2026 03:00:00 GMT\r\nContent-Type: application/octet-stream\r\n"
                               "Content-Length: " +
                               std::to_string(kBody.size()) +
                               "\r\nConnection: keep-alive\r\n\r\n" + kBody;
  std::unique_ptr<shunt::agent::Http1Session> proxy;
  if (proxied) {
    proxy = std::make_unique<shunt::agent::Http1Session>(
        shunt::agent::Http1Options{}, Authorize(),
        [records](const shunt::agent::ExchangeRecord& r) {
          if (r.status == 200) ++*records;
        });
  }
  std::string wire;
  size_t got = 0;
  const auto t0 = Clock::now();
  for (int i = 0; i < requests; ++i) {
    wire = request;
    if (proxy) {
      if (proxy->FromClient(wire) != wire.size()) Die("FromClient took less");
      wire.clear();
      wire.swap(proxy->to_server);
    }
    if (wire.size() < 16) Die("no request reached the server");
    wire = response;
    if (proxy) {
      if (proxy->FromServer(wire) != wire.size()) Die("FromServer took less");
      wire.clear();
      wire.swap(proxy->to_client);
    }
    got += wire.size();
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (got < static_cast<size_t>(requests) * kBody.size()) Die("short responses");
  return secs;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int requests = absl::GetFlag(FLAGS_requests), rounds = absl::GetFlag(FLAGS_rounds);
  std::printf("L7 sessions in user space, one thread, %d requests x %d rounds (median)\n",
              requests, rounds);
  std::printf("%-10s %14s %14s %9s %14s %14s\n", "protocol", "direct ns/req", "proxied ns/req",
              "/direct", "proxy ns/req", "proxy req/s");
  for (bool h2 : {false, true}) {
    std::vector<double> direct, proxied;
    uint64_t records = 0;
    for (int r = 0; r < rounds; ++r) {
      direct.push_back(h2 ? RunH2(requests, false, nullptr) : RunH1(requests, false, nullptr));
      proxied.push_back(h2 ? RunH2(requests, true, &records) : RunH1(requests, true, &records));
    }
    if (records != static_cast<uint64_t>(requests) * rounds) Die("exchange records missing");
    const double d = Median(direct) * 1e9 / requests, p = Median(proxied) * 1e9 / requests;
    std::printf("%-10s %14.0f %14.0f %8.2fx %14.0f %14.0f\n", h2 ? "HTTP/2" : "HTTP/1.1", d, p,
                p / d, p - d, 1e9 / (p - d));
  }
  return 0;
}
