#include "agent/proxy/http1_session.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace shunt::agent {

namespace {

using http1::Action;
using http1::BodyKind;
using http1::FeedStatus;

// A read's worth: what one Feed() gets, so that what it produces stays near the output budget.
constexpr size_t kPiece = 64 << 10;

// An Upgrade request made plain HTTP: its Upgrade and HTTP2-Settings fields go, and their tokens
// in Connection (a Connection left empty goes too).
void StripUpgrade(http1::RequestHead& head) {
  std::erase_if(head.headers, [](const http1::Header& h) {
    return absl::EqualsIgnoreCase(h.name, "upgrade") ||
           absl::EqualsIgnoreCase(h.name, "http2-settings");
  });
  for (http1::Header& h : head.headers) {
    if (!absl::EqualsIgnoreCase(h.name, "connection")) continue;
    std::vector<std::string> kept;
    for (absl::string_view token : absl::StrSplit(h.value, ',')) {
      token = absl::StripAsciiWhitespace(token);
      if (token.empty() || absl::EqualsIgnoreCase(token, "upgrade") ||
          absl::EqualsIgnoreCase(token, "http2-settings")) {
        continue;
      }
      kept.emplace_back(token);
    }
    h.value = absl::StrJoin(kept, ", ");
  }
  std::erase_if(head.headers, [](const http1::Header& h) {
    return absl::EqualsIgnoreCase(h.name, "connection") && h.value.empty();
  });
  head.upgrade = false;
}

const char* Reason(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 414:
      return "URI Too Long";
    case 431:
      return "Request Header Fields Too Large";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Error";
  }
}

bool HasBody(const http1::BodyFraming& f) {
  return f.kind == BodyKind::kChunked || (f.kind == BodyKind::kContentLength && f.length > 0);
}

}  // namespace

std::string TargetPath(std::string_view target) {
  if (target == "*") return "*";
  if (!target.empty() && target.front() != '/') {
    // absolute-form: the path after the authority; authority-form (CONNECT): none.
    const size_t scheme = target.find("://");
    if (scheme == std::string_view::npos) return "";
    target.remove_prefix(scheme + 3);
    const size_t slash = target.find_first_of("/?");
    if (slash == std::string_view::npos || target[slash] == '?') return "/";
    target.remove_prefix(slash);
  }
  return std::string(target.substr(0, target.find('?')));
}

class Http1Session::RequestEvents final : public http1::ParserCallbacks {
 public:
  explicit RequestEvents(Http1Session& s) : s_(s) {}

  Action OnRequestHead(http1::RequestHead&& head) override {
    s_.in_request_ = true;
    s_.request_trailers_sent_ = false;
    Exchange e;
    e.record.request.method = head.method;
    e.record.request.path = TargetPath(head.target);
    if (head.target.empty() || head.target.front() == '/' || head.target == "*") {
      if (const http1::Header* host = http1::FindHeader(head.headers, "host")) {
        e.record.request.authority = host->value;
      }
    } else if (head.is_connect) {
      e.record.request.authority = head.target;
    } else {  // absolute-form: its authority wins over Host (RFC 9112 3.2.2)
      std::string_view t = head.target;
      t.remove_prefix(std::min(t.size(), t.find("://") + 3));
      e.record.request.authority = std::string(t.substr(0, t.find_first_of("/?")));
    }
    e.record.start = absl::Now();
    e.record.first_byte = absl::InfinitePast();
    e.method = head.method;
    L7Verdict verdict = s_.authorize_ ? s_.authorize_(e.record.request) : L7Verdict{};
    if (verdict.allow && head.is_connect && !s_.tunnels_) {
      verdict = {.allow = false, .policy = ""};  // a tunnel of opaque bytes the policy does not admit
    }
    if (verdict.allow && head.upgrade && !s_.tunnels_) {
      StripUpgrade(head);
      e.no_tunnel = true;
    }
    if (!verdict.allow) {
      e.local_status = 403;
      e.record.denied = true;
      e.record.policy = verdict.policy;
      // Waiting for a 100-continue, the client may send the body or not: the next byte cannot be
      // framed, so the connection ends with the answer.
      e.close_after = !head.keep_alive || (head.expect_continue && HasBody(head.framing)) ||
                      head.upgrade || head.is_connect;
      s_.discard_request_ = true;
      const bool closes = e.close_after;
      s_.queue_.push_back(std::move(e));
      s_.EmitLocalAnswers();
      if (closes) {
        // Nothing after it is read: a request behind it would reach the server while the client,
        // seeing the close, may send it again elsewhere.
        s_.client_done_ = true;
        return Action::kPause;
      }
      return Action::kContinue;
    }
    s_.discard_request_ = false;
    s_.request_chunked_ = head.framing.kind == BodyKind::kChunked;
    if (s_.observe) e.record.observer = s_.observe(e.record.request);
    if (e.record.observer && e.record.observer->ReadsResponse()) {
      // Only codings its reader decodes (an absent field would admit any).
      std::string all;  // several fields are one list (RFC 9110 5.3)
      for (const http1::Header& h : head.headers) {
        if (absl::EqualsIgnoreCase(h.name, "accept-encoding")) {
          absl::StrAppend(&all, all.empty() ? "" : ", ", h.value);
        }
      }
      std::erase_if(head.headers, [](const http1::Header& h) {
        return absl::EqualsIgnoreCase(h.name, "accept-encoding");
      });
      head.headers.push_back({"Accept-Encoding", ReadableAcceptEncoding(all)});
    }
    s_.to_server += http1::SerializeRequestHead(head);
    s_.responses_.ExpectResponseTo(head.method);
    s_.queue_.push_back(std::move(e));
    return Action::kContinue;
  }
  Action OnResponseHead(http1::ResponseHead&&) override { return Action::kContinue; }
  Action OnBody(std::string_view data) override {
    if (!s_.queue_.empty() && s_.in_request_) s_.queue_.back().record.request_bytes += data.size();
    if (s_.discard_request_) return Action::kContinue;
    if (!s_.queue_.empty() && s_.in_request_) {
      if (BodyObserver* o = s_.queue_.back().record.observer.get()) o->RequestBody(data);
    }
    if (s_.request_chunked_) {
      s_.to_server += http1::ChunkHeader(data.size());
      s_.to_server.append(data);
      s_.to_server += http1::kChunkEnd;
    } else {
      s_.to_server.append(data);
    }
    return Action::kContinue;
  }
  Action OnTrailers(http1::Headers&& trailers) override {
    if (!s_.discard_request_ && s_.request_chunked_) {
      s_.to_server += http1::LastChunk(trailers);
      s_.request_trailers_sent_ = true;
    }
    return Action::kContinue;
  }
  Action OnMessageComplete() override {
    s_.in_request_ = false;
    if (!s_.discard_request_ && s_.request_chunked_ && !s_.request_trailers_sent_) {
      s_.to_server += http1::LastChunk();
    }
    if (!s_.queue_.empty()) s_.queue_.back().complete = true;
    if (s_.queue_.size() >= s_.options_.max_pipelined) {
      s_.paused_for_pipeline_ = true;
      return Action::kPause;
    }
    return Action::kContinue;
  }

 private:
  Http1Session& s_;
};

class Http1Session::ResponseEvents final : public http1::ParserCallbacks {
 public:
  explicit ResponseEvents(Http1Session& s) : s_(s) {}

  Action OnRequestHead(http1::RequestHead&&) override { return Action::kContinue; }
  Action OnResponseHead(http1::ResponseHead&& head) override {
    // The front exchange is the server's to answer: the proxy's own answers at the front are
    // written the moment they get there.
    Exchange& e = s_.queue_.front();
    if (e.record.first_byte == absl::InfinitePast()) e.record.first_byte = absl::Now();
    // Its Upgrade removed, or admitted by a policy that no longer admits opaque bytes.
    if (head.tunnel && (e.no_tunnel || !s_.tunnels_)) {
      s_.refused_tunnel_ = true;  // FromServer answers 502 in its place
      return Action::kPause;
    }
    s_.response_interim_ = head.interim;
    s_.response_tunnel_ = head.tunnel;
    if (!head.interim) {
      e.record.status = head.status;
      if (BodyObserver* o = e.record.observer.get()) {
        const http1::Header* type = http1::FindHeader(head.headers, "content-type");
        const http1::Header* encoding = http1::FindHeader(head.headers, "content-encoding");
        o->ResponseHead(head.status, type ? std::string_view(type->value) : std::string_view(),
                        encoding ? std::string_view(encoding->value) : std::string_view());
      }
      s_.response_head_sent_ = true;
      s_.response_chunked_ = head.framing.kind == BodyKind::kChunked;
      s_.response_trailers_sent_ = false;
      s_.response_closes_ = !head.keep_alive;
      if (s_.draining_ && head.keep_alive && !head.tunnel) {
        // The agent is going away: this response is the connection's last (the client opens a
        // new connection, to the next agent, for its next request).
        std::erase_if(head.headers, [](const http1::Header& h) {
          return absl::EqualsIgnoreCase(h.name, "connection") ||
                 absl::EqualsIgnoreCase(h.name, "keep-alive");
        });
        head.headers.push_back({"Connection", "close"});
        s_.response_closes_ = true;
      }
    }
    s_.to_client += http1::SerializeResponseHead(head);
    return Action::kContinue;
  }
  Action OnBody(std::string_view data) override {
    s_.queue_.front().record.response_bytes += data.size();
    if (BodyObserver* o = s_.queue_.front().record.observer.get()) o->ResponseBody(data);
    if (s_.response_chunked_) {
      s_.to_client += http1::ChunkHeader(data.size());
      s_.to_client.append(data);
      s_.to_client += http1::kChunkEnd;
    } else {
      s_.to_client.append(data);
    }
    return Action::kContinue;
  }
  Action OnTrailers(http1::Headers&& trailers) override {
    if (s_.response_chunked_) {
      s_.to_client += http1::LastChunk(trailers);
      s_.response_trailers_sent_ = true;
    }
    return Action::kContinue;
  }
  Action OnMessageComplete() override {
    if (s_.response_interim_) return Action::kContinue;  // the final response follows
    if (s_.response_tunnel_) return Action::kContinue;   // FromServer: kOpaque next
    if (s_.response_chunked_ && !s_.response_trailers_sent_) s_.to_client += http1::LastChunk();
    if (s_.client_gone_ && s_.queue_.front().record.observer) s_.drained_whole = true;
    s_.Finish(s_.queue_.front());
    s_.queue_.pop_front();
    s_.response_head_sent_ = false;
    if (s_.upgrade_pending_ && s_.queue_.empty()) {
      // The server did not switch: the requests after the Upgrade are HTTP again.
      s_.requests_.ContinueHttp();
      s_.upgrade_pending_ = false;
      s_.waiting_client = false;
    }
    if (s_.paused_for_pipeline_ && s_.queue_.size() < s_.options_.max_pipelined) {
      s_.paused_for_pipeline_ = false;
      s_.waiting_client = false;
    }
    if (s_.response_closes_) {
      s_.server_done_ = true;
      s_.client_done_ = true;
      s_.ShutBoth();
      return Action::kContinue;
    }
    s_.EmitLocalAnswers();
    return Action::kContinue;
  }

 private:
  Http1Session& s_;
};

Http1Session::Http1Session(Http1Options options, L7Authorize authorize, ExchangeSink sink)
    : options_(options),
      authorize_(std::move(authorize)),
      sink_(std::move(sink)),
      request_events_(std::make_unique<RequestEvents>(*this)),
      response_events_(std::make_unique<ResponseEvents>(*this)),
      requests_(http1::Parser::Kind::kRequest, *request_events_, options.limits),
      responses_(http1::Parser::Kind::kResponse, *response_events_, options.limits) {
  tunnels_ = options.tunnels;
}

Http1Session::~Http1Session() {
  for (Exchange& e : queue_) Finish(e);  // broken: status 0 unless answered
}

void Http1Session::SetAuthorize(L7Authorize authorize) { authorize_ = std::move(authorize); }

void Http1Session::Finish(Exchange& e) {
  e.record.end = absl::Now();
  if (sink_) sink_(e.record);
}

void Http1Session::ShutBoth() {
  shut_client = true;
  shut_server = true;
}

void Http1Session::EmitLocalAnswers() {
  while (!queue_.empty() && queue_.front().local_status != 0) {
    Exchange& e = queue_.front();
    const bool close = e.close_after || draining_;
    const std::string body = e.local_status == 403 ? "access denied\n"
                                                   : absl::StrCat(Reason(e.local_status), "\n");
    absl::StrAppend(&to_client, "HTTP/1.1 ", e.local_status, " ", Reason(e.local_status),
                    "\r\ncontent-type: text/plain\r\ncontent-length: ", body.size(), "\r\n",
                    close ? "connection: close\r\n" : "", "\r\n",
                    e.method == "HEAD" ? "" : body);  // a HEAD's answer has no body
    e.record.status = e.local_status;
    e.record.proxy_answered = true;
    Finish(e);
    queue_.pop_front();
    if (close) {
      // Whatever was forwarded after it is not answered to the client any more.
      for (Exchange& rest : queue_) Finish(rest);
      queue_.clear();
      client_done_ = true;
      server_done_ = true;
      waiting_client = false;
      ShutBoth();
      return;
    }
  }
}

size_t Http1Session::FromClient(std::string_view data) {
  if (client_done_) return data.size();  // after the connection's last request: dropped
  size_t taken = 0;
  while (taken < data.size()) {
    if (upgrade_pending_ || paused_for_pipeline_) {
      waiting_client = true;
      return taken;
    }
    if (to_server.size() >= options_.output_budget) return taken;
    const std::string_view piece = data.substr(taken, kPiece);
    const absl::Time t0 = absl::Now();
    const http1::FeedResult r = requests_.Feed(piece);
    if (!queue_.empty()) queue_.back().record.proxy_time += absl::Now() - t0;
    taken += r.consumed;
    switch (r.status) {
      case FeedStatus::kOk:
        break;
      case FeedStatus::kOpaque:  // only after SwitchToOpaque: the rest is the tunnel's
        return taken;
      case FeedStatus::kPaused:
        if (client_done_) return data.size();  // a refusal that ends the connection
        waiting_client = true;
        return taken;
      case FeedStatus::kUpgradePending:
        if (discard_request_) {
          // Refused by the proxy (answered, and the connection closes after it): no tunnel.
          requests_.ContinueHttp();
          break;
        }
        upgrade_pending_ = true;
        waiting_client = true;
        return taken;
      case FeedStatus::kClose:
        client_done_ = true;  // the server will not read past this request
        return data.size();
      case FeedStatus::kError:
        client_done_ = true;
        if (in_request_ && !discard_request_) {
          // Bad framing inside a body already partly forwarded: the server holds half a
          // request; nothing clean can be said to either side.
          abort = true;
        } else if (in_request_) {
          // In the dropped body of a refused request: its answer ends the connection (at once,
          // if it was written already).
          if (!queue_.empty() && queue_.back().local_status != 0) {
            queue_.back().close_after = true;
          } else {
            server_done_ = true;
            ShutBoth();
          }
        } else {
          Exchange e;
          e.record.start = absl::Now();
          e.record.first_byte = absl::InfinitePast();
          e.local_status = http1::ErrorStatus(r.error);
          e.close_after = true;
          queue_.push_back(std::move(e));
          EmitLocalAnswers();
        }
        return data.size();
    }
    if (r.consumed == 0 && r.status == FeedStatus::kOk) break;
  }
  return taken;
}

size_t Http1Session::FromServer(std::string_view data) {
  const size_t n = FeedServer(data);
  UpdateDrained();
  return n;
}

bool Http1Session::ClientGone() {
  client_gone_ = true;
  client_done_ = true;
  waiting_client = false;
  to_client.clear();
  UpdateDrained();
  return !drained;
}

void Http1Session::UpdateDrained() {
  if (!client_gone_) return;
  // Read on only for the response at the front: forwarded whole, priced (observed), not over.
  drained = server_done_ || queue_.empty() || queue_.front().local_status != 0 ||
            !queue_.front().complete || queue_.front().record.observer == nullptr;
}

size_t Http1Session::FeedServer(std::string_view data) {
  if (server_done_) return data.size();
  size_t taken = 0;
  while (taken < data.size()) {
    if (to_client.size() >= options_.output_budget) return taken;
    const std::string_view piece = data.substr(taken, kPiece);
    const absl::Time t0 = absl::Now();
    http1::FeedResult r = responses_.Feed(piece);
    if (!queue_.empty()) queue_.front().record.proxy_time += absl::Now() - t0;
    taken += r.consumed;
    if (refused_tunnel_) r.status = FeedStatus::kError;
    switch (r.status) {
      case FeedStatus::kOk:
      case FeedStatus::kPaused:
        break;
      case FeedStatus::kUpgradePending:  // not a response status
        abort = true;
        return data.size();
      case FeedStatus::kOpaque:
        // 101, or 2xx to CONNECT: forwarded; from here on both ways are opaque bytes.
        if (!upgrade_pending_ || queue_.size() != 1) {
          abort = true;
          return data.size();
        }
        Finish(queue_.front());
        queue_.pop_front();
        requests_.SwitchToOpaque();
        upgrade_pending_ = false;
        waiting_client = false;
        tunnel = true;
        return taken;
      case FeedStatus::kClose:
        server_done_ = true;
        return data.size();
      case FeedStatus::kError:
        server_done_ = true;
        client_done_ = true;
        if (!queue_.empty() && !response_head_sent_) {
          // Nothing of this response reached the client yet: it gets a 502 in its place.
          Exchange& e = queue_.front();
          e.local_status = 502;
          e.close_after = true;
          EmitLocalAnswers();
          ShutBoth();
        } else {
          abort = true;
        }
        return data.size();
    }
    if (r.consumed == 0) break;
  }
  return taken;
}

void Http1Session::ClientClosed() {
  requests_.Finish();
  client_done_ = true;
  waiting_client = false;
  shut_server = true;  // passed on: the server sees the client's half-close
}

void Http1Session::ServerClosed() {
  if (!server_done_) {
    server_done_ = true;
    responses_.Finish();  // completes a body that lasts until the close
  }
  // What the server did not answer is not answered: an answer of the proxy's own queued behind
  // it would be taken for the missing one.
  for (Exchange& e : queue_) Finish(e);
  queue_.clear();
  UpdateDrained();
  client_done_ = true;
  waiting_client = false;
  ShutBoth();
}

void Http1Session::Drain() {
  // "Connection: close" on the next response; an idle connection is closed by CloseIdle (the
  // relay's sweep, once it stayed idle), not here.
  draining_ = true;
}

bool Http1Session::Idle() const {
  return !in_request_ && queue_.empty() && !upgrade_pending_ && !client_done_ && !tunnel;
}

void Http1Session::CloseIdle() {
  if (!Idle()) return;
  client_done_ = true;
  server_done_ = true;
  ShutBoth();
}

}  // namespace shunt::agent
