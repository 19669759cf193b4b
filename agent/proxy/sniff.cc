#include "agent/proxy/sniff.h"

namespace shunt::agent {

Sniffed SniffProtocol(std::string_view first) {
  static constexpr std::string_view kMethods[] = {
      "GET ",  "HEAD ",     "POST ",  "PUT ",  "DELETE ", "CONNECT ", "OPTIONS ",   "TRACE ",
      "PATCH ", "PROPFIND ", "PROPPATCH ", "MKCOL ", "COPY ",  "MOVE ",    "LOCK ", "UNLOCK ",
      "REPORT ", "SEARCH "};
  if (first.empty()) return Sniffed::kNeedMore;
  bool prefix = false;
  for (std::string_view m : kMethods) {
    if (first.size() >= m.size() ? first.substr(0, m.size()) == m : m.substr(0, first.size()) == first) {
      if (first.size() >= m.size()) return Sniffed::kHttp1;
      prefix = true;
    }
  }
  if (first.size() >= kHttp2Preface.size()) {
    if (first.substr(0, kHttp2Preface.size()) == kHttp2Preface) return Sniffed::kHttp2;
  } else if (kHttp2Preface.substr(0, first.size()) == first) {
    prefix = true;
  }
  return prefix ? Sniffed::kNeedMore : Sniffed::kOther;
}

Sniffed SniffServerFirst(std::string_view bytes) {
  // A frame header: length (24 bits, a multiple of 6 for SETTINGS, at most 16384 by default),
  // type 0x4, flags 0 (not an ACK: nothing was sent to acknowledge), stream id 0.
  const auto at = [&](size_t i) { return static_cast<unsigned char>(bytes[i]); };
  if (bytes.size() >= 1 && at(0) != 0) return Sniffed::kOther;  // length < 65536
  if (bytes.size() >= 3) {
    const unsigned length = (at(1) << 8) | at(2);
    if (length % 6 != 0 || length > 16384) return Sniffed::kOther;
  }
  if (bytes.size() >= 4 && at(3) != 0x4) return Sniffed::kOther;
  if (bytes.size() >= 5 && at(4) != 0) return Sniffed::kOther;
  for (size_t i = 5; i < 9 && i < bytes.size(); ++i) {
    if (at(i) != 0) return Sniffed::kOther;
  }
  return bytes.size() >= 9 ? Sniffed::kHttp2 : Sniffed::kNeedMore;
}

Sniffed SniffDeclaredHttp2(std::string_view first_bytes) {
  if (first_bytes.empty()) return Sniffed::kNeedMore;
  if (first_bytes[0] != 0x16) return Sniffed::kHttp2;
  if (first_bytes.size() < 2) return Sniffed::kNeedMore;
  return first_bytes[1] == 0x03 ? Sniffed::kOther : Sniffed::kHttp2;
}

}  // namespace shunt::agent
