// The HTTP/1.1 framer of the agent's transparent proxy: finds where each request and response
// begins and ends in a connection's bytes (RFC 9112), so that the proxy forwards exactly the
// messages the server will see. A proxy that frames a byte stream differently from the server
// behind it lets a client hide a second request inside the first one (request smuggling), so the
// framer is strict: whatever two HTTP implementations could disagree on is an error, not a guess.
//
// Rejected, with the reason:
//  - Lines not ending in CRLF (bare LF), a CR anywhere else (bare CR), NUL and other controls in
//    the request line, field names and values: parsers differ on where such a line ends.
//  - Content-Length together with Transfer-Encoding; more than one Content-Length, also as a list
//    or with equal values; anything but digits in it (signs, inner spaces), or above 2^63-1.
//  - Transfer-Encoding on HTTP/1.0; in a request, one whose last coding is not chunked (400), that
//    names chunked twice, or a coding we do not know (501); elements must be bare tokens. In a
//    response a final coding other than chunked means the body lasts until the close (RFC 9112
//    6.3).
//  - A space or tab before the colon, a field line starting with one (obs-fold), a field name
//    that is not a token, a method that is not a token.
//  - Chunk sizes that are not plain hex (no sign, space, "0x"), or above 2^63-1; chunk data not
//    followed by CRLF. Chunk extensions are allowed, strictly: `;name` or `;name=token` or
//    `;name="quoted"`, no whitespace anywhere, bounded by Limits::max_chunk_line.
//  - HTTP/1.1 requests without Host, any request with two; a Host with characters outside
//    unreserved / "%" / ":" / "[" / "]" (no list, userinfo or path in it).
//  - Request-targets with bytes outside VCHAR or with a fragment ("#"); a target whose form does
//    not fit the method (authority-form is for CONNECT and only for it, "*" for OPTIONS).
//  - CONNECT requests with a body (peers disagree on whether the tunnel starts before it).
//  - Framing and routing fields in trailers (Content-Length, Transfer-Encoding, Host, ...).
//  - Versions other than HTTP/1.0 and HTTP/1.1 (505); more than max_leading_empty_lines CRLFs
//    before a request line (RFC 9112 2.2 asks servers to ignore at least one).
//  - Heads and trailers over the Limits (431), start lines over it (414).
// Not checked here: that an absolute-form target's authority matches Host (RFC 9112 3.2.2: the
// target wins, so route by it), and which Upgrade or Expect values are acceptable (policy).
//
// Parser is push-based and incremental: Feed() takes whatever a socket read returned, any split,
// and calls ParserCallbacks as it goes; body data is passed as slices of the caller's buffer
// (never copied), lines cut by a read are carried over in one buffer bounded by Limits. A callback
// can pause the parser (e.g. to decide a policy on a head); Feed() then says how far it consumed
// and the caller feeds the rest later. One parser reads one direction of one connection, many
// messages in a row (keep-alive, pipelining) until one that ends the connection (keep_alive
// false: nothing after it is framed, the server will not read it), a tunnel (Upgrade, CONNECT)
// or an error. Not thread-safe; one owner, the connection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace shunt::agent::http1 {

struct Header {
  std::string name;   // as received (case kept for forwarding; compare case-insensitively)
  std::string value;  // without the optional whitespace around it
};
using Headers = std::vector<Header>;

enum class BodyKind : uint8_t {
  kNone,           // no body: no framing fields, or one the method/status rules out
  kContentLength,  // exactly BodyFraming::length bytes (which may be 0)
  kChunked,        // chunked; the parser passes on the decoded data
  kUntilClose,     // responses only: until the server closes (ends with Parser::Finish)
};
struct BodyFraming {
  BodyKind kind = BodyKind::kNone;
  uint64_t length = 0;  // for kContentLength
};

struct RequestHead {
  std::string method;     // case-sensitive token
  std::string target;     // as received
  int version_minor = 1;  // HTTP/1.<minor>: 0 or 1
  Headers headers;
  BodyFraming framing;
  bool keep_alive = true;        // RFC 9112 9.3: Connection close/keep-alive, 1.0 closes
  bool expect_continue = false;  // Expect: 100-continue on HTTP/1.1
  bool upgrade = false;          // Connection: upgrade + Upgrade on HTTP/1.1
  bool is_connect = false;
};

struct ResponseHead {
  int version_minor = 1;
  int status = 0;  // 100..599
  std::string reason;
  Headers headers;
  BodyFraming framing;
  bool keep_alive = true;
  bool interim = false;  // 1xx other than 101: another head follows, for the same request
  bool tunnel = false;   // 101, or 2xx to CONNECT: after this head the bytes are opaque
};

// Why a message was refused. Names are stable (logs, metrics labels); ErrorStatus() is what a
// server answers to a request with that error (a proxy answers 502 to a response it cannot frame).
enum class Error : uint8_t {
  kNone,
  kBareCr,
  kBareLf,
  kTooManyEmptyLines,
  kStartLineTooLong,
  kBadRequestLine,
  kBadMethod,
  kBadTarget,
  kBadVersion,
  kUnsupportedVersion,
  kBadStatusLine,
  kHeaderSectionTooLarge,
  kTooManyHeaders,
  kObsFold,
  kMissingColon,
  kWhitespaceBeforeColon,
  kBadHeaderName,
  kBadHeaderValue,
  kMissingHost,
  kDuplicateHost,
  kBadHost,
  kContentLengthWithTransferEncoding,
  kDuplicateContentLength,
  kBadContentLength,
  kContentLengthOverflow,
  kTransferEncodingOnHttp10,
  kBadTransferEncoding,
  kChunkedNotFinal,
  kUnknownTransferCoding,
  kBodyOnConnect,
  kBadChunkSize,
  kChunkSizeOverflow,
  kChunkLineTooLong,
  kBadChunkExtension,
  kMissingChunkCrlf,
  kTrailersTooLarge,
  kForbiddenTrailer,
  kUnsolicitedResponse,
  kTruncated,
};
std::string_view ErrorName(Error error);  // "bad_chunk_size"
int ErrorStatus(Error error);             // 400, 414, 431, 501, 505 (502: unsolicited response)
absl::Status ErrorToStatus(Error error);  // InvalidArgument("http1: bad_chunk_size"), OK for kNone

struct Limits {
  size_t max_start_line = 8 * 1024;      // request or status line, CRLF included
  size_t max_header_bytes = 64 * 1024;   // the field lines of a head and its empty line
  size_t max_headers = 100;              // field lines of a head, and of trailers
  size_t max_chunk_line = 1024;          // chunk size and extensions, CRLF included
  size_t max_trailer_bytes = 16 * 1024;  // the trailer field lines and the final empty line
  size_t max_leading_empty_lines = 4;    // CRLFs ignored before a request line
};

// What a callback wants next: kPause makes Feed() return right after this event.
enum class Action : uint8_t { kContinue, kPause };

// Events of one direction, in order: head, body slices, trailers (chunked only, when there are
// some), message complete; then the next message. Interim responses (1xx) are messages of their
// own: head then complete. Heads and trailers are handed over (move from them); body slices point
// into the buffer given to Feed() and are valid during the call.
class ParserCallbacks {
 public:
  virtual ~ParserCallbacks() = default;
  virtual Action OnRequestHead(RequestHead&& head) = 0;    // request parsers
  virtual Action OnResponseHead(ResponseHead&& head) = 0;  // response parsers
  virtual Action OnBody(std::string_view data) = 0;
  virtual Action OnTrailers(Headers&& trailers) = 0;
  virtual Action OnMessageComplete() = 0;
};

enum class FeedStatus : uint8_t {
  kOk,              // all of the data consumed; feed more (or Finish() at the close)
  kPaused,          // a callback paused: feed data.substr(consumed) when ready (even if empty:
                    // an event may be pending, e.g. the completion of a body-less message)
  kUpgradePending,  // requests: an Upgrade or CONNECT request is complete; the response decides
                    // (Parser::SwitchToOpaque or ContinueHttp); nothing more consumed until then
  kOpaque,          // the connection is a tunnel from data.substr(consumed) on: relay it as is
  kClose,           // the message that completed was the connection's last (keep_alive false):
                    // nothing after it is framed (the server will not read it); close once done
  kError,           // see `error`; the connection cannot be used any more (answer, then close)
};
struct FeedResult {
  size_t consumed = 0;  // bytes of this call's data the parser took (delivered or buffered)
  FeedStatus status = FeedStatus::kOk;
  Error error = Error::kNone;
};

class Parser {
 public:
  enum class Kind : uint8_t { kRequest, kResponse };
  // `callbacks` must outlive the parser.
  Parser(Kind kind, ParserCallbacks& callbacks, Limits limits = {});
  Parser(const Parser&) = delete;
  Parser& operator=(const Parser&) = delete;

  FeedResult Feed(std::string_view data);
  // The peer closed its side. Completes a body that lasts until the close; any other message
  // left incomplete (or a partial line) is kTruncated. Pauses are ignored: nothing is left to
  // hold back. Otherwise the status is kOk between messages, or the kClose / kOpaque /
  // kUpgradePending the connection was in.
  FeedResult Finish();

  // Response parsers: the method of the next request sent on this connection, in order (one call
  // per request: pipelined requests queue; the caller bounds how many it sends ahead). It
  // decides the framing of the response: HEAD has none, 2xx to CONNECT opens a tunnel. A
  // response with no request left to answer is kUnsolicitedResponse.
  void ExpectResponseTo(std::string_view method);

  // Request parsers, after kUpgradePending: the server switched (101 or 2xx to CONNECT): the
  // rest of the connection is opaque; or it refused, and the next request follows.
  void SwitchToOpaque();
  void ContinueHttp();

  Error error() const { return error_; }

 private:
  enum class State : uint8_t {
    kStartLine,
    kHeaderLine,
    kBody,
    kChunkSize,
    kChunkData,
    kChunkDataCr,
    kChunkDataLf,
    kTrailerLine,
    kUntilClose,
    kComplete,
    kUpgradePending,
    kOpaque,
    kClose,
    kError,
  };
  enum class Answers : uint8_t { kHead, kConnect, kOther };  // what a response is to

  bool TakeLine(std::string_view data, size_t& pos, std::string_view& line);
  Action OnLine(std::string_view content);  // a complete line without its CRLF
  Action Fail(Error error);
  Error ParseRequestLine(std::string_view line);
  Error ParseStatusLine(std::string_view line);
  Error ParseFieldLine(std::string_view line, Headers& into);
  Error ParseChunkLine(std::string_view line);
  Action EndRequestHead();
  Action EndResponseHead();
  void StartBody(const BodyFraming& framing);

  const Kind kind_;
  ParserCallbacks& callbacks_;
  const Limits limits_;
  State state_ = State::kStartLine;
  State after_complete_ = State::kStartLine;
  Error error_ = Error::kNone;
  std::string line_;          // a line cut by the end of a Feed(), up to the current line limit
  size_t section_bytes_ = 0;  // of the head's field lines or the trailers so far
  size_t empty_lines_ = 0;
  bool keep_alive_ = true;  // of the current message
  uint64_t remaining_ = 0;  // of a Content-Length body or of a chunk
  RequestHead request_;
  ResponseHead response_;
  Headers trailers_;
  std::deque<Answers> answers_;  // responses: one per ExpectResponseTo not yet answered
};

// The head as the proxy forwards it: "METHOD target HTTP/1.x", then "Name: value" lines in
// order, then the empty line. The headers must be valid (IsFieldName/IsFieldValue) — the parser's
// are; check any the caller adds.
std::string SerializeRequestHead(const RequestHead& head);
std::string SerializeResponseHead(const ResponseHead& head);  // "HTTP/1.x 200 reason"
bool IsFieldName(std::string_view name);
bool IsFieldValue(std::string_view value);

// The first header named `name` (case-insensitively), or null.
const Header* FindHeader(const Headers& headers, std::string_view name);
// Lower-case names (sorted) that do not cross a proxy: Connection, Proxy-Connection, Keep-Alive,
// TE, Transfer-Encoding, Upgrade, and those the Connection header nominates. The caller re-frames
// (Transfer-Encoding, Content-Length) and re-adds what it forwards on purpose (Upgrade).
std::vector<std::string> HopByHopNames(const Headers& headers);
void RemoveHopByHop(Headers& headers);

// Re-chunking a decoded body: ChunkHeader(n), the n bytes, kChunkEnd; and at the end
// LastChunk(trailers).
std::string ChunkHeader(uint64_t size);  // "1a\r\n"; size > 0 (0 is the last chunk)
inline constexpr std::string_view kChunkEnd = "\r\n";
std::string LastChunk(const Headers& trailers = {});  // "0\r\n", trailer lines, "\r\n"

}  // namespace shunt::agent::http1
