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

// A server's bytes before the client's: an HTTP/2 server's SETTINGS (gRPC's servers send it at
// once) leaves the decision to the client; any other greeting is a server-first protocol.
TEST(SniffServerFirst, AnHttp2ServersSettingsIsNoGreeting) {
  // gRPC C++'s server preface: SETTINGS, 4 entries (24 bytes), flags 0, stream 0.
  const std::string settings("\x00\x00\x18\x04\x00\x00\x00\x00\x00", 9);
  EXPECT_EQ(SniffServerFirst(settings), Sniffed::kHttp2);
  EXPECT_EQ(SniffServerFirst(settings + std::string(24, '\x01')), Sniffed::kHttp2);
  EXPECT_EQ(SniffServerFirst(std::string("\x00\x00\x00\x04\x00\x00\x00\x00\x00", 9)),
            Sniffed::kHttp2)
      << "an empty SETTINGS";
  for (size_t n = 1; n < settings.size(); ++n) {
    EXPECT_EQ(SniffServerFirst(settings.substr(0, n)), Sniffed::kNeedMore) << n;
  }
  EXPECT_EQ(SniffServerFirst(std::string("\x00\x00\x18\x04\x01\x00\x00\x00\x00", 9)),
            Sniffed::kOther)
      << "an ACK: nothing was sent to acknowledge";
  EXPECT_EQ(SniffServerFirst(std::string("\x00\x00\x18\x04\x00\x00\x00\x00\x01", 9)),
            Sniffed::kOther)
      << "on a stream";
  EXPECT_EQ(SniffServerFirst(std::string("\x00\x00\x07\x04", 4)), Sniffed::kOther)
      << "a length that is no list of settings";
  EXPECT_EQ(SniffServerFirst(std::string("\x00\x00\x08\x07\x00\x00\x00\x00\x00", 9)),
            Sniffed::kOther)
      << "GOAWAY";
  // Greetings: MySQL's handshake (length 0x4a, sequence 0), SMTP, Redis.
  EXPECT_EQ(SniffServerFirst(std::string("\x4a\x00\x00\x00\x0a", 5)), Sniffed::kOther);
  EXPECT_EQ(SniffServerFirst("220 mail ESMTP\r\n"), Sniffed::kOther);
  EXPECT_EQ(SniffServerFirst("-ERR\r\n"), Sniffed::kOther);
}

}  // namespace
// On a port declared HTTP/2: the workload's own TLS is opaque, everything else the session's.
TEST(SniffDeclaredHttp2, ATlsRecordIsOpaqueAndAnythingElseIsTheSessionsToJudge) {
  EXPECT_EQ(SniffDeclaredHttp2(""), Sniffed::kNeedMore);
  EXPECT_EQ(SniffDeclaredHttp2("\x16"), Sniffed::kNeedMore);
  EXPECT_EQ(SniffDeclaredHttp2(std::string("\x16\x03\x01\x02\x00\x01", 6)), Sniffed::kOther);
  EXPECT_EQ(SniffDeclaredHttp2(std::string("\x16\x03", 2)), Sniffed::kOther);
  EXPECT_EQ(SniffDeclaredHttp2(kHttp2Preface), Sniffed::kHttp2);
  EXPECT_EQ(SniffDeclaredHttp2("P"), Sniffed::kHttp2);
  EXPECT_EQ(SniffDeclaredHttp2("GET / HTTP/1.1\r\n"), Sniffed::kHttp2) << "the session refuses it";
  EXPECT_EQ(SniffDeclaredHttp2(std::string("\x16\x01", 2)), Sniffed::kHttp2);
}

}  // namespace shunt::agent
