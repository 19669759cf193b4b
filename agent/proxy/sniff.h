// What a captured connection speaks, from the client's first bytes (docs/capture.md, "Protocol"):
// an HTTP/1 request line's method and its space, or the HTTP/2 client preface. Conservative:
// only methods HTTP clients send (RFC 9110, PATCH, WebDAV's), so that a binary protocol whose
// first bytes happen to be capitals is not taken for HTTP.
#pragma once

#include <string_view>

namespace shunt::agent {

enum class Sniffed {
  kNeedMore,  // a prefix of something it recognises: wait for more bytes
  kHttp1,
  kHttp2,     // the 24-byte prior-knowledge preface (h2c, gRPC)
  kOther,     // opaque
};
Sniffed SniffProtocol(std::string_view first_bytes);

inline constexpr std::string_view kHttp2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

}  // namespace shunt::agent
