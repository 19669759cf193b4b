#include "bench/h2_policy_fleet.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "shunt/v1/discovery.pb.h"

namespace shunt::bench {

struct H2PolicyFleet::Conn {
  H2PolicyFleet* fleet = nullptr;
  int index = 0;
  int fd = -1;
  nghttp2_session* session = nullptr;
  int32_t stream_id = -1;
  std::string body;       // gRPC-framed request messages not yet handed to nghttp2
  std::string in;         // response bytes not yet parsed into messages
  std::string pending;    // bytes nghttp2 produced that the socket did not take yet
  bool want_out = false;  // EPOLLOUT registered
  bool closed = false;
};

namespace {

std::string Frame(const google::protobuf::MessageLite& m) {
  std::string payload = m.SerializeAsString();
  std::string out(5, '\0');
  const uint32_t len = htonl(static_cast<uint32_t>(payload.size()));
  std::memcpy(&out[1], &len, 4);
  return out + payload;
}

}  // namespace

// nghttp2 callbacks (C linkage style, user_data = Conn*).
struct FleetCallbacks {
  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                          uint32_t* data_flags, nghttp2_data_source*, void* user_data) {
    auto* c = static_cast<H2PolicyFleet::Conn*>(user_data);
    (void)data_flags;  // the request body never ends: the stream lives until teardown
    if (c->body.empty()) return NGHTTP2_ERR_DEFERRED;
    const size_t n = std::min(length, c->body.size());
    std::memcpy(buf, c->body.data(), n);
    c->body.erase(0, n);
    return static_cast<ssize_t>(n);
  }
  static int OnData(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data, size_t len,
                    void* user_data) {
    auto* c = static_cast<H2PolicyFleet::Conn*>(user_data);
    if (stream_id != c->stream_id) return 0;
    c->in.append(reinterpret_cast<const char*>(data), len);
    while (c->in.size() >= 5) {
      uint32_t n;
      std::memcpy(&n, c->in.data() + 1, 4);
      n = ntohl(n);
      if (c->in.size() < 5 + static_cast<size_t>(n)) break;
      c->fleet->OnMessage(*c, c->in.data() + 5, n);
      c->in.erase(0, 5 + static_cast<size_t>(n));
    }
    return 0;
  }
  static int OnStreamClose(nghttp2_session*, int32_t stream_id, uint32_t, void* user_data) {
    auto* c = static_cast<H2PolicyFleet::Conn*>(user_data);
    if (stream_id == c->stream_id && !c->closed) {
      c->closed = true;
      std::lock_guard<std::mutex> l(c->fleet->mu_);
      ++c->fleet->closed_;
    }
    return 0;
  }
};

absl::StatusOr<std::unique_ptr<H2PolicyFleet>> H2PolicyFleet::Start(int port, int clients) {
  std::unique_ptr<H2PolicyFleet> f(new H2PolicyFleet());
  f->versions_.resize(clients);
  f->arrivals_.resize(clients);
  f->first_resources_.assign(clients, -1);
  f->epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (f->epoll_fd_ < 0) return ErrnoStatus(errno, "epoll_create1");

  nghttp2_session_callbacks* cbs;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, &FleetCallbacks::OnData);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, &FleetCallbacks::OnStreamClose);

  const std::string authority = absl::StrCat("127.0.0.1:", port);
  for (int i = 0; i < clients; ++i) {
    auto c = std::make_unique<Conn>();
    c->fleet = f.get();
    c->index = i;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
      nghttp2_session_callbacks_del(cbs);
      return ErrnoStatus(errno, "socket");
    }
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
      const absl::Status s = ErrnoStatus(errno, absl::StrCat("connect ", authority));
      close(c->fd);
      nghttp2_session_callbacks_del(cbs);
      return s;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);

    nghttp2_session_client_new(&c->session, cbs, c.get());
    // Large windows: a full state is hundreds of KiB and agents read it whole.
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 24},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    nghttp2_submit_settings(c->session, NGHTTP2_FLAG_NONE, settings, 2);
    nghttp2_session_set_local_window_size(c->session, NGHTTP2_FLAG_NONE, 0, 1 << 24);
    auto nv = [](const char* name, const std::string& value) {
      return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name)),
                        reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())),
                        std::strlen(name), value.size(), NGHTTP2_NV_FLAG_NONE};
    };
    const std::string post = "POST", http = "http", path = "/shunt.v1.PolicyDiscovery/Stream",
                      ctype = "application/grpc", te = "trailers";
    const nghttp2_nv headers[] = {nv(":method", post),    nv(":scheme", http),
                                  nv(":path", path),      nv(":authority", authority),
                                  nv("content-type", ctype), nv("te", te)};
    shunt::v1::PolicyRequest first;
    first.set_node(absl::StrCat("bench-node-", i));
    first.set_agent_version("shunt-bench h2 client");
    c->body = Frame(first);
    nghttp2_data_provider body;
    body.source.ptr = nullptr;
    body.read_callback = &FleetCallbacks::ReadBody;
    c->stream_id = nghttp2_submit_request(c->session, nullptr, headers, 6, &body, c.get());
    if (c->stream_id < 0) {
      nghttp2_session_callbacks_del(cbs);
      const absl::Status s = absl::InternalError(nghttp2_strerror(c->stream_id));
      nghttp2_session_del(c->session);
      close(c->fd);
      return s;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = c.get();
    epoll_ctl(f->epoll_fd_, EPOLL_CTL_ADD, c->fd, &ev);
    f->Flush(*c);
    f->conns_.push_back(std::move(c));
  }
  nghttp2_session_callbacks_del(cbs);
  f->thread_ = std::thread([fp = f.get()] { fp->Loop(); });
  return f;
}

H2PolicyFleet::~H2PolicyFleet() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  for (auto& c : conns_) {
    if (c->session) nghttp2_session_del(c->session);
    if (c->fd >= 0) close(c->fd);
  }
  if (epoll_fd_ >= 0) close(epoll_fd_);
}

void H2PolicyFleet::OnMessage(Conn& c, const char* data, size_t len) {
  const auto now = Clock::now();
  // Only the two fields an agent needs to ACK; the rest is skipped, not decoded.
  using google::protobuf::internal::WireFormatLite;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(data),
                                            static_cast<int>(len));
  in.SetTotalBytesLimit(1 << 30);
  std::string version, nonce;
  int resources = 0;
  while (uint32_t tag = in.ReadTag()) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    if (field == 4) ++resources;
    if (field == 1 || field == 2) {
      uint32_t n;
      if (!in.ReadVarint32(&n) || !in.ReadString(field == 1 ? &version : &nonce, n)) return;
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return;
    }
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    versions_[c.index] = version;
    arrivals_[c.index][version] = now;
    if (first_resources_[c.index] < 0) first_resources_[c.index] = resources;
  }
  shunt::v1::PolicyRequest ack;
  ack.set_response_nonce(nonce);
  ack.set_version_info(version);
  c.body += Frame(ack);
  nghttp2_session_resume_data(c.session, c.stream_id);
}

void H2PolicyFleet::Flush(Conn& c) {
  while (true) {
    if (!c.pending.empty()) {
      const ssize_t n = send(c.fd, c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (n <= 0) {
        if (!c.closed) {
          c.closed = true;
          std::lock_guard<std::mutex> l(mu_);
          ++closed_;
        }
        return;
      }
      c.pending.erase(0, static_cast<size_t>(n));
      continue;
    }
    const uint8_t* out;
    const ssize_t n = nghttp2_session_mem_send(c.session, &out);
    if (n <= 0) break;
    c.pending.assign(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  }
  const bool want_out = !c.pending.empty();
  if (want_out != c.want_out) {
    epoll_event ev{};
    ev.events = EPOLLIN | (want_out ? EPOLLOUT : 0);
    ev.data.ptr = &c;
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
    c.want_out = want_out;
  }
}

void H2PolicyFleet::Loop() {
  std::vector<epoll_event> events(256);
  std::vector<uint8_t> buf(1 << 16);
  while (true) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_) return;
    }
    const int n = epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), 100);
    for (int e = 0; e < n; ++e) {
      auto* c = static_cast<Conn*>(events[e].data.ptr);
      if (c->fd < 0) continue;
      if (events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        while (true) {
          const ssize_t r = recv(c->fd, buf.data(), buf.size(), 0);
          if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          if (r <= 0 || nghttp2_session_mem_recv(c->session, buf.data(), r) < 0) {
            epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
            close(c->fd);
            c->fd = -1;
            if (!c->closed) {
              c->closed = true;
              std::lock_guard<std::mutex> l(mu_);
              ++closed_;
            }
            break;
          }
        }
      }
      if (c->fd >= 0) Flush(*c);
    }
  }
}

std::string H2PolicyFleet::version(int i) {
  std::lock_guard<std::mutex> l(mu_);
  return versions_[i];
}

bool H2PolicyFleet::AllOn(const std::string& v) {
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& x : versions_) {
    if (x != v) return false;
  }
  return true;
}

bool H2PolicyFleet::ArrivalOf(int i, const std::string& v, Clock::time_point* at) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = arrivals_[i].find(v);
  if (it == arrivals_[i].end()) return false;
  *at = it->second;
  return true;
}

int H2PolicyFleet::first_resources(int i) {
  std::lock_guard<std::mutex> l(mu_);
  return first_resources_[i];
}

int H2PolicyFleet::closed() {
  std::lock_guard<std::mutex> l(mu_);
  return closed_;
}

}  // namespace shunt::bench
