#include "agent/proxy/http1/framer.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace shunt::agent::http1 {
namespace {

// Lengths (Content-Length, chunk sizes) fit in an int64: what the other end stores them in.
constexpr uint64_t kMaxLength = std::numeric_limits<int64_t>::max();
// A line buffer grown past this by one long line is given back rather than kept per connection.
constexpr size_t kKeptLineCapacity = 4096;

constexpr std::array<bool, 256> kTokenChars = [] {
  std::array<bool, 256> table{};
  for (int c = '0'; c <= '9'; ++c) table[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) table[c] = table[c - 'a' + 'A'] = true;
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) table[static_cast<unsigned char>(c)] = true;
  return table;
}();

bool IsTokenChar(char c) { return kTokenChars[static_cast<unsigned char>(c)]; }
bool IsOws(char c) { return c == ' ' || c == '\t'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsVchar(char c) { return c > 0x20 && c < 0x7f; }
// field-vchar, SP and HTAB (RFC 9110 5.5): no controls, no DEL; obs-text (>= 0x80) passes.
bool IsValueChar(char c) {
  const auto u = static_cast<unsigned char>(c);
  return (u > 0x20 && u != 0x7f) || c == ' ' || c == '\t';
}

// Debian's Abseil has its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0): the few
// string helpers needed are here, on std::string_view.
bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return absl::ascii_tolower(static_cast<unsigned char>(x)) ==
                  absl::ascii_tolower(static_cast<unsigned char>(y));
         });
}

bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsTokenChar);
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && IsOws(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsOws(s.back())) s.remove_suffix(1);
  return s;
}

// Calls f on each comma-separated element of a list value, trimmed (empty ones included); stops
// when f returns false, and returns whether it ran to the end.
template <typename F>
bool ForEachElement(std::string_view list, F f) {
  for (;;) {
    const size_t comma = list.find(',');
    if (!f(TrimOws(list.substr(0, comma)))) return false;
    if (comma == std::string_view::npos) return true;
    list.remove_prefix(comma + 1);
  }
}

template <typename F>
void ForEachConnectionOption(const Headers& headers, F f) {
  for (const Header& h : headers) {
    if (!EqualsIgnoreCase(h.name, "connection")) continue;
    ForEachElement(h.value, [&](std::string_view option) {
      if (!option.empty()) f(option);
      return true;
    });
  }
}

bool KeepAlive(const Headers& headers, int version_minor) {
  bool close = false, keep_alive = false;
  ForEachConnectionOption(headers, [&](std::string_view option) {
    close |= EqualsIgnoreCase(option, "close");
    keep_alive |= EqualsIgnoreCase(option, "keep-alive");
  });
  return !close && (version_minor == 1 || keep_alive);
}

bool HasConnectionOption(const Headers& headers, std::string_view wanted) {
  bool found = false;
  ForEachConnectionOption(
      headers, [&](std::string_view option) { found |= EqualsIgnoreCase(option, wanted); });
  return found;
}

// An Upgrade field offering at least one protocol: an empty list asks for nothing, and servers
// do not switch on it.
bool OffersUpgrade(const Headers& headers) {
  for (const Header& h : headers) {
    if (!EqualsIgnoreCase(h.name, "upgrade")) continue;
    const bool empty = ForEachElement(h.value, [](std::string_view p) { return p.empty(); });
    if (!empty) return true;
  }
  return false;
}

bool ExpectsContinue(const Headers& headers) {
  bool found = false;
  for (const Header& h : headers) {
    if (!EqualsIgnoreCase(h.name, "expect")) continue;
    ForEachElement(h.value, [&](std::string_view e) {
      found |= EqualsIgnoreCase(e, "100-continue");
      return true;
    });
  }
  return found;
}

// uri-host [":" port] without the sub-delims: a comma, "@" or "/" in a Host is how two hops are
// made to route one request differently.
bool IsHostValue(std::string_view host) {
  return std::all_of(host.begin(), host.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
           (c != '\0' && std::strchr("-._~%:[]", c) != nullptr);
  });
}

bool IsAuthorityForm(std::string_view target) {
  const size_t colon = target.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  const std::string_view port = target.substr(colon + 1);
  return !port.empty() && port.size() <= 5 && std::all_of(port.begin(), port.end(), IsDigit) &&
         IsHostValue(target.substr(0, colon));
}

bool IsAbsoluteForm(std::string_view target) {
  const size_t end = target.find("://");
  if (end == std::string_view::npos || end == 0 || end + 3 == target.size()) return false;
  if (!absl::ascii_isalpha(static_cast<unsigned char>(target[0]))) return false;
  return std::all_of(target.begin(), target.begin() + end, [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '.';
  });
}

Error CheckTarget(std::string_view method, std::string_view target) {
  if (target.empty()) return Error::kBadTarget;
  for (char c : target) {
    if (!IsVchar(c) || c == '#') return Error::kBadTarget;
  }
  if (method == "CONNECT") return IsAuthorityForm(target) ? Error::kNone : Error::kBadTarget;
  if (target == "*") return method == "OPTIONS" ? Error::kNone : Error::kBadTarget;
  if (target[0] == '/' || IsAbsoluteForm(target)) return Error::kNone;
  return Error::kBadTarget;
}

Error ParseVersion(std::string_view v, int& minor) {
  if (v.size() != 8 || v.substr(0, 5) != "HTTP/" || !IsDigit(v[5]) || v[6] != '.' ||
      !IsDigit(v[7])) {
    return Error::kBadVersion;
  }
  if (v[5] != '1' || v[7] > '1') return Error::kUnsupportedVersion;
  minor = v[7] - '0';
  return Error::kNone;
}

Error ParseContentLength(std::string_view value, uint64_t& length) {
  if (value.empty()) return Error::kBadContentLength;
  length = 0;
  for (char c : value) {
    if (!IsDigit(c)) return Error::kBadContentLength;
    const uint64_t digit = c - '0';
    if (length > (kMaxLength - digit) / 10) return Error::kContentLengthOverflow;
    length = length * 10 + digit;
  }
  return Error::kNone;
}

bool IsKnownCoding(std::string_view coding) {
  for (std::string_view known :
       {"chunked", "gzip", "x-gzip", "deflate", "compress", "x-compress"}) {
    if (EqualsIgnoreCase(coding, known)) return true;
  }
  return false;
}

// The framing the fields ask for (RFC 9112 6): kNone when there are none. Responses without any
// are decided by the caller (until the close, or no body by method and status).
Error ReadFraming(const Headers& headers, int version_minor, bool request, BodyFraming& framing) {
  bool has_length = false, has_coding = false, chunked_final = false, unknown = false;
  int chunked = 0;
  uint64_t length = 0;
  for (const Header& h : headers) {
    if (EqualsIgnoreCase(h.name, "content-length")) {
      if (has_length || h.value.find(',') != std::string::npos) {
        return Error::kDuplicateContentLength;
      }
      has_length = true;
      if (Error e = ParseContentLength(h.value, length); e != Error::kNone) return e;
    } else if (EqualsIgnoreCase(h.name, "transfer-encoding")) {
      has_coding = true;
      const bool tokens = ForEachElement(h.value, [&](std::string_view coding) {
        if (!IsToken(coding)) return false;
        chunked_final = EqualsIgnoreCase(coding, "chunked");
        chunked += chunked_final;
        unknown |= !IsKnownCoding(coding);
        return true;
      });
      if (!tokens) return Error::kBadTransferEncoding;
    }
  }
  if (has_length && has_coding) return Error::kContentLengthWithTransferEncoding;
  if (has_coding && version_minor == 0) return Error::kTransferEncodingOnHttp10;
  if (chunked > 1) return Error::kBadTransferEncoding;
  if (has_coding) {
    if (request && !chunked_final) return Error::kChunkedNotFinal;
    if (request && unknown) return Error::kUnknownTransferCoding;
    framing = {chunked_final ? BodyKind::kChunked : BodyKind::kUntilClose, 0};
  } else if (has_length) {
    framing = {BodyKind::kContentLength, length};
  } else {
    framing = {};
  }
  return Error::kNone;
}

// chunk-ext (RFC 9112 7.1.1) without its BWS: *( ";" token [ "=" ( token / quoted-string ) ] ).
bool IsChunkExtensions(std::string_view ext) {
  size_t i = 0;
  const size_t n = ext.size();
  auto token = [&] {
    const size_t start = i;
    while (i < n && IsTokenChar(ext[i])) ++i;
    return i > start;
  };
  while (i < n) {
    if (ext[i++] != ';' || !token()) return false;
    if (i == n || ext[i] != '=') continue;
    ++i;
    if (i < n && ext[i] == '"') {
      for (++i;; ++i) {
        if (i == n) return false;
        if (ext[i] == '"') break;
        if (ext[i] == '\\' && ++i == n) return false;
        if (!IsValueChar(ext[i])) return false;
      }
      ++i;
    } else if (!token()) {
      return false;
    }
  }
  return true;
}

int HexValue(char c) {
  if (IsDigit(c)) return c - '0';
  return absl::ascii_tolower(static_cast<unsigned char>(c)) - 'a' + 10;
}

// Fields a recipient could merge into the head: framing, routing and connection options.
bool IsForbiddenTrailer(std::string_view name) {
  for (std::string_view f : {"content-length", "transfer-encoding", "trailer", "host", "connection",
                             "keep-alive", "proxy-connection", "upgrade", "te", "expect"}) {
    if (EqualsIgnoreCase(name, f)) return true;
  }
  return false;
}

void AppendFields(std::string& out, const Headers& headers) {
  for (const Header& h : headers) {
    assert(IsFieldName(h.name) && IsFieldValue(h.value));
    out.append(h.name).append(": ").append(h.value).append("\r\n");
  }
}

}  // namespace

std::string_view ErrorName(Error error) {
  switch (error) {
    case Error::kNone:
      return "none";
    case Error::kBareCr:
      return "bare_cr";
    case Error::kBareLf:
      return "bare_lf";
    case Error::kTooManyEmptyLines:
      return "too_many_empty_lines";
    case Error::kStartLineTooLong:
      return "start_line_too_long";
    case Error::kBadRequestLine:
      return "bad_request_line";
    case Error::kBadMethod:
      return "bad_method";
    case Error::kBadTarget:
      return "bad_target";
    case Error::kBadVersion:
      return "bad_version";
    case Error::kUnsupportedVersion:
      return "unsupported_version";
    case Error::kBadStatusLine:
      return "bad_status_line";
    case Error::kHeaderSectionTooLarge:
      return "header_section_too_large";
    case Error::kTooManyHeaders:
      return "too_many_headers";
    case Error::kObsFold:
      return "obs_fold";
    case Error::kMissingColon:
      return "missing_colon";
    case Error::kWhitespaceBeforeColon:
      return "whitespace_before_colon";
    case Error::kBadHeaderName:
      return "bad_header_name";
    case Error::kBadHeaderValue:
      return "bad_header_value";
    case Error::kMissingHost:
      return "missing_host";
    case Error::kDuplicateHost:
      return "duplicate_host";
    case Error::kBadHost:
      return "bad_host";
    case Error::kContentLengthWithTransferEncoding:
      return "content_length_with_transfer_encoding";
    case Error::kDuplicateContentLength:
      return "duplicate_content_length";
    case Error::kBadContentLength:
      return "bad_content_length";
    case Error::kContentLengthOverflow:
      return "content_length_overflow";
    case Error::kTransferEncodingOnHttp10:
      return "transfer_encoding_on_http10";
    case Error::kBadTransferEncoding:
      return "bad_transfer_encoding";
    case Error::kChunkedNotFinal:
      return "chunked_not_final";
    case Error::kUnknownTransferCoding:
      return "unknown_transfer_coding";
    case Error::kBodyOnConnect:
      return "body_on_connect";
    case Error::kBadChunkSize:
      return "bad_chunk_size";
    case Error::kChunkSizeOverflow:
      return "chunk_size_overflow";
    case Error::kChunkLineTooLong:
      return "chunk_line_too_long";
    case Error::kBadChunkExtension:
      return "bad_chunk_extension";
    case Error::kMissingChunkCrlf:
      return "missing_chunk_crlf";
    case Error::kTrailersTooLarge:
      return "trailers_too_large";
    case Error::kForbiddenTrailer:
      return "forbidden_trailer";
    case Error::kUnsolicitedResponse:
      return "unsolicited_response";
    case Error::kTruncated:
      return "truncated";
  }
  return "unknown";
}

int ErrorStatus(Error error) {
  switch (error) {
    case Error::kNone:
      return 0;
    case Error::kStartLineTooLong:
      return 414;
    case Error::kHeaderSectionTooLarge:
    case Error::kTooManyHeaders:
    case Error::kTrailersTooLarge:
      return 431;
    case Error::kUnknownTransferCoding:
      return 501;
    case Error::kUnsupportedVersion:
      return 505;
    case Error::kUnsolicitedResponse:
      return 502;
    default:
      return 400;
  }
}

absl::Status ErrorToStatus(Error error) {
  if (error == Error::kNone) return absl::OkStatus();
  return absl::InvalidArgumentError(std::string("http1: ").append(ErrorName(error)));
}

Parser::Parser(Kind kind, ParserCallbacks& callbacks, Limits limits)
    : kind_(kind), callbacks_(callbacks), limits_(limits) {}

FeedResult Parser::Feed(std::string_view data) {
  size_t pos = 0;
  for (;;) {
    switch (state_) {
      case State::kError:
        return {pos, FeedStatus::kError, error_};
      case State::kOpaque:
        return {pos, FeedStatus::kOpaque};
      case State::kClose:
        return {pos, FeedStatus::kClose};
      case State::kUpgradePending:
        return {pos, FeedStatus::kUpgradePending};
      case State::kComplete:  // needs no byte: also runs on the Feed after a pause
        state_ = after_complete_;
        if (callbacks_.OnMessageComplete() == Action::kPause) return {pos, FeedStatus::kPaused};
        continue;
      default:
        break;
    }
    if (pos == data.size()) return {pos, FeedStatus::kOk};
    Action action = Action::kContinue;
    switch (state_) {
      case State::kBody:
      case State::kChunkData: {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, data.size() - pos));
        const std::string_view slice = data.substr(pos, n);
        pos += n;
        remaining_ -= n;
        if (remaining_ == 0) {
          state_ = state_ == State::kBody ? State::kComplete : State::kChunkDataCr;
        }
        action = callbacks_.OnBody(slice);
        break;
      }
      case State::kUntilClose:
        action = callbacks_.OnBody(data.substr(pos));
        pos = data.size();
        break;
      case State::kChunkDataCr:
      case State::kChunkDataLf: {
        const bool cr = state_ == State::kChunkDataCr;
        if (data[pos++] != (cr ? '\r' : '\n')) {
          Fail(Error::kMissingChunkCrlf);
        } else {
          state_ = cr ? State::kChunkDataLf : State::kChunkSize;
        }
        break;
      }
      default: {  // the line states
        std::string_view line;
        if (!TakeLine(data, pos, line)) break;  // needs more bytes, or failed
        action = OnLine(line);
        if (line_.capacity() > kKeptLineCapacity) {
          std::string().swap(line_);
        } else {
          line_.clear();
        }
        break;
      }
    }
    if (action == Action::kPause) return {pos, FeedStatus::kPaused};
  }
}

// Takes the bytes of the current line from data[pos..] (at most up to the line's limit, so a
// long line costs what it brings, never a rescan). True with `line` (without its CRLF) when the
// line is complete; false when it needs more bytes (all were taken) or it failed.
bool Parser::TakeLine(std::string_view data, size_t& pos, std::string_view& line) {
  size_t limit = 0;
  Error too_long = Error::kNone;
  const bool section = state_ == State::kHeaderLine || state_ == State::kTrailerLine;
  switch (state_) {
    case State::kStartLine:
      limit = limits_.max_start_line;
      too_long = Error::kStartLineTooLong;
      break;
    case State::kHeaderLine:
      limit = limits_.max_header_bytes - std::min(section_bytes_, limits_.max_header_bytes);
      too_long = Error::kHeaderSectionTooLarge;
      break;
    case State::kChunkSize:
      limit = limits_.max_chunk_line;
      too_long = Error::kChunkLineTooLong;
      break;
    default:
      limit = limits_.max_trailer_bytes - std::min(section_bytes_, limits_.max_trailer_bytes);
      too_long = Error::kTrailersTooLarge;
      break;
  }
  const size_t room = limit > line_.size() ? limit - line_.size() : 0;
  const std::string_view rest = data.substr(pos);
  const void* lf = std::memchr(rest.data(), '\n', std::min(rest.size(), room));
  if (lf == nullptr) {
    if (rest.size() >= room) {  // no LF within the limit: the line is over it
      Fail(too_long);
      return false;
    }
    line_.append(rest);
    pos = data.size();
    return false;
  }
  const size_t n = static_cast<const char*>(lf) - rest.data() + 1;
  pos += n;
  if (line_.empty()) {
    line = rest.substr(0, n);
  } else {
    line_.append(rest.data(), n);
    line = line_;
  }
  if (section) section_bytes_ += line.size();
  if (line.size() < 2 || line[line.size() - 2] != '\r') {
    Fail(Error::kBareLf);
    return false;
  }
  line.remove_suffix(2);
  if (std::memchr(line.data(), '\r', line.size()) != nullptr) {
    Fail(Error::kBareCr);
    return false;
  }
  return true;
}

Action Parser::OnLine(std::string_view line) {
  switch (state_) {
    case State::kStartLine: {
      if (line.empty()) {
        if (kind_ == Kind::kResponse) return Fail(Error::kBadStatusLine);
        if (++empty_lines_ > limits_.max_leading_empty_lines) {
          return Fail(Error::kTooManyEmptyLines);
        }
        return Action::kContinue;
      }
      const Error e = kind_ == Kind::kRequest ? ParseRequestLine(line) : ParseStatusLine(line);
      if (e != Error::kNone) return Fail(e);
      empty_lines_ = 0;
      section_bytes_ = 0;
      state_ = State::kHeaderLine;
      return Action::kContinue;
    }
    case State::kHeaderLine: {
      if (line.empty()) return kind_ == Kind::kRequest ? EndRequestHead() : EndResponseHead();
      Headers& headers = kind_ == Kind::kRequest ? request_.headers : response_.headers;
      if (headers.size() >= limits_.max_headers) return Fail(Error::kTooManyHeaders);
      if (Error e = ParseFieldLine(line, headers); e != Error::kNone) return Fail(e);
      return Action::kContinue;
    }
    case State::kChunkSize:
      if (Error e = ParseChunkLine(line); e != Error::kNone) return Fail(e);
      return Action::kContinue;
    default: {  // kTrailerLine
      if (line.empty()) {
        state_ = State::kComplete;
        if (trailers_.empty()) return Action::kContinue;
        return callbacks_.OnTrailers(std::move(trailers_));
      }
      if (trailers_.size() >= limits_.max_headers) return Fail(Error::kTrailersTooLarge);
      if (Error e = ParseFieldLine(line, trailers_); e != Error::kNone) return Fail(e);
      if (IsForbiddenTrailer(trailers_.back().name)) return Fail(Error::kForbiddenTrailer);
      return Action::kContinue;
    }
  }
}

Action Parser::Fail(Error error) {
  error_ = error;
  state_ = State::kError;
  return Action::kContinue;
}

// method SP request-target SP HTTP-version, one space each (RFC 9112 3).
Error Parser::ParseRequestLine(std::string_view line) {
  request_ = RequestHead{};
  const size_t sp1 = line.find(' ');
  const size_t sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos || sp1 == sp2 || sp1 == 0) return Error::kBadRequestLine;
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  if (!IsToken(method)) return Error::kBadMethod;
  if (Error e = ParseVersion(line.substr(sp2 + 1), request_.version_minor); e != Error::kNone) {
    return e;
  }
  if (Error e = CheckTarget(method, target); e != Error::kNone) return e;
  request_.method = method;
  request_.target = target;
  return Error::kNone;
}

// HTTP-version SP 3DIGIT [SP reason-phrase]: "HTTP/1.1 200" without a reason is taken too.
Error Parser::ParseStatusLine(std::string_view line) {
  response_ = ResponseHead{};
  if (Error e = ParseVersion(line.substr(0, 8), response_.version_minor); e != Error::kNone) {
    return e;
  }
  if (line.size() < 12 || line[8] != ' ' || !IsDigit(line[9]) || !IsDigit(line[10]) ||
      !IsDigit(line[11]) || (line.size() > 12 && line[12] != ' ')) {
    return Error::kBadStatusLine;
  }
  const int status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
  const std::string_view reason = line.size() > 12 ? line.substr(13) : std::string_view();
  if (status < 100 || status > 599 || !std::all_of(reason.begin(), reason.end(), IsValueChar)) {
    return Error::kBadStatusLine;
  }
  response_.status = status;
  response_.reason = reason;
  return Error::kNone;
}

// field-name ":" OWS field-value OWS (RFC 9112 5).
Error Parser::ParseFieldLine(std::string_view line, Headers& into) {
  if (IsOws(line.front())) return Error::kObsFold;
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos) return Error::kMissingColon;
  const std::string_view name = line.substr(0, colon);
  if (name.empty()) return Error::kBadHeaderName;
  if (IsOws(name.back())) return Error::kWhitespaceBeforeColon;
  if (!IsToken(name)) return Error::kBadHeaderName;
  const std::string_view value = TrimOws(line.substr(colon + 1));
  if (!std::all_of(value.begin(), value.end(), IsValueChar)) return Error::kBadHeaderValue;
  into.push_back({std::string(name), std::string(value)});
  return Error::kNone;
}

// chunk-size [chunk-ext] (RFC 9112 7.1).
Error Parser::ParseChunkLine(std::string_view line) {
  size_t i = 0;
  uint64_t size = 0;
  for (; i < line.size() && absl::ascii_isxdigit(static_cast<unsigned char>(line[i])); ++i) {
    const uint64_t digit = HexValue(line[i]);
    if (size > (kMaxLength - digit) / 16) return Error::kChunkSizeOverflow;
    size = size * 16 + digit;
  }
  if (i == 0 || (i < line.size() && line[i] != ';')) return Error::kBadChunkSize;
  if (!IsChunkExtensions(line.substr(i))) return Error::kBadChunkExtension;
  if (size == 0) {
    state_ = State::kTrailerLine;
    section_bytes_ = 0;
    trailers_.clear();
  } else {
    remaining_ = size;
    state_ = State::kChunkData;
  }
  return Error::kNone;
}

Action Parser::EndRequestHead() {
  RequestHead& head = request_;
  const Header* host = nullptr;
  for (const Header& h : head.headers) {
    if (!EqualsIgnoreCase(h.name, "host")) continue;
    if (host != nullptr) return Fail(Error::kDuplicateHost);
    host = &h;
  }
  if (host == nullptr && head.version_minor == 1) return Fail(Error::kMissingHost);
  if (host != nullptr && !IsHostValue(host->value)) return Fail(Error::kBadHost);
  BodyFraming framing;
  if (Error e = ReadFraming(head.headers, head.version_minor, true, framing); e != Error::kNone) {
    return Fail(e);
  }
  head.is_connect = head.method == "CONNECT";
  if (head.is_connect && (framing.kind == BodyKind::kChunked || framing.length > 0)) {
    return Fail(Error::kBodyOnConnect);
  }
  head.framing = framing;
  head.keep_alive = KeepAlive(head.headers, head.version_minor);
  head.upgrade = head.version_minor == 1 && HasConnectionOption(head.headers, "upgrade") &&
                 OffersUpgrade(head.headers);
  head.expect_continue = head.version_minor == 1 && ExpectsContinue(head.headers);
  keep_alive_ = head.keep_alive;
  after_complete_ = head.upgrade || head.is_connect ? State::kUpgradePending
                    : keep_alive_                   ? State::kStartLine
                                                    : State::kClose;
  StartBody(framing);
  return callbacks_.OnRequestHead(std::move(request_));
}

// RFC 9112 6.3, with the request's method from ExpectResponseTo.
Action Parser::EndResponseHead() {
  ResponseHead& head = response_;
  if (answers_.empty()) return Fail(Error::kUnsolicitedResponse);
  BodyFraming framing;
  if (Error e = ReadFraming(head.headers, head.version_minor, false, framing); e != Error::kNone) {
    return Fail(e);
  }
  after_complete_ = State::kStartLine;
  if (head.status < 200 && head.status != 101) {
    head.interim = true;  // the request is still to be answered
    framing = {};
  } else {
    const Answers to = answers_.front();
    answers_.pop_front();
    if (head.status == 101 || (to == Answers::kConnect && head.status / 100 == 2)) {
      head.tunnel = true;
      framing = {};
      after_complete_ = State::kOpaque;
    } else if (to == Answers::kHead || head.status == 204 || head.status == 304) {
      framing = {};
    } else if (framing.kind == BodyKind::kNone) {
      framing = {BodyKind::kUntilClose, 0};
    }
  }
  head.framing = framing;
  head.keep_alive = !head.tunnel && framing.kind != BodyKind::kUntilClose &&
                    KeepAlive(head.headers, head.version_minor);
  if (!head.keep_alive && !head.interim && !head.tunnel) after_complete_ = State::kClose;
  StartBody(framing);
  return callbacks_.OnResponseHead(std::move(response_));
}

void Parser::StartBody(const BodyFraming& framing) {
  switch (framing.kind) {
    case BodyKind::kContentLength:
      remaining_ = framing.length;
      state_ = framing.length > 0 ? State::kBody : State::kComplete;
      break;
    case BodyKind::kChunked:
      state_ = State::kChunkSize;
      break;
    case BodyKind::kUntilClose:
      state_ = State::kUntilClose;
      break;
    case BodyKind::kNone:
      state_ = State::kComplete;
      break;
  }
}

FeedResult Parser::Finish() {
  if (state_ == State::kUntilClose) state_ = State::kComplete;
  FeedResult result;
  do {
    result = Feed({});
  } while (result.status == FeedStatus::kPaused);
  if (result.status == FeedStatus::kOk && (state_ != State::kStartLine || !line_.empty())) {
    Fail(Error::kTruncated);
    return {0, FeedStatus::kError, error_};
  }
  return result;
}

void Parser::ExpectResponseTo(std::string_view method) {
  assert(kind_ == Kind::kResponse);
  answers_.push_back(method == "HEAD"      ? Answers::kHead
                     : method == "CONNECT" ? Answers::kConnect
                                           : Answers::kOther);
}

void Parser::SwitchToOpaque() {
  assert(state_ == State::kUpgradePending);
  if (state_ == State::kUpgradePending) state_ = State::kOpaque;
}

void Parser::ContinueHttp() {
  assert(state_ == State::kUpgradePending);
  if (state_ == State::kUpgradePending) state_ = keep_alive_ ? State::kStartLine : State::kClose;
}

bool IsFieldName(std::string_view name) { return IsToken(name); }

bool IsFieldValue(std::string_view value) {
  return std::all_of(value.begin(), value.end(), IsValueChar) && TrimOws(value) == value;
}

std::string SerializeRequestHead(const RequestHead& head) {
  assert(head.version_minor == 0 || head.version_minor == 1);
  assert(IsToken(head.method) && CheckTarget(head.method, head.target) == Error::kNone);
  std::string out;
  out.append(head.method).append(" ").append(head.target).append(" HTTP/1.");
  out.append(absl::StrCat(head.version_minor, "\r\n"));
  AppendFields(out, head.headers);
  out += "\r\n";
  return out;
}

std::string SerializeResponseHead(const ResponseHead& head) {
  assert(head.version_minor == 0 || head.version_minor == 1);
  assert(head.status >= 100 && head.status <= 599 &&
         std::all_of(head.reason.begin(), head.reason.end(), IsValueChar));
  std::string out = absl::StrCat("HTTP/1.", head.version_minor, " ", head.status, " ");
  out.append(head.reason).append("\r\n");
  AppendFields(out, head.headers);
  out += "\r\n";
  return out;
}

const Header* FindHeader(const Headers& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (EqualsIgnoreCase(h.name, name)) return &h;
  }
  return nullptr;
}

std::vector<std::string> HopByHopNames(const Headers& headers) {
  std::vector<std::string> names = {"connection", "proxy-connection",  "keep-alive",
                                    "te",         "transfer-encoding", "upgrade"};
  ForEachConnectionOption(headers, [&](std::string_view option) {
    absl::AsciiStrToLower(&names.emplace_back(option));
  });
  // Sorted, not searched per option: a 64 KiB Connection list would make that quadratic.
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

void RemoveHopByHop(Headers& headers) {
  const std::vector<std::string> names = HopByHopNames(headers);
  std::erase_if(headers, [&](const Header& h) {
    std::string name = h.name;
    absl::AsciiStrToLower(&name);
    return std::binary_search(names.begin(), names.end(), name);
  });
}

std::string ChunkHeader(uint64_t size) {
  assert(size > 0);
  return absl::StrCat(absl::Hex(size), "\r\n");
}

std::string LastChunk(const Headers& trailers) {
  std::string out = "0\r\n";
  AppendFields(out, trailers);
  out += "\r\n";
  return out;
}

}  // namespace shunt::agent::http1
