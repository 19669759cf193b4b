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

}  // namespace shunt::agent
