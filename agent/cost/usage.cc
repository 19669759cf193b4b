#include "agent/cost/usage.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <initializer_list>

namespace shunt::agent::cost {
namespace {

bool Space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// How many bytes from p on are plain string content (not '"', '\\' or a control character),
// eight at a time: string content is most of an LLM body's bytes.
size_t PlainRun(const char* p, size_t n) {
  constexpr uint64_t kOnes = 0x0101010101010101ULL, kHigh = 0x8080808080808080ULL;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    const uint64_t quote = w ^ (kOnes * '"'), slash = w ^ (kOnes * '\\');
    const uint64_t special = ((quote - kOnes) & ~quote) | ((slash - kOnes) & ~slash) |
                             ((w - kOnes * 0x20) & ~w);
    if (special & kHigh) break;  // one of these eight: found byte by byte below
  }
  while (i < n && p[i] != '"' && p[i] != '\\' && static_cast<unsigned char>(p[i]) >= 0x20) ++i;
  return i;
}

void AppendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// A token count: a non-negative integer written as one (no fraction, no exponent), at most 15
// digits (no API reports more).
std::optional<uint64_t> Count(std::string_view s) {
  if (s.empty() || s.size() > 15) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

}  // namespace

// ---- JsonScanner -------------------------------------------------------------------------------

void JsonScanner::BeginValue(char c) {
  switch (c) {
    case '{':
    case '[':
      if (path_.size() >= kMaxDepth) {
        // Deeper than any usage: its brackets are matched, nothing in it is read (an echoed
        // tool schema may be this deep; the usage after it still counts).
        skip_depth_ = 1;
        state_ = State::kSkip;
        return;
      }
      path_.push_back(Level{.array = c == '[', .key = {}, .overlong = false});
      state_ = c == '{' ? State::kFirstKey : State::kValue;
      array_open_ = c == '[';  // "]" may close it at once
      return;
    case '"':
      in_key_ = false;
      text_.clear();
      cut_ = false;
      state_ = State::kString;
      return;
    case 't':
      literal_ = "true";
      break;
    case 'f':
      literal_ = "false";
      break;
    case 'n':
      literal_ = "null";
      break;
    default:
      if (c == '-' || (c >= '0' && c <= '9')) {
        text_.assign(1, c);
        cut_ = false;
        number_ = c == '-' ? Number::kMinus : c == '0' ? Number::kZero : Number::kInt;
        state_ = State::kNumber;
        return;
      }
      return Fail();
  }
  literal_at_ = 1;
  state_ = State::kLiteral;
}

void JsonScanner::EndScalar(Kind kind) {
  if (on_scalar_ && path_.size() <= report_depth_) on_scalar_(path_, kind, text_, cut_);
  EndValue();
}

void JsonScanner::EndValue() { state_ = path_.empty() ? State::kDone : State::kAfterValue; }

void JsonScanner::Feed(std::string_view data) {
  size_t i = 0;
  while (i < data.size() && state_ != State::kError) {
    const char c = data[i];
    switch (state_) {
      case State::kValue:
        if (Space(c)) break;
        if (c == ']' && array_open_) {  // "[]"
          array_open_ = false;
          path_.pop_back();
          EndValue();
          break;
        }
        array_open_ = false;
        BeginValue(c);
        break;
      case State::kFirstKey:
      case State::kKey:
        if (Space(c)) break;
        if (c == '}' && state_ == State::kFirstKey) {
          path_.pop_back();
          EndValue();
          break;
        }
        if (c != '"') return Fail();
        in_key_ = true;
        text_.clear();
        cut_ = false;
        state_ = State::kString;
        break;
      case State::kColon:
        if (Space(c)) break;
        if (c != ':') return Fail();
        in_key_ = false;
        state_ = State::kValue;
        break;
      case State::kAfterValue: {
        if (Space(c)) break;
        Level& top = path_.back();
        if (c == ',') {
          state_ = top.array ? State::kValue : State::kKey;
        } else if ((c == ']' && top.array) || (c == '}' && !top.array)) {
          path_.pop_back();
          EndValue();
        } else {
          return Fail();
        }
        break;
      }
      case State::kString: {
        // A run of plain bytes at once. A string not kept is only looked through for its end
        // (memchr speed: the content of messages is most of an LLM body): a control character
        // in it is not looked for (it changes no structure).
        const size_t cap = Cap();
        size_t j;
        if (text_.size() >= cap) {  // nothing more of it is kept
          const char* p = data.data() + i;
          const size_t n = data.size() - i;
          const void* q = std::memchr(p, '"', n);
          const size_t to_quote = q ? static_cast<size_t>(static_cast<const char*>(q) - p) : n;
          const void* b = std::memchr(p, '\\', to_quote);
          j = i + (b ? static_cast<size_t>(static_cast<const char*>(b) - p) : to_quote);
        } else {
          j = i + PlainRun(data.data() + i, data.size() - i);
        }
        if (j > i) {
          const size_t room = text_.size() < cap ? cap - text_.size() : 0;
          if (j - i > room) cut_ = true;
          text_.append(data.substr(i, std::min(room, j - i)));
          i = j;
          continue;
        }
        if (c == '\\') {
          state_ = State::kEscape;
        } else if (c == '"') {
          if (in_key_) {
            path_.back().key = cut_ ? std::string() : text_;
            path_.back().overlong = cut_;
            in_key_ = false;
            state_ = State::kColon;
          } else {
            EndScalar(Kind::kString);
          }
        } else {
          return Fail();  // a control character inside a string
        }
        break;
      }
      case State::kEscape: {
        char out;
        switch (c) {
          case '"': out = '"'; break;
          case '\\': out = '\\'; break;
          case '/': out = '/'; break;
          case 'b': out = '\b'; break;
          case 'f': out = '\f'; break;
          case 'n': out = '\n'; break;
          case 'r': out = '\r'; break;
          case 't': out = '\t'; break;
          case 'u':
            unicode_left_ = 4;
            unicode_ = 0;
            state_ = State::kUnicode;
            ++i;
            continue;
          default:
            return Fail();
        }
        if (text_.size() < Cap()) {
          text_ += out;
        } else {
          cut_ = true;
        }
        state_ = State::kString;
        break;
      }
      case State::kUnicode: {
        uint32_t v;
        if (c >= '0' && c <= '9') {
          v = static_cast<uint32_t>(c - '0');
        } else if (c >= 'a' && c <= 'f') {
          v = static_cast<uint32_t>(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
          v = static_cast<uint32_t>(c - 'A' + 10);
        } else {
          return Fail();
        }
        unicode_ = unicode_ << 4 | v;
        if (--unicode_left_ == 0) {
          if (text_.size() + 3 <= Cap()) {
            AppendUtf8(text_, unicode_);
          } else {
            cut_ = true;
          }
          state_ = State::kString;
        }
        break;
      }
      case State::kNumber: {
        // RFC 8259's grammar, a byte at a time; any length (what is handed over is cut).
        const bool digit = c >= '0' && c <= '9';
        const bool exp = c == 'e' || c == 'E';
        Number next = Number::kEnd;
        switch (number_) {
          case Number::kMinus:
            next = c == '0' ? Number::kZero : digit ? Number::kInt : Number::kBad;
            break;
          case Number::kZero:
            next = c == '.' ? Number::kDot : exp ? Number::kE : digit ? Number::kBad : Number::kEnd;
            break;
          case Number::kInt:
            next = digit ? Number::kInt : c == '.' ? Number::kDot : exp ? Number::kE : Number::kEnd;
            break;
          case Number::kDot:
            next = digit ? Number::kFrac : Number::kBad;
            break;
          case Number::kFrac:
            next = digit ? Number::kFrac : exp ? Number::kE : Number::kEnd;
            break;
          case Number::kE:
            next = (c == '+' || c == '-') ? Number::kESign : digit ? Number::kExp : Number::kBad;
            break;
          case Number::kESign:
          case Number::kExp:
            next = digit ? Number::kExp : number_ == Number::kExp ? Number::kEnd : Number::kBad;
            break;
          default:
            next = Number::kBad;
        }
        if (next == Number::kBad) return Fail();
        if (next == Number::kEnd) {
          EndScalar(Kind::kNumber);
          continue;  // this byte ends the number and is read again in the state after it
        }
        number_ = next;
        if (text_.size() < 32) {
          text_ += c;
        } else {
          cut_ = true;
        }
        break;
      }
      case State::kSkip:
        if (c == '"') {
          state_ = State::kSkipString;
        } else if (c == '{' || c == '[') {
          if (++skip_depth_ > (uint64_t{1} << 40)) return Fail();
        } else if (c == '}' || c == ']') {
          if (--skip_depth_ == 0) EndValue();
        }
        break;
      case State::kSkipString:
        if (c == '\\') {
          state_ = State::kSkipEscape;
        } else if (c == '"') {
          state_ = State::kSkip;
        }
        break;
      case State::kSkipEscape:
        state_ = State::kSkipString;
        break;
      case State::kLiteral:
        if (c != literal_[literal_at_]) return Fail();
        if (++literal_at_ == literal_.size()) {
          text_.assign(literal_);
          cut_ = false;
          EndScalar(literal_[0] == 't' ? Kind::kTrue : literal_[0] == 'f' ? Kind::kFalse
                                                                           : Kind::kNull);
        }
        break;
      case State::kDone:
        if (!Space(c)) return Fail();
        break;
      case State::kError:
        return;
    }
    ++i;
  }
}

void JsonScanner::Reset() {
  state_ = State::kValue;
  path_.clear();
  in_key_ = array_open_ = cut_ = false;
  text_.clear();
  skip_depth_ = 0;
}

bool JsonScanner::Finish() {
  if (state_ == State::kNumber && path_.empty()) {
    if (number_ == Number::kZero || number_ == Number::kInt || number_ == Number::kFrac ||
        number_ == Number::kExp) {
      EndScalar(Kind::kNumber);
    } else {
      Fail();
    }
  }
  return state_ == State::kDone;
}

// ---- Usage -------------------------------------------------------------------------------------

Usage::Billable Usage::Bill(bool reasoning_apart) const {
  Billable b;
  const uint64_t in = input.value_or(0), in_cached = input_cached.value_or(0);
  b.input = in > in_cached ? in - in_cached : 0;
  b.cached_input = std::min(in, in_cached) + cache_read.value_or(0);
  b.cache_creation = cache_creation.value_or(0);
  const uint64_t out = output.value_or(0);
  if (reasoning_apart) {
    b.reasoning = std::min(out, reasoning.value_or(0));
    b.output = out - b.reasoning;
  } else {
    b.output = out;
  }
  return b;
}

// ---- UsageReader -------------------------------------------------------------------------------

UsageReader::UsageReader(Format format) : format_(format) {}

void UsageReader::StartDocument() {
  pending_ = Usage{};
  pending_model_.clear();
  doc_has_bytes_ = false;
  in_doc_ = true;
  if (format_ == Format::kEventStream) {  // the scanner only once the event may need it
    event_.clear();
    event_streaming_ = false;
    return;
  }
  StartScanner();
}

void UsageReader::StartScanner() {
  if (doc_) {
    doc_->Reset();  // one scanner for every event of a stream: its buffers kept
  } else {
    // Nothing it reads is deeper than 4: "response", "usage", "*_details", the count.
    doc_.emplace([this](const std::vector<JsonScanner::Level>& path, JsonScanner::Kind kind,
                        std::string_view text, bool cut) { OnScalar(path, kind, text, cut); },
                 4);
  }
}

void UsageReader::EndDocument() {
  if (!in_doc_) return;
  in_doc_ = false;
  std::string_view start = data_start_;
  while (!start.empty() && (start.back() == ' ' || start.back() == '\t')) start.remove_suffix(1);
  if (format_ == Format::kEventStream && start == "[DONE]") {
    done_ = true;
    return;
  }
  if (format_ == Format::kEventStream && !event_streaming_) {
    // Most events of a stream carry no usage (content deltas): looked through, not parsed.
    if (!MayCarryUsage(event_)) {
      ++documents_;
      return;
    }
    StartScanner();
    doc_->Feed(event_);
  }
  if (doc_->Finish()) {
    ++documents_;
    auto set = [](std::optional<uint64_t>& to, const std::optional<uint64_t>& from) {
      if (from) to = from;
    };
    set(usage_.input, pending_.input);
    set(usage_.input_cached, pending_.input_cached);
    set(usage_.cache_read, pending_.cache_read);
    set(usage_.cache_creation, pending_.cache_creation);
    set(usage_.output, pending_.output);
    set(usage_.reasoning, pending_.reasoning);
    if (!pending_model_.empty()) model_ = pending_model_;
  } else if (doc_has_bytes_ || format_ == Format::kEventStream) {
    ++bad_;
  }
}

void UsageReader::OnScalar(const std::vector<JsonScanner::Level>& path, JsonScanner::Kind kind,
                           std::string_view text, bool cut) {
  // The containers from the root, all objects: what an array holds is never usage.
  if (path.empty() || path.size() > 4) return;
  std::array<std::string_view, 4> keys;
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i].array || path[i].overlong) return;
    keys[i] = path[i].key;
  }
  const size_t n = path.size();
  // Where the usage object or the model is: at the root, or in the root's `message` (Anthropic's
  // message_start) or `response` (the Responses API's events).
  size_t base = 0;
  if (n >= 2 && (keys[0] == "message" || keys[0] == "response")) base = 1;
  if (n == base + 1 && keys[base] == "model") {
    if (kind == JsonScanner::Kind::kString && !cut && !text.empty()) pending_model_ = text;
    return;
  }
  if (n < base + 2 || keys[base] != "usage" || kind != JsonScanner::Kind::kNumber) return;
  const std::optional<uint64_t> v = cut ? std::nullopt : Count(text);
  if (!v) return;
  auto is = [&](std::initializer_list<std::string_view> rest) {
    if (rest.size() != n - base - 1) return false;
    size_t i = base + 1;
    for (std::string_view k : rest) {
      if (keys[i++] != k) return false;
    }
    return true;
  };
  if (is({"prompt_tokens"}) || is({"input_tokens"})) {
    pending_.input = v;
  } else if (is({"prompt_tokens_details", "cached_tokens"}) ||
             is({"input_tokens_details", "cached_tokens"})) {
    pending_.input_cached = v;
  } else if (is({"cache_read_input_tokens"})) {
    pending_.cache_read = v;
  } else if (is({"cache_creation_input_tokens"})) {
    pending_.cache_creation = v;
  } else if (is({"completion_tokens"}) || is({"output_tokens"})) {
    pending_.output = v;
  } else if (is({"completion_tokens_details", "reasoning_tokens"}) ||
             is({"output_tokens_details", "reasoning_tokens"})) {
    pending_.reasoning = v;
  }
}

void UsageReader::FeedEventBytes(std::string_view data) {
  if (data.empty()) return;
  if (data_start_.size() < 8) data_start_.append(data.substr(0, 8 - data_start_.size()));
  doc_has_bytes_ = true;
  if (event_streaming_) {
    doc_->Feed(data);
  } else if (event_.size() + data.size() <= kEventBuffer) {
    event_.append(data);
  } else {  // a large event: read as it comes
    event_streaming_ = true;
    StartScanner();
    doc_->Feed(event_);
    event_.clear();
    doc_->Feed(data);
  }
}

bool UsageReader::MayCarryUsage(std::string_view event) const {
  // A usage object (not "usage":null, which every chunk of some streams has), or while no model
  // is known, the model.
  static constexpr std::string_view kUsage = "\"usage\"";
  for (const char* p = event.data(); ;) {
    const size_t left = static_cast<size_t>(event.data() + event.size() - p);
    const void* hit = memmem(p, left, kUsage.data(), kUsage.size());
    if (hit == nullptr) break;
    const size_t at = static_cast<size_t>(static_cast<const char*>(hit) - event.data());
    p = static_cast<const char*>(hit) + kUsage.size();
    size_t i = at + kUsage.size();
    while (i < event.size() && Space(event[i])) ++i;
    if (i >= event.size() || event[i] != ':') continue;
    ++i;
    while (i < event.size() && Space(event[i])) ++i;
    if (i < event.size() && event[i] == '{') return true;
  }
  return model_.empty() && memmem(event.data(), event.size(), "\"model\"", 7) != nullptr;
}

void UsageReader::Feed(std::string_view body) {
  if (format_ == Format::kJson) {
    if (!in_doc_) StartDocument();
    if (!body.empty()) doc_has_bytes_ = true;
    doc_->Feed(body);
    return;
  }
  // text/event-stream (WHATWG HTML, "Server-sent events"): lines end with CRLF, LF or CR; a
  // "data" field's value (one leading space dropped) goes to the event's document as it comes,
  // several data lines joined by "\n"; a blank line ends the event. Other fields and comments
  // are skipped without being kept.
  auto begin_data_line = [this] {
    if (!data_lines_) {
      StartDocument();
      data_start_.clear();
      data_lines_ = true;
    } else {
      FeedEventBytes("\n");
    }
  };
  size_t i = 0;
  // A byte order mark at the start of the stream is not part of its first field's name.
  static constexpr unsigned char kBom[] = {0xEF, 0xBB, 0xBF};
  while (bom_ < 3 && i < body.size()) {
    if (static_cast<unsigned char>(body[i]) != kBom[bom_]) {
      bom_ = 3;
      break;
    }
    ++bom_;
    ++i;
  }
  while (i < body.size()) {
    const char c = body[i];
    if (after_cr_) {
      after_cr_ = false;
      if (c == '\n') {
        ++i;
        continue;
      }
    }
    const bool eol = c == '\r' || c == '\n';
    if (eol) after_cr_ = c == '\r';
    switch (line_) {
      case Line::kStart:
        if (eol) {  // a blank line: the event ends
          if (data_lines_) EndDocument();
          data_lines_ = false;
        } else if (c == ':') {
          line_ = Line::kSkip;  // a comment
        } else {
          field_.assign(1, c);
          line_ = Line::kField;
        }
        break;
      case Line::kField:
        if (c == ':' || eol) {
          if (field_ == "data") {
            begin_data_line();
            data_space_ = true;
            line_ = eol ? Line::kStart : Line::kData;
          } else {
            line_ = eol ? Line::kStart : Line::kSkip;
          }
        } else if (field_.size() < 8) {
          field_ += c;
        } else {
          line_ = Line::kSkip;  // no field this long is read
        }
        break;
      case Line::kData: {
        if (eol) {
          line_ = Line::kStart;
          break;
        }
        if (data_space_) {
          data_space_ = false;
          if (c == ' ') break;
        }
        size_t j = i;
        while (j < body.size() && body[j] != '\r' && body[j] != '\n') ++j;
        FeedEventBytes(body.substr(i, j - i));
        i = j;
        continue;
      }
      case Line::kSkip:
        if (eol) line_ = Line::kStart;
        break;
    }
    ++i;
  }
}

void UsageReader::Finish() {
  if (format_ == Format::kJson) {
    EndDocument();
    return;
  }
  // A stream that ended without its last blank line: its last event counts (the bytes came).
  if (data_lines_) EndDocument();
  data_lines_ = false;
  line_ = Line::kStart;
}

// ---- RequestReader -----------------------------------------------------------------------------

RequestReader::RequestReader()
    : scanner_([this](const std::vector<JsonScanner::Level>& path, JsonScanner::Kind kind,
                      std::string_view text, bool cut) {
        if (path.size() != 1 || path[0].array || path[0].overlong) return;
        if (path[0].key == "model" && kind == JsonScanner::Kind::kString && !cut) {
          model_ = text;
        } else if (path[0].key == "stream") {
          stream_ = kind == JsonScanner::Kind::kTrue;
        }
      }, 1) {}

}  // namespace shunt::agent::cost
