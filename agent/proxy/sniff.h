// What a captured connection speaks, from the client's first bytes (docs/capture.md, "L7"):
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

// The server's bytes, when they come before the client's: an HTTP/2 server may send its
// connection preface (a SETTINGS frame on stream 0) without waiting for the client's (gRPC's
// servers do), which is no server-first protocol: kHttp2 for a SETTINGS frame header (then the
// client's preface decides), kNeedMore for a prefix of one, kOther for anything else (a greeting:
// MySQL, SMTP, Redis' replies).
Sniffed SniffServerFirst(std::string_view server_bytes);

// The client's first bytes on a port declared to speak HTTP/2 (appProtocol http2, grpc,
// kubernetes.io/h2c): a TLS record (handshake, version 3.x: the workload's own TLS, gRPC over
// TLS) is kOther, to be passed on opaque; anything else is the HTTP/2 session's to judge
// (kHttp2); kNeedMore for the first byte of a TLS record alone.
Sniffed SniffDeclaredHttp2(std::string_view first_bytes);

inline constexpr std::string_view kHttp2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

}  // namespace shunt::agent
