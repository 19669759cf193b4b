#include "agent/proxy/http2/h2_session.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace shunt::agent {
namespace {

// Input is handed to nghttp2 in slices so that the output budget is checked between them and
// so that one call cannot queue more than ~1000 ACKs (nghttp2's max_outbound_ack then trips).
constexpr size_t kSlice = 16 << 10;
// One DATA frame's payload at most, whatever the peer's SETTINGS_MAX_FRAME_SIZE: keeps a single
// frame from going far beyond the output budget.
constexpr size_t kMaxDataChunk = 16 << 10;
// A peer that sends frames needing answers (PING, SETTINGS) while not reading them is stopped
// at this many times the budget on the output towards itself.
constexpr size_t kReverseBudgetFactor = 4;
constexpr uint32_t kMaxWindow = (1u << 31) - 1;

std::string_view View(const uint8_t* p, size_t n) { return {reinterpret_cast<const char*>(p), n}; }

// Where a header block is laid out for nghttp2, which copies it when it is submitted: one per
// thread (a session is used by one thread), reused by every submit.
std::vector<nghttp2_nv>& NvaScratch() {
  thread_local std::vector<nghttp2_nv> nva;
  return nva;
}

}  // namespace

// A header block's fields: names and values in one buffer, so that a block costs two allocations
// (reused while the block is), not two per field.
class Http2Session::Fields {
 public:
  bool empty() const { return refs_.empty(); }
  void clear() {
    bytes_.clear();
    refs_.clear();
  }
  // NO_INDEX is kept: never-indexed fields stay so.
  void Add(std::string_view name, std::string_view value, uint8_t flags) {
    if (refs_.empty()) {
      bytes_.reserve(256);
      refs_.reserve(8);
    }
    refs_.push_back({static_cast<uint32_t>(bytes_.size()), static_cast<uint32_t>(name.size()),
                     static_cast<uint32_t>(value.size()),
                     static_cast<uint8_t>(flags & NGHTTP2_NV_FLAG_NO_INDEX)});
    bytes_.append(name);
    bytes_.append(value);
  }
  // The first field of that name, or nullptr.
  const std::string_view* Find(std::string_view name, std::string_view* value) const {
    for (const Ref& r : refs_) {
      if (std::string_view(bytes_.data() + r.offset, r.name_len) == name) {
        *value = std::string_view(bytes_.data() + r.offset + r.name_len, r.value_len);
        return value;
      }
    }
    return nullptr;
  }
  // Every field called `name` (lower case, as HTTP/2 has them) as one list, joined by ", ".
  std::string JoinAll(std::string_view name) const {
    std::string out;
    for (const Ref& r : refs_) {
      if (std::string_view(bytes_.data() + r.offset, r.name_len) != name) continue;
      if (!out.empty()) out += ", ";
      out.append(bytes_.data() + r.offset + r.name_len, r.value_len);
    }
    return out;
  }
  // The fields called `name` replaced by one with `value`, at the end.
  void Replace(std::string_view name, std::string_view value) {
    Fields kept;
    for (const Ref& r : refs_) {
      const std::string_view n(bytes_.data() + r.offset, r.name_len);
      if (n != name) kept.Add(n, std::string_view(bytes_.data() + r.offset + r.name_len,
                                                  r.value_len), r.flags);
    }
    kept.Add(name, value, NGHTTP2_NV_FLAG_NONE);
    *this = std::move(kept);
  }
  // The fields as nghttp2 takes them (it copies them when they are submitted), into `nva`;
  // valid until this block changes.
  const std::vector<nghttp2_nv>& Nva(std::vector<nghttp2_nv>& nva) const {
    nva.clear();
    uint8_t* base = reinterpret_cast<uint8_t*>(const_cast<char*>(bytes_.data()));
    for (const Ref& r : refs_) {
      nva.push_back({base + r.offset, base + r.offset + r.name_len, r.name_len, r.value_len,
                     r.flags});
    }
    return nva;
  }

 private:
  struct Ref {
    uint32_t offset, name_len, value_len;
    uint8_t flags;
  };
  std::string bytes_;
  std::vector<Ref> refs_;
};

namespace {

// DATA waiting for the other side's window: appended at the back, read from the front.
class ByteQueue {
 public:
  size_t size() const { return data_.size() - head_; }
  bool empty() const { return size() == 0; }
  void Append(std::string_view bytes) { data_.append(bytes); }
  size_t Read(uint8_t* out, size_t n) {
    n = std::min(n, size());
    std::memcpy(out, data_.data() + head_, n);
    head_ += n;
    if (head_ == data_.size()) {
      data_.clear();
      head_ = 0;
    } else if (head_ >= (64 << 10) && head_ * 2 >= data_.size()) {
      data_.erase(0, head_);
      head_ = 0;
    }
    return n;
  }
  void Clear() {
    std::string().swap(data_);
    head_ = 0;
  }

 private:
  std::string data_;
  size_t head_ = 0;
};

}  // namespace

// One header block being received, bounded by max_header_list_size (RFC 9113 6.5.2 counting):
// beyond it fields are counted, not kept, and the block is refused once complete.
struct Http2Session::HeaderBlock {
  Fields fields;
  size_t bytes = 0;
  bool oversize = false;

  void Begin() {
    fields.clear();
    bytes = 0;
    oversize = false;
  }
  void Add(std::string_view name, std::string_view value, uint8_t flags, size_t limit) {
    bytes += name.size() + value.size() + 32;
    if (bytes > limit) {
      oversize = true;
      fields.clear();
      return;
    }
    fields.Add(name, value, flags);
  }
  Fields Take() {
    Fields taken = std::move(fields);
    fields.clear();
    return taken;
  }
};

struct Http2Session::Stream {
  enum class Upstream : uint8_t { kNone, kOpen, kClosed };

  int32_t client_id = 0;
  int32_t server_id = 0;
  Upstream upstream = Upstream::kNone;
  absl::Time opened;
  uint64_t epoch = 0;

  // The header block being received from each side (trailers too).
  HeaderBlock client_block, server_block;

  // Client -> server.
  bool head_done = false;
  bool req_end = false;       // END_STREAM received from the client
  bool request_sent = false;  // the request HEADERS reached the server's side of the wire
  ByteQueue req_body;
  Fields req_trailers;

  // Server -> client.
  bool final_received = false;   // final (non-1xx) response head from the server
  bool final_submitted = false;  // a final response head was given to the client's session
  bool local = false;            // answered by the proxy
  bool resp_end = false;         // the response body is complete (what is left is in resp_body)
  bool resp_end_sent = false;    // END_STREAM framed towards the client
  ByteQueue resp_body;
  Fields resp_trailers;

  bool client_closed = false;
  bool recorded = false;
  ExchangeRecord record;
};

// nghttp2's C callbacks, one set per side; user_data is the session.
class Http2Session::Callbacks {
 public:
  static Http2Session& Self(void* user_data) { return *static_cast<Http2Session*>(user_data); }

  // Client side (nghttp2 server session).
  static int DownBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    Http2Session& self = Self(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      auto stream = std::make_unique<Stream>();
      stream->client_id = frame->hd.stream_id;
      stream->opened = self.Now();
      stream->record.first_byte = absl::InfinitePast();
      if (frame->hd.stream_id == self.last_client_id_) self.last_client_id_ = 0;
      self.streams_[frame->hd.stream_id] = std::move(stream);
    }
    if (Stream* s = self.ByClientId(frame->hd.stream_id)) {
      s->client_block.Begin();
      self.Touch(*s);
    }
    return 0;
  }

  static int DownHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                        size_t namelen, const uint8_t* value, size_t valuelen, uint8_t flags,
                        void* user_data) {
    Http2Session& self = Self(user_data);
    if (Stream* s = self.ByClientId(frame->hd.stream_id)) {
      s->client_block.Add(View(name, namelen), View(value, valuelen), flags,
                          self.options_.max_header_list_size);
    }
    return 0;
  }

  static int DownFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    Http2Session& self = Self(user_data);
    OnDownFrame(self, frame);
    // Once the GOAWAY is queued nothing more is read: nghttp2 does not stop by itself (its
    // frame reset re-arms the parser, and a later error in the same input then trips an
    // assertion in nghttp2_session_mem_recv), a failed callback does.
    return self.calm_ ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
  }

  static void OnDownFrame(Http2Session& self, const nghttp2_frame* frame) {
    const bool end_stream = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS: {
        self.consecutive_empty_frames_ = 0;
        Stream* s = self.ByClientId(frame->hd.stream_id);
        if (s == nullptr) return;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
          self.OnRequestHead(*s, end_stream);
        } else {
          self.OnRequestTrailers(*s);
        }
        return;
      }
      case NGHTTP2_DATA: {
        if (frame->hd.length == 0 && !end_stream) {
          if (++self.consecutive_empty_frames_ > self.options_.max_consecutive_empty_frames) {
            self.EnhanceYourCalm();
          }
        } else if (frame->hd.length > 0) {
          self.consecutive_empty_frames_ = 0;
        }
        if (!end_stream) return;
        if (Stream* s = self.ByClientId(frame->hd.stream_id)) self.OnRequestEnd(*s);
        return;
      }
      case NGHTTP2_RST_STREAM:
        if (Stream* s = self.ByClientId(frame->hd.stream_id)) self.OnClientReset(*s);
        return;
      case NGHTTP2_GOAWAY:
        // The client is leaving: finish what it started, take nothing new.
        self.BeginDrain();
        return;
      default:
        return;
    }
  }

  static int DownDataChunk(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data,
                           size_t len, void* user_data) {
    Http2Session& self = Self(user_data);
    if (Stream* s = self.ByClientId(stream_id)) {
      self.OnRequestData(*s, data, len);
    } else {
      nghttp2_session_consume(self.down_, stream_id, len);
    }
    return 0;
  }

  static int DownStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                             void* user_data) {
    Http2Session& self = Self(user_data);
    if (Stream* s = self.ByClientId(stream_id)) self.OnClientStreamClosed(*s, error_code);
    return 0;
  }

  static int DownFrameSend(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    Http2Session& self = Self(user_data);
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      if (Stream* s = self.ByClientId(frame->hd.stream_id)) self.OnClientStreamEndSent(*s);
    }
    return 0;
  }

  // The response body towards the client, from what the server sent (or the proxy's answer).
  static ssize_t DownRead(nghttp2_session*, int32_t stream_id, uint8_t* buf, size_t length,
                          uint32_t* data_flags, nghttp2_data_source*, void* user_data) {
    Http2Session& self = Self(user_data);
    Stream* s = self.ByClientId(stream_id);
    if (s == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    // Framed into to_client: the server may send that much more (a proxy answer came from no
    // server).
    const bool from_server = !s->local && s->server_id != 0;
    const ssize_t n = ReadBody(self, self.down_, stream_id, s->resp_body, self.held_[kToClient],
                               s->resp_end, s->resp_trailers, from_server ? self.up_ : nullptr,
                               s->server_id, buf, length, data_flags);
    if (n > 0) s->record.response_bytes += static_cast<size_t>(n);
    self.Touch(*s);
    return n;
  }

  // One DATA frame's payload from |body| towards |session|, giving the window back on the
  // session it came from; at the end the trailers, or END_STREAM.
  static ssize_t ReadBody(Http2Session& self, nghttp2_session* session, int32_t stream_id,
                          ByteQueue& body, size_t& held, bool end, Fields& trailers,
                          nghttp2_session* source, int32_t source_id, uint8_t* buf, size_t length,
                          uint32_t* data_flags) {
    const size_t n = body.Read(buf, std::min(length, kMaxDataChunk));
    held -= n;
    if (n > 0 && source != nullptr) nghttp2_session_consume(source, source_id, n);
    if (body.empty()) {
      if (end) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (!trailers.empty()) {
          const std::vector<nghttp2_nv>& nva = trailers.Nva(NvaScratch());
          if (nghttp2_submit_trailer(session, stream_id, nva.data(), nva.size()) == 0) {
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
          }
          trailers.clear();
        }
      } else if (n == 0) {
        return NGHTTP2_ERR_DEFERRED;
      }
    }
    return static_cast<ssize_t>(n);
  }

  // Server side (nghttp2 client session).
  static int UpBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    Http2Session& self = Self(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (Stream* s = self.ByServerId(frame->hd.stream_id)) {
      s->server_block.Begin();
      self.Touch(*s);
    }
    return 0;
  }

  static int UpHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t flags,
                      void* user_data) {
    Http2Session& self = Self(user_data);
    if (Stream* s = self.ByServerId(frame->hd.stream_id)) {
      s->server_block.Add(View(name, namelen), View(value, valuelen), flags,
                          self.options_.max_header_list_size);
    }
    return 0;
  }

  static int UpFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    Http2Session& self = Self(user_data);
    const bool end_stream = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS:
        if (Stream* s = self.ByServerId(frame->hd.stream_id)) self.OnResponseHead(*s, end_stream);
        return 0;
      case NGHTTP2_DATA:
        if (!end_stream) return 0;
        if (Stream* s = self.ByServerId(frame->hd.stream_id)) self.OnResponseEnd(*s);
        return 0;
      case NGHTTP2_GOAWAY:
        self.OnServerGoaway();
        return 0;
      default:
        return 0;
    }
  }

  static int UpDataChunk(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data,
                         size_t len, void* user_data) {
    Http2Session& self = Self(user_data);
    if (Stream* s = self.ByServerId(stream_id)) {
      self.OnResponseData(*s, data, len);
    } else {
      nghttp2_session_consume(self.up_, stream_id, len);
    }
    return 0;
  }

  static int UpStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code,
                           void* user_data) {
    Http2Session& self = Self(user_data);
    if (Stream* s = self.ByServerId(stream_id)) self.OnServerStreamGone(*s, error_code);
    return 0;
  }

  static int UpFrameSend(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
    Http2Session& self = Self(user_data);
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      if (Stream* s = self.ByServerId(frame->hd.stream_id)) s->request_sent = true;
    }
    return 0;
  }

  // A request HEADERS that never left: refused by the server's GOAWAY, or cancelled while
  // queued behind the server's concurrency limit (nghttp2 opens no stream for it, so no close
  // callback follows).
  static int UpFrameNotSend(nghttp2_session*, const nghttp2_frame* frame, int, void* user_data) {
    Http2Session& self = Self(user_data);
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      if (Stream* s = self.ByServerId(frame->hd.stream_id)) {
        self.OnServerStreamGone(*s, NGHTTP2_REFUSED_STREAM);
      }
    }
    return 0;
  }

  // The request body towards the server.
  static ssize_t UpRead(nghttp2_session*, int32_t stream_id, uint8_t* buf, size_t length,
                        uint32_t* data_flags, nghttp2_data_source*, void* user_data) {
    Http2Session& self = Self(user_data);
    Stream* s = self.ByServerId(stream_id);
    if (s == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    // Framed into to_server: the client may send that much more. On a stream the client has
    // closed already this gives back the connection window only, as it should.
    const ssize_t n =
        ReadBody(self, self.up_, stream_id, s->req_body, self.held_[kToServer], s->req_end,
                 s->req_trailers, self.down_, s->client_id, buf, length, data_flags);
    self.Touch(*s);
    return n;
  }

};

namespace {

struct CallbacksDeleter {
  void operator()(nghttp2_session_callbacks* c) const { nghttp2_session_callbacks_del(c); }
};
struct OptionDeleter {
  void operator()(nghttp2_option* o) const { nghttp2_option_del(o); }
};

// Both sides: flow control by hand, nghttp2's flood limits as configured.
std::unique_ptr<nghttp2_option, OptionDeleter> MakeOption(const Http2Options& o) {
  nghttp2_option* option = nullptr;
  if (nghttp2_option_new(&option) != 0) return nullptr;
  nghttp2_option_set_no_auto_window_update(option, 1);
  nghttp2_option_set_max_continuations(option, o.max_continuations);
  nghttp2_option_set_max_outbound_ack(option, o.max_outbound_ack);
  nghttp2_option_set_max_settings(option, o.max_settings);
  // Whatever we accept from one side must fit when sent to the other (the HPACK bound of a
  // list is its size plus a few bytes per field, well within this).
  nghttp2_option_set_max_send_header_block_length(option, o.max_header_list_size + (16 << 10));
  nghttp2_option_set_no_closed_streams(option, 1);
  return std::unique_ptr<nghttp2_option, OptionDeleter>(option);
}

bool IsGrpc(std::string_view content_type) {
  return content_type.substr(0, 16) == "application/grpc";
}

}  // namespace

absl::StatusOr<std::unique_ptr<Http2Session>> Http2Session::Create(Http2Options options,
                                                                   L7Authorize authorize,
                                                                   ExchangeSink on_exchange) {
  if (options.stream_window < (16 << 10) || options.stream_window > kMaxWindow ||
      options.connection_window > kMaxWindow ||
      options.connection_window / 4 < options.stream_window) {
    return absl::InvalidArgumentError(absl::StrCat(
        "HTTP/2 windows: stream window must be within [16 KiB, 2^31-1], connection window at "
        "least 4x it and at most 2^31-1 (got ",
        options.stream_window, ", ", options.connection_window, ")"));
  }
  if (options.max_concurrent_streams == 0 || options.output_budget == 0 ||
      options.max_header_list_size < 1024) {
    return absl::InvalidArgumentError(
        "HTTP/2: max_concurrent_streams and output_budget must be positive, "
        "max_header_list_size at least 1 KiB");
  }
  std::unique_ptr<Http2Session> session(
      new Http2Session(std::move(options), std::move(authorize), std::move(on_exchange)));
  if (absl::Status status = session->Init(); !status.ok()) return status;
  return session;
}

Http2Session::Http2Session(Http2Options options, L7Authorize authorize, ExchangeSink on_exchange)
    : options_(std::move(options)),
      authorize_(std::move(authorize)),
      on_exchange_(std::move(on_exchange)) {
  tunnels_ = options_.tunnels;
}

absl::Status Http2Session::Init() {
  nghttp2_session_callbacks* raw = nullptr;
  if (nghttp2_session_callbacks_new(&raw) != 0) {
    return absl::ResourceExhaustedError("nghttp2_session_callbacks_new");
  }
  std::unique_ptr<nghttp2_session_callbacks, CallbacksDeleter> down_cb(raw);
  nghttp2_session_callbacks_set_on_begin_headers_callback(down_cb.get(),
                                                          &Callbacks::DownBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(down_cb.get(), &Callbacks::DownHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(down_cb.get(), &Callbacks::DownFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(down_cb.get(),
                                                            &Callbacks::DownDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(down_cb.get(),
                                                         &Callbacks::DownStreamClose);
  nghttp2_session_callbacks_set_on_frame_send_callback(down_cb.get(), &Callbacks::DownFrameSend);

  if (nghttp2_session_callbacks_new(&raw) != 0) {
    return absl::ResourceExhaustedError("nghttp2_session_callbacks_new");
  }
  std::unique_ptr<nghttp2_session_callbacks, CallbacksDeleter> up_cb(raw);
  nghttp2_session_callbacks_set_on_begin_headers_callback(up_cb.get(), &Callbacks::UpBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(up_cb.get(), &Callbacks::UpHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(up_cb.get(), &Callbacks::UpFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(up_cb.get(), &Callbacks::UpDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(up_cb.get(), &Callbacks::UpStreamClose);
  nghttp2_session_callbacks_set_on_frame_send_callback(up_cb.get(), &Callbacks::UpFrameSend);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(up_cb.get(), &Callbacks::UpFrameNotSend);

  auto option = MakeOption(options_);
  if (option == nullptr) return absl::ResourceExhaustedError("nghttp2_option_new");
  if (nghttp2_session_server_new2(&down_, down_cb.get(), this, option.get()) != 0 ||
      nghttp2_session_client_new2(&up_, up_cb.get(), this, option.get()) != 0) {
    return absl::ResourceExhaustedError("nghttp2_session_new");
  }

  const nghttp2_settings_entry down_settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, options_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, options_.stream_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, options_.max_header_list_size},
      // No priority tree to maintain: PRIORITY frames cost nothing.
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
  };
  const nghttp2_settings_entry up_settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, options_.stream_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, options_.max_header_list_size},
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
  };
  if (nghttp2_submit_settings(down_, NGHTTP2_FLAG_NONE, down_settings, std::size(down_settings)) !=
          0 ||
      nghttp2_submit_settings(up_, NGHTTP2_FLAG_NONE, up_settings, std::size(up_settings)) != 0 ||
      nghttp2_session_set_local_window_size(
          down_, NGHTTP2_FLAG_NONE, 0, static_cast<int32_t>(options_.connection_window)) != 0 ||
      nghttp2_session_set_local_window_size(
          up_, NGHTTP2_FLAG_NONE, 0, static_cast<int32_t>(options_.connection_window)) != 0) {
    return absl::ResourceExhaustedError("nghttp2 initial SETTINGS");
  }
  // The server gets our preface at once; the client's SETTINGS go out with it too (a server may
  // send its SETTINGS before reading the client preface, RFC 9113 3.4).
  Flush();
  return absl::OkStatus();
}

Http2Session::~Http2Session() {
  // nghttp2_session_del calls no callbacks; the exchanges still open end here, broken.
  nghttp2_session_del(down_);
  nghttp2_session_del(up_);
  down_ = up_ = nullptr;
  for (auto& [id, s] : streams_) {
    if (s->head_done && !s->recorded) EmitRecord(*s);
  }
  EmitDone();
}

// Within a slice of input, the time it was read: its events are stamped with it (one clock read
// per slice, not several per stream).
absl::Time Http2Session::Now() const {
  if (in_slice_) return slice_time_;
  return options_.clock ? options_.clock() : absl::Now();
}

// nghttp2 calls back several times per frame (once per header field) for one stream: the last
// stream looked up on each side is kept (forgotten when its ids are).
Http2Session::Stream* Http2Session::ByClientId(int32_t id) {
  if (id == last_client_id_ && id != 0) return last_client_;
  auto it = streams_.find(id);
  if (it == streams_.end()) return nullptr;
  last_client_id_ = id;
  last_client_ = it->second.get();
  return last_client_;
}

Http2Session::Stream* Http2Session::ByServerId(int32_t id) {
  if (id == last_server_id_ && id != 0) return last_server_;
  auto it = server_to_client_.find(id);
  if (it == server_to_client_.end()) return nullptr;
  Stream* s = ByClientId(it->second);
  if (s != nullptr) {
    last_server_id_ = id;
    last_server_ = s;
  }
  return s;
}

void Http2Session::ForgetServerId(int32_t id) {
  server_to_client_.erase(id);
  if (id == last_server_id_) last_server_id_ = 0;
}

void Http2Session::Touch(Stream& s) {
  if (s.epoch == slice_epoch_) return;
  s.epoch = slice_epoch_;
  touched_.push_back(s.client_id);
}

void Http2Session::OnRequestHead(Stream& s, bool end_stream) {
  s.head_done = true;
  s.req_end = end_stream;
  s.record.start = Now();
  const bool oversize = s.client_block.oversize;
  Fields head = s.client_block.Take();
  auto value = [&](std::string_view name) -> std::string_view {
    std::string_view v;
    return head.Find(name, &v) == nullptr ? std::string_view() : v;
  };
  L7Request& req = s.record.request;
  req.method = value(":method");
  std::string_view path = value(":path");
  req.path = path.substr(0, path.find('?'));
  req.authority = value(":authority");
  if (req.authority.empty()) req.authority = value("host");
  req.grpc = IsGrpc(value("content-type"));

  if (oversize) {
    AnswerLocally(s, 431, -1, "");
    return;
  }
  // A stream the GOAWAY we sent says was not processed must not be: the client retries it.
  if (upstream_lost_ || (draining_ && s.client_id > goaway_last_id_)) {
    ResetClient(s, NGHTTP2_REFUSED_STREAM);
    return;
  }
  // Streams the client closed while their upstream half is still queued behind the server's
  // concurrency limit count too: opening and resetting cannot grow the queue without bound.
  if (streams_.size() > options_.max_concurrent_streams) {
    ResetClient(s, NGHTTP2_REFUSED_STREAM);
    return;
  }
  L7Verdict verdict = authorize_ ? authorize_(req) : L7Verdict{};
  if (verdict.allow && !tunnels_ && req.method == "CONNECT") {
    verdict = {.allow = false, .policy = ""};  // opaque bytes the policy does not admit
  }
  if (!verdict.allow) {
    s.record.denied = true;
    s.record.policy = verdict.policy;
    if (req.grpc) {
      AnswerLocally(s, 200, 7, "denied by policy");
    } else {
      AnswerLocally(s, 403, -1, "denied by policy\n");
    }
    return;
  }
  if (observe) s.record.observer = observe(req);
  if (s.record.observer && s.record.observer->ReadsResponse()) {
    // Only codings its reader decodes (an absent field would admit any).
    head.Replace("accept-encoding", ReadableAcceptEncoding(head.JoinAll("accept-encoding")));
  }
  const std::vector<nghttp2_nv>& nva = head.Nva(NvaScratch());
  nghttp2_data_provider body{};
  body.read_callback = &Callbacks::UpRead;
  const int32_t sid = nghttp2_submit_request(up_, nullptr, nva.data(), nva.size(),
                                             end_stream ? nullptr : &body, nullptr);
  if (sid < 0) {
    // Out of stream ids (a very long connection): this one is retried on a new connection.
    ResetClient(s, NGHTTP2_REFUSED_STREAM);
    if (sid == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) BeginDrain();
    return;
  }
  s.server_id = sid;
  s.upstream = Stream::Upstream::kOpen;
  if (sid == last_server_id_) last_server_id_ = 0;
  server_to_client_[sid] = s.client_id;
}

void Http2Session::OnRequestTrailers(Stream& s) {
  if (s.client_block.oversize) {
    ResetServer(s, NGHTTP2_CANCEL);
    ResetClient(s, NGHTTP2_ENHANCE_YOUR_CALM);
    return;
  }
  Fields trailers = s.client_block.Take();
  if (s.upstream == Stream::Upstream::kOpen) s.req_trailers = std::move(trailers);
  OnRequestEnd(s);
}

void Http2Session::OnRequestEnd(Stream& s) {
  s.req_end = true;
  if (s.upstream == Stream::Upstream::kOpen) nghttp2_session_resume_data(up_, s.server_id);
}

void Http2Session::OnRequestData(Stream& s, const uint8_t* data, size_t len) {
  Touch(s);
  s.record.request_bytes += len;
  if (s.upstream == Stream::Upstream::kOpen && !s.local) {
    if (BodyObserver* o = s.record.observer.get()) {
      o->RequestBody(std::string_view(reinterpret_cast<const char*>(data), len));
    }
    s.req_body.Append(View(data, len));
    held_[kToServer] += len;
    nghttp2_session_resume_data(up_, s.server_id);
  } else {
    // Denied or refused: discarded, but the client's window must not shrink for it.
    nghttp2_session_consume(down_, s.client_id, len);
  }
}

void Http2Session::OnClientReset(Stream& s) {
  if (Now() - s.opened >= options_.rapid_reset_min_lifetime) return;
  const absl::Time now = Now();
  if (now - rapid_reset_window_start_ > options_.rapid_reset_window) {
    rapid_reset_window_start_ = now;
    rapid_resets_ = 0;
  }
  if (++rapid_resets_ > options_.rapid_reset_budget) EnhanceYourCalm();
}

void Http2Session::OnClientStreamClosed(Stream& s, uint32_t error_code) {
  Touch(s);
  s.client_closed = true;
  if (s.head_done && !s.recorded) EmitRecord(s);
  DropResponseBody(s);
  if (s.upstream == Stream::Upstream::kOpen) {
    if (error_code != NGHTTP2_NO_ERROR || !s.resp_end) {
      ResetServer(s, error_code == NGHTTP2_NO_ERROR ? uint32_t{NGHTTP2_CANCEL} : error_code);
    }
    // Otherwise the client has its whole response and sent its whole request: what of the
    // request body is still buffered goes on to the server.
  } else {
    DropRequestBody(s);
  }
  MaybeFinish(s);
}

void Http2Session::OnClientStreamEndSent(Stream& s) {
  s.resp_end_sent = true;
  // RFC 9113 8.1: a complete response, the rest of the request unwanted: NO_ERROR stops it.
  if (!s.req_end && (s.local || s.upstream != Stream::Upstream::kOpen)) {
    ResetClient(s, NGHTTP2_NO_ERROR);
  }
}

void Http2Session::OnResponseHead(Stream& s, bool end_stream) {
  const bool oversize = s.server_block.oversize;
  Fields block = s.server_block.Take();
  if (oversize) {
    ResetServer(s, NGHTTP2_CANCEL);
    if (!s.client_closed) {
      if (!s.final_submitted) {
        AnswerLocally(s, 502, s.record.request.grpc ? 13 : -1, "response head too large\n");
      } else {
        ResetClient(s, NGHTTP2_INTERNAL_ERROR);
      }
    }
    return;
  }
  if (s.record.first_byte == absl::InfinitePast()) s.record.first_byte = Now();
  auto grpc_status = [&] {
    int status = -1;
    std::string_view v;
    if (block.Find("grpc-status", &v) != nullptr && !absl::SimpleAtoi(absl::string_view(v.data(), v.size()), &status)) status = -1;
    return status;
  };
  if (s.final_received) {
    if (int g = grpc_status(); g >= 0) s.record.grpc_status = g;
    if (!s.client_closed && !s.local) s.resp_trailers = std::move(block);
    OnResponseEnd(s);
    return;
  }
  int status = 0;
  if (std::string_view v; block.Find(":status", &v) != nullptr && !absl::SimpleAtoi(absl::string_view(v.data(), v.size()), &status)) {
    status = 0;
  }
  const std::vector<nghttp2_nv>& nva = block.Nva(NvaScratch());
  if (status >= 100 && status < 200) {
    if (!s.client_closed && !s.local) {
      nghttp2_submit_headers(down_, NGHTTP2_FLAG_NONE, s.client_id, nullptr, nva.data(), nva.size(),
                             nullptr);
    }
    return;
  }
  s.final_received = true;
  if (s.client_closed || s.local) return;
  s.record.status = status;
  if (int g = grpc_status(); g >= 0) s.record.grpc_status = g;
  if (BodyObserver* o = s.record.observer.get()) {
    std::string_view type, encoding;
    if (block.Find("content-type", &type) == nullptr) type = {};
    if (block.Find("content-encoding", &encoding) == nullptr) encoding = {};
    o->ResponseHead(status, type, encoding);
  }
  s.resp_end = end_stream;
  nghttp2_data_provider body{};
  body.read_callback = &Callbacks::DownRead;
  if (nghttp2_submit_response(down_, s.client_id, nva.data(), nva.size(),
                              end_stream ? nullptr : &body) != 0) {
    ResetServer(s, NGHTTP2_CANCEL);
    ResetClient(s, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  s.final_submitted = true;
}

void Http2Session::OnResponseData(Stream& s, const uint8_t* data, size_t len) {
  Touch(s);
  if (s.client_closed || s.local || !s.final_submitted) {
    nghttp2_session_consume(up_, s.server_id, len);
    return;
  }
  if (BodyObserver* o = s.record.observer.get()) {
    o->ResponseBody(std::string_view(reinterpret_cast<const char*>(data), len));
  }
  s.resp_body.Append(View(data, len));
  held_[kToClient] += len;
  nghttp2_session_resume_data(down_, s.client_id);
}

void Http2Session::OnResponseEnd(Stream& s) {
  s.resp_end = true;
  if (!s.client_closed && s.final_submitted && !s.local) {
    nghttp2_session_resume_data(down_, s.client_id);
  }
}

void Http2Session::OnServerStreamGone(Stream& s, uint32_t error_code) {
  if (s.upstream != Stream::Upstream::kOpen) return;
  Touch(s);
  s.upstream = Stream::Upstream::kClosed;
  ForgetServerId(s.server_id);
  DropRequestBody(s);
  if (!s.client_closed && !s.local) {
    if (s.resp_end && error_code == NGHTTP2_NO_ERROR) {
      // Complete (the rest of the response is in resp_body): if the request is still open,
      // the client is told to stop once its response went out.
      if (s.resp_end_sent && !s.req_end) ResetClient(s, NGHTTP2_NO_ERROR);
    } else {
      ResetClient(s, error_code);
    }
  }
  MaybeFinish(s);
}

void Http2Session::OnServerGoaway() {
  // nghttp2 refuses the streams above the server's last-stream-id itself (REFUSED_STREAM, passed
  // on to the client so that it retries them); the connection takes no new stream, so the
  // client is sent elsewhere too.
  BeginDrain();
}

void Http2Session::AnswerLocally(Stream& s, int status, int grpc_status, std::string_view message) {
  if (s.final_submitted || s.client_closed) {
    if (!s.client_closed) ResetClient(s, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  s.local = true;
  s.record.proxy_answered = true;
  s.record.status = status;
  s.record.grpc_status = grpc_status;
  DropResponseBody(s);
  const std::string status_text = absl::StrCat(status);
  Fields head;
  head.Add(":status", status_text, NGHTTP2_NV_FLAG_NONE);
  if (grpc_status >= 0) {
    // gRPC trailers-only: one HEADERS with END_STREAM.
    head.Add("content-type", "application/grpc", NGHTTP2_NV_FLAG_NONE);
    head.Add("grpc-status", absl::StrCat(grpc_status), NGHTTP2_NV_FLAG_NONE);
    head.Add("grpc-message", message, NGHTTP2_NV_FLAG_NONE);
    message = {};
  } else if (!message.empty()) {
    head.Add("content-type", "text/plain; charset=utf-8", NGHTTP2_NV_FLAG_NONE);
    head.Add("content-length", absl::StrCat(message.size()), NGHTTP2_NV_FLAG_NONE);
  }
  s.resp_body.Append(message);
  held_[kToClient] += message.size();
  s.resp_end = true;
  const std::vector<nghttp2_nv>& nva = head.Nva(NvaScratch());
  nghttp2_data_provider body{};
  body.read_callback = &Callbacks::DownRead;
  if (nghttp2_submit_response(down_, s.client_id, nva.data(), nva.size(),
                              message.empty() ? nullptr : &body) != 0) {
    ResetClient(s, NGHTTP2_INTERNAL_ERROR);
    return;
  }
  s.final_submitted = true;
}

void Http2Session::SetTunnelsAllowed(bool allowed) {
  tunnels_ = allowed;
  if (allowed || dead_) return;
  std::vector<Stream*> tunnels;
  for (auto& [id, s] : streams_) {
    if (!s->local && !s->client_closed && s->record.request.method == "CONNECT") {
      tunnels.push_back(s.get());
    }
  }
  for (Stream* s : tunnels) {
    ResetServer(*s, NGHTTP2_CANCEL);
    ResetClient(*s, NGHTTP2_CONNECT_ERROR);
  }
  if (!tunnels.empty()) Flush();
}

void Http2Session::ResetClient(Stream& s, uint32_t error_code) {
  // Refused: the server did not process it (RFC 9113 8.7), the client may send it again.
  if (error_code == NGHTTP2_REFUSED_STREAM) s.record.not_forwarded = true;
  if (!s.client_closed) {
    nghttp2_submit_rst_stream(down_, NGHTTP2_FLAG_NONE, s.client_id, error_code);
  }
  DropResponseBody(s);
  s.resp_trailers.clear();
}

void Http2Session::ResetServer(Stream& s, uint32_t error_code) {
  // The stream stays open on our side until nghttp2 says it closed (or that its HEADERS were
  // cancelled in the queue): only then are its ids forgotten.
  if (s.upstream == Stream::Upstream::kOpen) {
    nghttp2_submit_rst_stream(up_, NGHTTP2_FLAG_NONE, s.server_id, error_code);
  }
  DropRequestBody(s);
  s.req_trailers.clear();
}

void Http2Session::DropRequestBody(Stream& s) {
  const size_t n = s.req_body.size();
  if (n == 0) return;
  held_[kToServer] -= n;
  s.req_body.Clear();
  nghttp2_session_consume(down_, s.client_id, n);
}

void Http2Session::DropResponseBody(Stream& s) {
  const size_t n = s.resp_body.size();
  if (n == 0) return;
  held_[kToClient] -= n;
  s.resp_body.Clear();
  if (!s.local && s.server_id != 0) nghttp2_session_consume(up_, s.server_id, n);
}

void Http2Session::MaybeFinish(Stream& s) {
  if (!s.client_closed || s.upstream == Stream::Upstream::kOpen) return;
  DropRequestBody(s);
  DropResponseBody(s);
  if (s.server_id != 0) ForgetServerId(s.server_id);
  if (s.client_id == last_client_id_) last_client_id_ = 0;
  streams_.erase(s.client_id);  // s is gone
}

void Http2Session::EmitRecord(Stream& s) {
  s.recorded = true;
  s.record.end = Now();
  // Recorded once the client's half closed (or the session ends): nothing reads the record
  // after that.
  done_records_.emplace_back(s.client_id, std::move(s.record));
}

void Http2Session::EmitDone() {
  std::vector<std::pair<int32_t, ExchangeRecord>> done;
  done.swap(done_records_);
  if (!on_exchange_) return;
  for (const auto& [id, record] : done) on_exchange_(record);
}

void Http2Session::EnhanceYourCalm() {
  if (calm_) return;
  calm_ = true;
  nghttp2_session_terminate_session(down_, NGHTTP2_ENHANCE_YOUR_CALM);
}

void Http2Session::UpstreamLost() {
  if (upstream_lost_) return;
  upstream_lost_ = true;
  std::vector<int32_t> ids;
  for (const auto& [id, s] : streams_) ids.push_back(id);
  for (int32_t id : ids) {
    Stream* s = ByClientId(id);
    if (s == nullptr || s->upstream != Stream::Upstream::kOpen) continue;
    s->upstream = Stream::Upstream::kClosed;
    ForgetServerId(s->server_id);
    DropRequestBody(*s);
    if (!s->client_closed && !s->local) {
      if (s->resp_end) {
        if (s->resp_end_sent && !s->req_end) ResetClient(*s, NGHTTP2_NO_ERROR);
      } else if (!s->request_sent) {
        // The server never saw it: safe for the client to retry.
        ResetClient(*s, NGHTTP2_REFUSED_STREAM);
      } else if (!s->final_submitted) {
        AnswerLocally(*s, 502, s->record.request.grpc ? 14 : -1, "upstream connection closed\n");
      } else {
        ResetClient(*s, NGHTTP2_INTERNAL_ERROR);
      }
    }
    MaybeFinish(*s);
  }
  BeginDrain();
}

void Http2Session::BeginDrain() {
  if (draining_) return;
  draining_ = true;
  goaway_last_id_ = nghttp2_session_get_last_proc_stream_id(down_);
  nghttp2_submit_goaway(down_, NGHTTP2_FLAG_NONE, goaway_last_id_, NGHTTP2_NO_ERROR, nullptr, 0);
}

void Http2Session::Fatal() {
  abort = true;
  dead_ = true;
}

bool Http2Session::Pump(nghttp2_session* session, std::string& output, bool discard) {
  bool any = false;
  for (;;) {
    const uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session, &data);
    if (n < 0) {
      // Only allocation failures and our own callbacks' failures get here.
      Fatal();
      return false;
    }
    if (n == 0) return any;
    if (!discard) output.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    any = true;
  }
}

void Http2Session::Flush() {
  if (dead_ && !calm_) return;
  // Sending on one side consumes what it sent from the other, which may queue a WINDOW_UPDATE
  // there: go round until neither side has anything left.
  for (int round = 0; round < 64; ++round) {
    const bool up = Pump(up_, to_server, up_dead_);
    const bool down = Pump(down_, to_client, false);
    if (!up && !down) break;
  }
  CheckDone();
}

void Http2Session::CheckDone() {
  if (dead_) return;
  if (calm_) {
    // The GOAWAY ENHANCE_YOUR_CALM is in to_client for a relay that writes before it resets.
    Fatal();
    return;
  }
  if (!(draining_ || client_eof_ || upstream_lost_) || !streams_.empty()) return;
  if (!up_dead_) {
    nghttp2_session_terminate_session(up_, NGHTTP2_NO_ERROR);
    Pump(up_, to_server, false);
  }
  shut_client = shut_server = true;
  dead_ = true;
}

size_t Http2Session::Feed(bool client, std::string_view data) {
  // After a side broke (or ended) nothing it sends can matter; its session is not fed again.
  if (dead_ || (client ? client_eof_ : up_dead_)) return data.size();
  nghttp2_session* session = client ? down_ : up_;
  const std::string& output = client ? to_server : to_client;
  const std::string& reverse = client ? to_client : to_server;
  size_t taken = 0;
  while (taken < data.size() && !dead_) {
    if (output.size() >= options_.output_budget ||
        reverse.size() >= options_.output_budget * kReverseBudgetFactor) {
      break;
    }
    const size_t n = std::min(kSlice, data.size() - taken);
    ++slice_epoch_;
    touched_.clear();
    const absl::Time t0 = Now();
    slice_time_ = t0;
    in_slice_ = true;
    const ssize_t rv =
        nghttp2_session_mem_recv(session, reinterpret_cast<const uint8_t*>(data.data() + taken), n);
    if (rv < 0) {
      taken = data.size();
      if (client) {
        // nghttp2 queued a GOAWAY for most errors; not for a bad preface.
        nghttp2_session_terminate_session(down_, NGHTTP2_PROTOCOL_ERROR);
        Flush();
        Fatal();
      } else {
        // The server broke the protocol: its GOAWAY goes out, its streams end for the client
        // as if it had closed.
        Flush();
        up_dead_ = true;
        UpstreamLost();
        Flush();
      }
    } else {
      taken += static_cast<size_t>(rv);
      Flush();
    }
    in_slice_ = false;
    ShareTime(Now() - t0);
    EmitDone();
  }
  return taken;
}

void Http2Session::ShareTime(absl::Duration elapsed) {
  if (touched_.empty()) return;
  const absl::Duration share = elapsed / static_cast<int64_t>(touched_.size());
  for (int32_t id : touched_) {
    bool found = false;
    for (auto& [done_id, record] : done_records_) {
      if (done_id == id) {
        record.proxy_time += share;
        found = true;
      }
    }
    if (found) continue;
    if (Stream* s = ByClientId(id); s != nullptr && !s->recorded) s->record.proxy_time += share;
  }
  touched_.clear();
}

size_t Http2Session::FromClient(std::string_view data) { return Feed(true, data); }

size_t Http2Session::FromServer(std::string_view data) { return Feed(false, data); }

void Http2Session::ClientClosed() {
  if (dead_) return;
  client_eof_ = true;
  std::vector<int32_t> ids;
  for (const auto& [id, s] : streams_) ids.push_back(id);
  for (int32_t id : ids) {
    Stream* s = ByClientId(id);
    if (s == nullptr || s->req_end) continue;
    // Its request can never complete.
    ResetServer(*s, NGHTTP2_CANCEL);
    ResetClient(*s, NGHTTP2_CANCEL);
  }
  Flush();
  EmitDone();
}

void Http2Session::ServerClosed() {
  if (dead_) return;
  up_dead_ = true;
  UpstreamLost();
  Flush();
  EmitDone();
}

void Http2Session::Drain() {
  if (dead_) return;
  BeginDrain();
  Flush();
  EmitDone();
}

void Http2Session::SetAuthorize(L7Authorize authorize) { authorize_ = std::move(authorize); }

}  // namespace shunt::agent
