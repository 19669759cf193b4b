// What the framer's unit tests and its fuzz target (http1_fuzz.cc) both need: a parser fed as a
// connection would feed it (all at once, in two pieces, in small ones, pausing after every event)
// and the events it gave written down as lines, so that two ways of feeding can be compared.
// framer.h and the standard library only (the fuzz target is built without the project's CMake).
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/proxy/http1/framer.h"

namespace shunt::agent::http1::event_log {

inline std::string Fields(const Headers& headers) {
  std::string out = "{";
  for (const Header& h : headers) {
    if (out.size() > 1) out += ", ";
    out += h.name + ": " + h.value;
  }
  return out + "}";
}

inline std::string Framing(const BodyFraming& f) {
  switch (f.kind) {
    case BodyKind::kNone:
      return "none";
    case BodyKind::kContentLength:
      return "cl:" + std::to_string(f.length);
    case BodyKind::kChunked:
      return "chunked";
    case BodyKind::kUntilClose:
      return "until-close";
  }
  return "?";
}

// Writes every event down as a line; bodies are joined, since their slicing follows the reads.
class EventLog : public ParserCallbacks {
 public:
  explicit EventLog(bool pause) : pause_(pause) {}

  Action OnRequestHead(RequestHead&& h) override {
    std::string e = "req " + h.method + " " + h.target + " 1." + std::to_string(h.version_minor) +
                    " " + Framing(h.framing) + (h.keep_alive ? " ka" : " close");
    if (h.expect_continue) e += " expect";
    if (h.upgrade) e += " upgrade";
    if (h.is_connect) e += " connect";
    e += " " + Fields(h.headers);
    requests.push_back(std::move(h));
    return Add(std::move(e));
  }
  Action OnResponseHead(ResponseHead&& h) override {
    std::string e = "resp " + std::to_string(h.status) + " " + h.reason + " 1." +
                    std::to_string(h.version_minor) + " " + Framing(h.framing) +
                    (h.keep_alive ? " ka" : " close");
    if (h.interim) e += " interim";
    if (h.tunnel) e += " tunnel";
    e += " " + Fields(h.headers);
    responses.push_back(std::move(h));
    return Add(std::move(e));
  }
  Action OnBody(std::string_view data) override {
    if (data.empty()) empty_bodies++;
    if (!events.empty() && events.back().rfind("body:", 0) == 0) {
      events.back().append(data);
      return pause_ ? Action::kPause : Action::kContinue;
    }
    return Add("body:" + std::string(data));
  }
  Action OnTrailers(Headers&& trailers) override { return Add("trailers:" + Fields(trailers)); }
  Action OnMessageComplete() override { return Add("complete"); }

  std::vector<std::string> events;
  std::vector<RequestHead> requests;
  std::vector<ResponseHead> responses;
  int empty_bodies = 0;  // OnBody with nothing in it: never expected

 private:
  Action Add(std::string e) {
    events.push_back(std::move(e));
    return pause_ ? Action::kPause : Action::kContinue;
  }
  bool pause_;
};

struct Feeding {
  size_t piece = 0;     // feed in pieces of this many bytes; 0: all at once
  size_t cut = 0;       // or in two pieces, cut here (when piece is 0 and cut > 0)
  bool pause = false;   // every callback pauses
  bool finish = true;   // Finish() at the end of the input
  bool upgrade = true;  // kUpgradePending: SwitchToOpaque (else ContinueHttp)
  std::vector<std::string> methods = {"GET", "GET", "GET", "GET"};  // responses answer these
  Limits limits;
};

// Feeds `input` as a connection would and returns the events, ended by what stopped it.
// `check(ok, what)` is told of every invariant of the Feed() contract (the tests EXPECT, the fuzz
// target traps).
inline std::vector<std::string> Drive(Parser::Kind kind, std::string_view input,
                                      const Feeding& run,
                                      const std::function<void(bool, const char*)>& check) {
  EventLog rec(run.pause);
  Parser parser(kind, rec, run.limits);
  if (kind == Parser::Kind::kResponse) {
    for (const std::string& m : run.methods) parser.ExpectResponseTo(m);
  }
  size_t off = 0;
  while (off < input.size()) {
    size_t n = input.size() - off;
    if (run.piece > 0) n = std::min(n, run.piece);
    if (run.piece == 0 && run.cut > 0 && off < run.cut) n = run.cut - off;
    std::string_view chunk = input.substr(off, n);
    for (bool more = true; more;) {
      const FeedResult r = parser.Feed(chunk);
      check(r.consumed <= chunk.size(), "consumed no more than it was given");
      off += r.consumed;
      chunk.remove_prefix(r.consumed);
      switch (r.status) {
        case FeedStatus::kOk:
          check(chunk.empty(), "kOk consumed everything");
          more = false;
          break;
        case FeedStatus::kPaused:
          break;
        case FeedStatus::kUpgradePending:
          rec.events.push_back("upgrade-pending");
          run.upgrade ? parser.SwitchToOpaque() : parser.ContinueHttp();
          break;
        case FeedStatus::kOpaque:
          rec.events.push_back("opaque:" + std::string(input.substr(off)));
          return rec.events;
        case FeedStatus::kClose:
          rec.events.push_back("close:" + std::string(input.substr(off)));
          return rec.events;
        case FeedStatus::kError:
          check(r.error != Error::kNone && r.error == parser.error(), "an error is named");
          rec.events.push_back("error:" + std::string(ErrorName(r.error)));
          return rec.events;
      }
    }
  }
  check(rec.empty_bodies == 0, "no empty body event");
  if (run.finish) {
    const FeedResult r = parser.Finish();
    if (r.status == FeedStatus::kError) {
      rec.events.push_back("finish:" + std::string(ErrorName(r.error)));
    }
  }
  return rec.events;
}

}  // namespace shunt::agent::http1::event_log
