// What the relay takes a connection's first bytes for (agent/proxy/sniff.h).
#include "agent/proxy/sniff.h"

#include <gtest/gtest.h>

#include <string>

namespace shunt::agent {
namespace {

TEST(SniffProtocol, MethodsThePrefaceAndTheirPrefixes) {
  EXPECT_EQ(SniffProtocol("GET / HTTP/1.1\r\n"), Sniffed::kHttp1);
  EXPECT_EQ(SniffProtocol("PROPFIND /x"), Sniffed::kHttp1);
  EXPECT_EQ(SniffProtocol("DELETE "), Sniffed::kHttp1);
  EXPECT_EQ(SniffProtocol(kHttp2Preface), Sniffed::kHttp2);
  EXPECT_EQ(SniffProtocol(std::string(kHttp2Preface) + "\x00\x00\x12\x04"), Sniffed::kHttp2);
  // Cut short: wait for more (every prefix of a method and of the preface).
  for (std::string_view whole : {std::string_view("OPTIONS "), kHttp2Preface}) {
    for (size_t n = 1; n < whole.size(); ++n) {
      EXPECT_EQ(SniffProtocol(whole.substr(0, n)), Sniffed::kNeedMore) << whole.substr(0, n);
    }
  }
  EXPECT_EQ(SniffProtocol(""), Sniffed::kNeedMore);
  // Not HTTP: other protocols, lower case, a method without its space, a TLS hello.
  EXPECT_EQ(SniffProtocol("get / HTTP/1.1"), Sniffed::kOther);
  EXPECT_EQ(SniffProtocol("GETX"), Sniffed::kOther);
  EXPECT_EQ(SniffProtocol("*1\r\n$4\r\nPING\r\n"), Sniffed::kOther);
  EXPECT_EQ(SniffProtocol(std::string("\x16\x03\x01\x02\x00", 5)), Sniffed::kOther);
  EXPECT_EQ(SniffProtocol("PRI * HTTP/1.1"), Sniffed::kOther);
  EXPECT_EQ(SniffProtocol("EHLO mail\r\n"), Sniffed::kOther);
}

}  // namespace
}  // namespace shunt::agent
