// The HTTP/1.1 framer (agent/proxy/http1/framer.h): what it accepts, what it refuses and why,
// and that any split of the input (down to single bytes) and any pause give the same events.
#include <gtest/gtest.h>

#include <algorithm>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "agent/proxy/http1/event_log.h"
#include "agent/proxy/http1/framer.h"

namespace shunt::agent::http1 {
namespace {

using Events = std::vector<std::string>;
using std::string_literals::operator""s;  // inputs with NULs in them

using event_log::Feeding;
using event_log::Fields;
using Recorder = event_log::EventLog;

// Feeds `input` as a connection would and returns the events, ended by what stopped it.
Events Drive(Parser::Kind kind, std::string_view input, const Feeding& run = {}) {
  return event_log::Drive(kind, input, run, [](bool ok, const char* what) { EXPECT_TRUE(ok) << what; });
}

// Every way of feeding gives the events of feeding all at once: single bytes, every two-piece
// split, small pieces, and a pause after every event.
void ExpectSameEventsHoweverFed(Parser::Kind kind, std::string_view input, const Feeding& base) {
  const Events whole = Drive(kind, input, base);
  Feeding run = base;
  run.piece = 1;
  EXPECT_EQ(Drive(kind, input, run), whole) << "byte at a time";
  run.piece = 7;
  EXPECT_EQ(Drive(kind, input, run), whole) << "7 bytes at a time";
  run.piece = 0;
  run.pause = true;
  EXPECT_EQ(Drive(kind, input, run), whole) << "pausing after every event";
  run.pause = false;
  // Every cut of small inputs; a few hundred spread over the large ones (quadratic otherwise).
  const size_t step = std::max<size_t>(1, input.size() / 512);
  for (size_t cut = 1; cut < input.size(); cut += step) {
    run.cut = cut;
    EXPECT_EQ(Drive(kind, input, run), whole) << "cut at " << cut;
  }
}

// --- Valid requests -------------------------------------------------------------------------

struct Valid {
  std::string name;
  std::string input;
  Events events;
};
void PrintTo(const Valid& c, std::ostream* os) { *os << c.name; }

class ValidRequest : public testing::TestWithParam<Valid> {};

TEST_P(ValidRequest, GivesItsEventsHoweverFed) {
  EXPECT_EQ(Drive(Parser::Kind::kRequest, GetParam().input), GetParam().events);
  ExpectSameEventsHoweverFed(Parser::Kind::kRequest, GetParam().input, {});
}

INSTANTIATE_TEST_SUITE_P(
    Http1Framer, ValidRequest,
    testing::Values(
        Valid{"GetWithoutBody",
              "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
              {"req GET /index.html?q=1 1.1 none ka {Host: example.com}", "complete"}},
        Valid{"PostWithContentLength",
              "POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
              {"req POST /submit 1.1 cl:5 ka {Host: a, Content-Length: 5}", "body:hello",
               "complete"}},
        Valid{"ZeroContentLength",
              "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
              {"req POST / 1.1 cl:0 ka {Host: a, Content-Length: 0}", "complete"}},
        Valid{"ChunkedWithExtensionsAndTrailers",
              "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
              "5;name=value\r\nhello\r\n"
              "6;q=\"a \\\"b\\\"\";flag\r\n world\r\n"
              "0\r\nChecksum: abc\r\nX-Done:1\r\n\r\n",
              {"req POST /up 1.1 chunked ka {Host: a, Transfer-Encoding: chunked}",
               "body:hello world", "trailers:{Checksum: abc, X-Done: 1}", "complete"}},
        Valid{"ChunkedWithUpperCaseHexAndLeadingZeros",
              "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"
              "000A\r\n0123456789\r\n0\r\n\r\n",
              {"req POST / 1.1 chunked ka {Host: a, Transfer-Encoding: Chunked}", "body:0123456789",
               "complete"}},
        Valid{"GzipThenChunked",
              "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
              "Transfer-Encoding: chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n",
              {"req POST / 1.1 chunked ka {Host: a, Transfer-Encoding: gzip, "
               "Transfer-Encoding: chunked}",
               "body:zz", "complete"}},
        Valid{"ThreePipelinedRequests",
              "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
              "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
              "GET /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
              {"req GET /a 1.1 none ka {Host: h}", "complete",
               "req POST /b 1.1 cl:3 ka {Host: h, Content-Length: 3}", "body:abc", "complete",
               "req GET /c 1.1 chunked ka {Host: h, Transfer-Encoding: chunked}", "body:x",
               "complete"}},
        Valid{"Http10ClosesByDefault",
              "GET / HTTP/1.0\r\n\r\nGET /ignored HTTP/1.0\r\n\r\n",
              {"req GET / 1.0 none close {}", "complete", "close:GET /ignored HTTP/1.0\r\n\r\n"}},
        Valid{"Http10KeepAlive",
              "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
              {"req GET / 1.0 none ka {Connection: Keep-Alive}", "complete"}},
        Valid{"ConnectionCloseInAList",
              "GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n",
              {"req GET / 1.1 none close {Host: a, Connection: foo, close}", "complete", "close:"}},
        Valid{"LeadingEmptyLinesAreIgnored",
              "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
              {"req GET / 1.1 none ka {Host: a}", "complete"}},
        Valid{"EmptyLinesBetweenPipelinedRequests",
              "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx\r\n"
              "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
              {"req POST / 1.1 cl:1 ka {Host: a, Content-Length: 1}", "body:x", "complete",
               "req GET / 1.1 none ka {Host: a}", "complete"}},
        Valid{"ExpectContinue",
              "PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\nok",
              {"req PUT /f 1.1 cl:2 ka expect {Host: a, Expect: 100-Continue, Content-Length: 2}",
               "body:ok", "complete"}},
        Valid{
            "ValuesLoseTheirOptionalWhitespace",
            "GET / HTTP/1.1\r\nHost:a\r\nX-A: \t v  w \t\r\nX-Empty:\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
            {"req GET / 1.1 none ka {Host: a, X-A: v  w, X-Empty: , X-Obs: caf\xc3\xa9}",
             "complete"}},
        Valid{"HeaderNamesKeepTheirCase",
              "POST / HTTP/1.1\r\nhOsT: a\r\ncontent-LENGTH: 1\r\n\r\nz",
              {"req POST / 1.1 cl:1 ka {hOsT: a, content-LENGTH: 1}", "body:z", "complete"}},
        Valid{"AbsoluteFormTarget",
              "GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
              {"req GET http://a.example/x 1.1 none ka {Host: a.example}", "complete"}},
        Valid{"AsteriskForOptions",
              "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
              {"req OPTIONS * 1.1 none ka {Host: a}", "complete"}},
        Valid{"ExtensionMethod",
              "PURGE /x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
              {"req PURGE /x 1.1 none ka {Host: [::1]:8080}", "complete"}},
        Valid{"UpgradeSwitchesToOpaque",
              "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\n"
              "Upgrade: websocket\r\n\r\n\x81\x05hello",
              {"req GET /ws 1.1 none ka upgrade {Host: a, Connection: keep-alive, Upgrade, "
               "Upgrade: websocket}",
               "complete", "upgrade-pending", "opaque:\x81\x05hello"}},
        Valid{"UpgradeWithABodyReadsTheBodyFirst",
              "POST /u HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n"
              "Content-Length: 2\r\n\r\nhiRAW",
              {"req POST /u 1.1 cl:2 ka upgrade {Host: a, Connection: upgrade, Upgrade: x, "
               "Content-Length: 2}",
               "body:hi", "complete", "upgrade-pending", "opaque:RAW"}},
        Valid{"UpgradeWithoutAProtocolIsNotAnUpgrade",
              "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: , \r\n\r\n"
              "GET /next HTTP/1.1\r\nHost: a\r\n\r\n",
              {"req GET / 1.1 none ka {Host: a, Connection: upgrade, Upgrade: ,}", "complete",
               "req GET /next 1.1 none ka {Host: a}", "complete"}},
        Valid{"UpgradeOnHttp10IsIgnored",
              "GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
              {"req GET / 1.0 none close {Connection: upgrade, Upgrade: x}", "complete", "close:"}},
        Valid{"ConnectSwitchesToOpaque",
              "CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n\x00\x01pg"s,
              {"req CONNECT db.internal:5432 1.1 none ka connect {Host: db.internal:5432}",
               "complete", "upgrade-pending", "opaque:\x00\x01pg"s}}),
    [](const testing::TestParamInfo<Valid>& info) { return info.param.name; });

// --- Rejected requests ----------------------------------------------------------------------

struct Rejected {
  std::string name;
  std::string input;
  Error error;
  int status;
};
void PrintTo(const Rejected& c, std::ostream* os) { *os << c.name; }

class RejectedRequest : public testing::TestWithParam<Rejected> {};

TEST_P(RejectedRequest, IsRefusedWithItsErrorHoweverFed) {
  const Rejected& c = GetParam();
  const Events events = Drive(Parser::Kind::kRequest, c.input);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "error:" + std::string(ErrorName(c.error)));
  EXPECT_EQ(ErrorStatus(c.error), c.status);
  ExpectSameEventsHoweverFed(Parser::Kind::kRequest, c.input, {});
}

constexpr char kPost[] = "POST / HTTP/1.1\r\nHost: a\r\n";
constexpr char kChunked[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
constexpr char kGet[] = "GET / HTTP/1.1\r\nHost: a\r\n";

std::string S(std::string_view a, std::string_view b) { return std::string(a).append(b); }

INSTANTIATE_TEST_SUITE_P(
    Http1Framer, RejectedRequest,
    testing::Values(
        // Content-Length and Transfer-Encoding: the classic CL.TE / TE.CL smuggling.
        Rejected{"ContentLengthWithTransferEncoding",
                 S(kPost, "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
                 Error::kContentLengthWithTransferEncoding, 400},
        Rejected{"TransferEncodingWithContentLength",
                 S(kPost, "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"),
                 Error::kContentLengthWithTransferEncoding, 400},
        Rejected{"TransferEncodingOnHttp10",
                 "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                 Error::kTransferEncodingOnHttp10, 400},
        Rejected{"TransferEncodingNotEndingInChunked", S(kPost, "Transfer-Encoding: gzip\r\n\r\n"),
                 Error::kChunkedNotFinal, 400},
        Rejected{"ChunkedBeforeAnotherCoding", S(kPost, "Transfer-Encoding: chunked, gzip\r\n\r\n"),
                 Error::kChunkedNotFinal, 400},
        Rejected{"ChunkedThenGzipOnTwoLines",
                 S(kPost, "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"),
                 Error::kChunkedNotFinal, 400},
        Rejected{"ChunkedTwice", S(kPost, "Transfer-Encoding: chunked, chunked\r\n\r\n"),
                 Error::kBadTransferEncoding, 400},
        Rejected{"ChunkedTwiceOnTwoLines",
                 S(kPost, "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
                 Error::kBadTransferEncoding, 400},
        Rejected{"XChunkedIsNotChunked", S(kPost, "Transfer-Encoding: xchunked\r\n\r\n"),
                 Error::kChunkedNotFinal, 400},
        Rejected{"UnknownTransferCoding", S(kPost, "Transfer-Encoding: foo, chunked\r\n\r\n"),
                 Error::kUnknownTransferCoding, 501},
        Rejected{"IdentityTransferCoding", S(kPost, "Transfer-Encoding: identity, chunked\r\n\r\n"),
                 Error::kUnknownTransferCoding, 501},
        Rejected{"TransferCodingWithParameter", S(kPost, "Transfer-Encoding: chunked;q=1\r\n\r\n"),
                 Error::kBadTransferEncoding, 400},
        Rejected{"TransferEncodingWithAnEmptyElement",
                 S(kPost, "Transfer-Encoding: , chunked\r\n\r\n"), Error::kBadTransferEncoding,
                 400},
        Rejected{"EmptyTransferEncoding", S(kPost, "Transfer-Encoding:\r\n\r\n"),
                 Error::kBadTransferEncoding, 400},
        Rejected{"TransferEncodingWithVerticalTab",
                 S(kPost, "Transfer-Encoding: \vchunked\r\n\r\n"), Error::kBadHeaderValue, 400},
        // Content-Length.
        Rejected{"TwoContentLengths", S(kPost, "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
                 Error::kDuplicateContentLength, 400},
        Rejected{"TwoEqualContentLengths",
                 S(kPost, "Content-Length: 2\r\nContent-Length: 2\r\n\r\nab"),
                 Error::kDuplicateContentLength, 400},
        Rejected{"ListValuedContentLength", S(kPost, "Content-Length: 2, 2\r\n\r\nab"),
                 Error::kDuplicateContentLength, 400},
        Rejected{"ContentLengthWithPlusSign", S(kPost, "Content-Length: +2\r\n\r\nab"),
                 Error::kBadContentLength, 400},
        Rejected{"NegativeContentLength", S(kPost, "Content-Length: -2\r\n\r\nab"),
                 Error::kBadContentLength, 400},
        Rejected{"ContentLengthWithInnerSpace", S(kPost, "Content-Length: 1 2\r\n\r\nab"),
                 Error::kBadContentLength, 400},
        Rejected{"HexContentLength", S(kPost, "Content-Length: 0x2\r\n\r\nab"),
                 Error::kBadContentLength, 400},
        Rejected{"EmptyContentLength", S(kPost, "Content-Length: \r\n\r\n"),
                 Error::kBadContentLength, 400},
        Rejected{"ContentLengthOverflowingUint64",
                 S(kPost, "Content-Length: 99999999999999999999\r\n\r\n"),
                 Error::kContentLengthOverflow, 400},
        Rejected{"ContentLengthAboveInt64", S(kPost, "Content-Length: 9223372036854775808\r\n\r\n"),
                 Error::kContentLengthOverflow, 400},
        // Field lines.
        Rejected{"SpaceBeforeColon", S(kPost, "Content-Length : 2\r\n\r\nab"),
                 Error::kWhitespaceBeforeColon, 400},
        Rejected{"TabBeforeColon", S(kPost, "Transfer-Encoding\t: chunked\r\n\r\n"),
                 Error::kWhitespaceBeforeColon, 400},
        Rejected{"ObsFold", S(kGet, "X-A: one\r\n two\r\n\r\n"), Error::kObsFold, 400},
        Rejected{"ObsFoldWithTab", S(kGet, "X-A: one\r\n\ttwo\r\n\r\n"), Error::kObsFold, 400},
        Rejected{"FieldLineStartingWithSpaceAfterRequestLine", "GET / HTTP/1.1\r\n Host: a\r\n\r\n",
                 Error::kObsFold, 400},
        Rejected{"MissingColon", S(kGet, "X-A one\r\n\r\n"), Error::kMissingColon, 400},
        Rejected{"EmptyHeaderName", S(kGet, ": v\r\n\r\n"), Error::kBadHeaderName, 400},
        Rejected{"SpaceInHeaderName", S(kGet, "X A: v\r\n\r\n"), Error::kBadHeaderName, 400},
        Rejected{"SeparatorInHeaderName", S(kGet, "X(A): v\r\n\r\n"), Error::kBadHeaderName, 400},
        Rejected{"NulInHeaderName", S(kGet, "X\0A: v\r\n\r\n"s), Error::kBadHeaderName, 400},
        Rejected{"NulInHeaderValue", S(kGet, "X-A: a\0b\r\n\r\n"s), Error::kBadHeaderValue, 400},
        Rejected{"ControlInHeaderValue",
                 S(kGet,
                   "X-A: a\x01"
                   "b\r\n\r\n"),
                 Error::kBadHeaderValue, 400},
        Rejected{"DelInHeaderValue", S(kGet, "X-A: a\x7f\r\n\r\n"), Error::kBadHeaderValue, 400},
        // Line ends.
        Rejected{"BareCrInHeaderValue", S(kGet, "X-A: a\rb\r\n\r\n"), Error::kBareCr, 400},
        Rejected{"BareCrInRequestLine", "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBareCr, 400},
        Rejected{"BareLfEndsAFieldLine", "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", Error::kBareLf,
                 400},
        Rejected{"BareLfEndsTheHead", "GET / HTTP/1.1\r\nHost: a\r\n\n", Error::kBareLf, 400},
        Rejected{"BareLfEndsTheRequestLine", "GET / HTTP/1.1\nHost: a\r\n\r\n", Error::kBareLf,
                 400},
        Rejected{"BareLfAsLeadingEmptyLine", "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBareLf,
                 400},
        Rejected{"TooManyLeadingEmptyLines", "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n",
                 Error::kTooManyEmptyLines, 400},
        // Request line.
        Rejected{"SeparatorInMethod", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadMethod, 400},
        Rejected{"NulInMethod", "G\0T / HTTP/1.1\r\nHost: a\r\n\r\n"s, Error::kBadMethod, 400},
        Rejected{"RequestLineWithoutVersion", "GET /\r\nHost: a\r\n\r\n", Error::kBadRequestLine,
                 400},
        Rejected{"RequestLineStartingWithSpace", " GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                 Error::kBadRequestLine, 400},
        Rejected{"TwoSpacesAfterMethod", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadTarget,
                 400},
        Rejected{"SpaceInTarget", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadTarget, 400},
        Rejected{"TabInTarget", "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadTarget, 400},
        Rejected{"NulInTarget", "GET /a\0 HTTP/1.1\r\nHost: a\r\n\r\n"s, Error::kBadTarget, 400},
        Rejected{"HighByteInTarget", "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
                 Error::kBadTarget, 400},
        Rejected{"FragmentInTarget", "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadTarget,
                 400},
        Rejected{"RelativeTarget", "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadTarget, 400},
        Rejected{"AsteriskForGet", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadTarget, 400},
        Rejected{"OriginFormForConnect", "CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", Error::kBadTarget,
                 400},
        Rejected{"ConnectWithoutPort", "CONNECT a.example HTTP/1.1\r\nHost: a\r\n\r\n",
                 Error::kBadTarget, 400},
        Rejected{"ConnectWithABody",
                 "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 3\r\n\r\nabc",
                 Error::kBodyOnConnect, 400},
        Rejected{"ConnectChunked",
                 "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nTransfer-Encoding: chunked\r\n\r\n",
                 Error::kBodyOnConnect, 400},
        Rejected{"Http2Version", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", Error::kUnsupportedVersion,
                 505},
        Rejected{"Http12Version", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", Error::kUnsupportedVersion,
                 505},
        Rejected{"Http09Version", "GET / HTTP/0.9\r\n\r\n", Error::kUnsupportedVersion, 505},
        Rejected{"LowerCaseVersion", "GET / http/1.1\r\nHost: a\r\n\r\n", Error::kBadVersion, 400},
        Rejected{"TwoDigitMinorVersion", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", Error::kBadVersion,
                 400},
        Rejected{"TrailingSpaceAfterVersion", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
                 Error::kBadVersion, 400},
        // Host.
        Rejected{"MissingHostOnHttp11", "GET / HTTP/1.1\r\nX: y\r\n\r\n", Error::kMissingHost, 400},
        Rejected{"DuplicateHost", "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
                 Error::kDuplicateHost, 400},
        Rejected{"DuplicateHostOnHttp10", "GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
                 Error::kDuplicateHost, 400},
        Rejected{"ListValuedHost", "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", Error::kBadHost, 400},
        Rejected{"HostWithUserinfo", "GET / HTTP/1.1\r\nHost: u@b\r\n\r\n", Error::kBadHost, 400},
        Rejected{"HostWithPath", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", Error::kBadHost, 400},
        // Chunked framing.
        Rejected{"NonHexChunkSize", S(kChunked, "g\r\n\r\n"), Error::kBadChunkSize, 400},
        Rejected{"EmptyChunkSize", S(kChunked, "\r\nabc\r\n"), Error::kBadChunkSize, 400},
        Rejected{"ChunkSizeWith0x", S(kChunked, "0x5\r\nhello\r\n0\r\n\r\n"), Error::kBadChunkSize,
                 400},
        Rejected{"NegativeChunkSize", S(kChunked, "-5\r\nhello\r\n0\r\n\r\n"), Error::kBadChunkSize,
                 400},
        Rejected{"ChunkSizeWithTrailingSpace", S(kChunked, "5 \r\nhello\r\n0\r\n\r\n"),
                 Error::kBadChunkSize, 400},
        Rejected{"ChunkSizeWithLeadingSpace", S(kChunked, " 5\r\nhello\r\n0\r\n\r\n"),
                 Error::kBadChunkSize, 400},
        Rejected{"ChunkSizeOverflowingUint64", S(kChunked, "10000000000000000\r\n"),
                 Error::kChunkSizeOverflow, 400},
        Rejected{"ChunkSizeAboveInt64", S(kChunked, "8000000000000000\r\n"),
                 Error::kChunkSizeOverflow, 400},
        Rejected{"ChunkDataWithoutCrlf", S(kChunked, "5\r\nhelloXX0\r\n\r\n"),
                 Error::kMissingChunkCrlf, 400},
        Rejected{"ChunkDataEndedByBareLf", S(kChunked, "5\r\nhello\n0\r\n\r\n"),
                 Error::kMissingChunkCrlf, 400},
        Rejected{"ChunkDataLongerThanItsSize", S(kChunked, "2\r\nhello\r\n0\r\n\r\n"),
                 Error::kMissingChunkCrlf, 400},
        Rejected{"ChunkSizeLineEndedByBareLf", S(kChunked, "5\nhello\r\n0\r\n\r\n"), Error::kBareLf,
                 400},
        Rejected{"BareLfInChunkExtension", S(kChunked, "5;a\nb\r\nhello\r\n0\r\n\r\n"),
                 Error::kBareLf, 400},
        Rejected{"BareCrInChunkExtension", S(kChunked, "5;a\rb\r\nhello\r\n0\r\n\r\n"),
                 Error::kBareCr, 400},
        Rejected{"ChunkExtensionWithoutName", S(kChunked, "5;\r\nhello\r\n0\r\n\r\n"),
                 Error::kBadChunkExtension, 400},
        Rejected{"ChunkExtensionWithSpace", S(kChunked, "5; a=b\r\nhello\r\n0\r\n\r\n"),
                 Error::kBadChunkExtension, 400},
        Rejected{"ChunkExtensionWithoutValue", S(kChunked, "5;a=\r\nhello\r\n0\r\n\r\n"),
                 Error::kBadChunkExtension, 400},
        Rejected{"ChunkExtensionWithUnterminatedQuote",
                 S(kChunked, "5;a=\"b\r\nhello\r\n0\r\n\r\n"), Error::kBadChunkExtension, 400},
        Rejected{"ChunkExtensionWithControlCharacter",
                 S(kChunked, "5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n"), Error::kBadChunkExtension, 400},
        Rejected{"ChunkLineTooLong", S(kChunked, "5;a=" + std::string(1100, 'b') + "\r\n"),
                 Error::kChunkLineTooLong, 400},
        // Trailers.
        Rejected{"ContentLengthInTrailers", S(kChunked, "0\r\nContent-Length: 5\r\n\r\n"),
                 Error::kForbiddenTrailer, 400},
        Rejected{"TransferEncodingInTrailers",
                 S(kChunked, "0\r\nTransfer-Encoding: chunked\r\n\r\n"), Error::kForbiddenTrailer,
                 400},
        Rejected{"HostInTrailers", S(kChunked, "0\r\nHost: b\r\n\r\n"), Error::kForbiddenTrailer,
                 400},
        Rejected{"ObsFoldInTrailers", S(kChunked, "0\r\nX: a\r\n b\r\n\r\n"), Error::kObsFold, 400},
        Rejected{"BareLfInTrailers", S(kChunked, "0\r\nX: a\n\r\n"), Error::kBareLf, 400},
        Rejected{"TrailersTooLarge",
                 S(kChunked, "0\r\nX: " + std::string(17 * 1024, 'v') + "\r\n\r\n"),
                 Error::kTrailersTooLarge, 431},
        // Limits (the defaults).
        Rejected{"RequestLineTooLong",
                 "GET /" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: a\r\n\r\n",
                 Error::kStartLineTooLong, 414},
        Rejected{"HeaderSectionTooLarge", S(kGet, "X: " + std::string(65 * 1024, 'v') + "\r\n\r\n"),
                 Error::kHeaderSectionTooLarge, 431},
        Rejected{"TooManyHeaders",
                 [] {
                   std::string s = kGet;
                   for (int i = 0; i < 100; ++i) s += "X-" + std::to_string(i) + ": v\r\n";
                   return s + "\r\n";
                 }(),
                 Error::kTooManyHeaders, 431}),
    [](const testing::TestParamInfo<Rejected>& info) { return info.param.name; });

// --- Responses ------------------------------------------------------------------------------

struct Response {
  std::string name;
  std::vector<std::string> methods;  // of the requests they answer
  std::string input;
  Events events;
};
void PrintTo(const Response& c, std::ostream* os) { *os << c.name; }

class ResponseFraming : public testing::TestWithParam<Response> {};

TEST_P(ResponseFraming, GivesItsEventsHoweverFed) {
  Feeding run;
  run.methods = GetParam().methods;
  EXPECT_EQ(Drive(Parser::Kind::kResponse, GetParam().input, run), GetParam().events);
  ExpectSameEventsHoweverFed(Parser::Kind::kResponse, GetParam().input, run);
}

INSTANTIATE_TEST_SUITE_P(
    Http1Framer, ResponseFraming,
    testing::Values(
        Response{"ContentLength",
                 {"GET"},
                 "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
                 {"resp 200 OK 1.1 cl:2 ka {Content-Length: 2}", "body:hi", "complete"}},
        Response{"Chunked",
                 {"GET"},
                 "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
                 "grpc-status: 0\r\n\r\n",
                 {"resp 200 OK 1.1 chunked ka {Transfer-Encoding: chunked}", "body:abc",
                  "trailers:{grpc-status: 0}", "complete"}},
        Response{"ToHeadHasNoBody",
                 {"HEAD", "GET"},
                 "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                 "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
                 {"resp 200 OK 1.1 none ka {Content-Length: 5}", "complete",
                  "resp 200 OK 1.1 cl:1 ka {Content-Length: 1}", "body:x", "complete"}},
        Response{"ChunkedToHeadHasNoBody",
                 {"HEAD"},
                 "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                 {"resp 200 OK 1.1 none ka {Transfer-Encoding: chunked}", "complete"}},
        Response{"NoContentHasNoBody",
                 {"DELETE"},
                 "HTTP/1.1 204 No Content\r\n\r\n",
                 {"resp 204 No Content 1.1 none ka {}", "complete"}},
        Response{"NotModifiedHasNoBody",
                 {"GET"},
                 "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                 {"resp 304 Not Modified 1.1 none ka {Content-Length: 10}", "complete"}},
        Response{"InterimThenFinal",
                 {"PUT"},
                 "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"
                 "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
                 {"resp 100 Continue 1.1 none ka interim {}", "complete",
                  "resp 103 Early Hints 1.1 none ka interim {Link: </s>}", "complete",
                  "resp 201 Created 1.1 cl:0 ka {Content-Length: 0}", "complete"}},
        Response{"SwitchingProtocolsIsOpaque",
                 {"GET"},
                 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\n\r\n\x81\x02hi",
                 {"resp 101 Switching Protocols 1.1 none close tunnel {Upgrade: websocket, "
                  "Connection: Upgrade}",
                  "complete", "opaque:\x81\x02hi"}},
        Response{"ConnectEstablishedIsOpaque",
                 {"CONNECT"},
                 "HTTP/1.1 200 Connection Established\r\n\r\nSSH-2.0",
                 {"resp 200 Connection Established 1.1 none close tunnel {}", "complete",
                  "opaque:SSH-2.0"}},
        Response{"ConnectRefusedHasABody",
                 {"CONNECT"},
                 "HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 1\r\n\r\nx",
                 {"resp 407 Proxy Authentication Required 1.1 cl:1 ka {Content-Length: 1}",
                  "body:x", "complete"}},
        Response{"WithoutFramingLastsUntilClose",
                 {"GET"},
                 "HTTP/1.1 200 OK\r\n\r\nall of it",
                 {"resp 200 OK 1.1 until-close close {}", "body:all of it", "complete"}},
        Response{"ConnectionCloseEndsTheConnection",
                 {"GET", "GET"},
                 "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"
                 "HTTP/1.1 200 OK\r\n\r\n",
                 {"resp 200 OK 1.1 cl:1 close {Connection: close, Content-Length: 1}", "body:x",
                  "complete", "close:HTTP/1.1 200 OK\r\n\r\n"}},
        Response{"NonChunkedCodingLastsUntilClose",
                 {"GET"},
                 "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b",
                 {"resp 200 OK 1.1 until-close close {Transfer-Encoding: gzip}", "body:\x1f\x8b",
                  "complete"}},
        Response{
            "Http10",
            {"GET"},
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
            {"resp 200 OK 1.0 cl:1 close {Content-Length: 1}", "body:x", "complete", "close:"}},
        Response{"WithoutReason",
                 {"GET"},
                 "HTTP/1.1 204\r\n\r\n",
                 {"resp 204  1.1 none ka {}", "complete"}},
        Response{"Unsolicited",
                 {},
                 "HTTP/1.1 408 Request Timeout\r\n\r\n",
                 {"error:unsolicited_response"}},
        Response{
            "LeadingEmptyLine", {"GET"}, "\r\nHTTP/1.1 204 x\r\n\r\n", {"error:bad_status_line"}},
        Response{"TwoDigitStatus", {"GET"}, "HTTP/1.1 20 OK\r\n\r\n", {"error:bad_status_line"}},
        Response{"StatusAbove599", {"GET"}, "HTTP/1.1 600 X\r\n\r\n", {"error:bad_status_line"}},
        Response{"Http2", {"GET"}, "HTTP/2.0 200 OK\r\n\r\n", {"error:unsupported_version"}},
        Response{"ContentLengthWithTransferEncoding",
                 {"GET"},
                 "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
                 {"error:content_length_with_transfer_encoding"}},
        Response{"TwoContentLengths",
                 {"GET"},
                 "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
                 {"error:duplicate_content_length"}},
        Response{"TransferEncodingOnHttp10",
                 {"GET"},
                 "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                 {"error:transfer_encoding_on_http10"}},
        Response{
            "BareLf", {"GET"}, "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", {"error:bare_lf"}},
        Response{
            "ControlInReason", {"GET"}, "HTTP/1.1 200 O\x01K\r\n\r\n", {"error:bad_status_line"}},
        Response{"TruncatedBody",
                 {"GET"},
                 "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
                 {"resp 200 OK 1.1 cl:5 ka {Content-Length: 5}", "body:hel", "finish:truncated"}}),
    [](const testing::TestParamInfo<Response>& info) { return info.param.name; });

// --- Single behaviours ----------------------------------------------------------------------

TEST(Http1Framer, ContentLengthWithTransferEncodingIsRejected) {
  const Events events =
      Drive(Parser::Kind::kRequest,
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
            "0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n");
  EXPECT_EQ(events, Events{"error:content_length_with_transfer_encoding"});
}

TEST(Http1Framer, PausingAfterTheHeadStopsBeforeTheBody) {
  struct PauseOnHead : Recorder {
    PauseOnHead() : Recorder(false) {}
    Action OnRequestHead(RequestHead&& h) override {
      Recorder::OnRequestHead(std::move(h));
      return Action::kPause;
    }
  } rec;
  Parser parser(Parser::Kind::kRequest, rec);
  const std::string head = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
  const std::string input = head + "abc";
  FeedResult r = parser.Feed(input);
  EXPECT_EQ(r.status, FeedStatus::kPaused);
  EXPECT_EQ(r.consumed, head.size());
  EXPECT_EQ(rec.events.size(), 1u);
  r = parser.Feed(std::string_view(input).substr(r.consumed));
  EXPECT_EQ(r.status, FeedStatus::kOk);
  EXPECT_EQ(r.consumed, 3u);
  EXPECT_EQ(rec.events.back(), "complete");
}

TEST(Http1Framer, AMessageWithoutBodyCompletesOnTheFeedAfterAPause) {
  Recorder rec(/*pause=*/true);
  Parser parser(Parser::Kind::kRequest, rec);
  EXPECT_EQ(parser.Feed("GET / HTTP/1.1\r\nHost: a\r\n\r\n").status, FeedStatus::kPaused);
  EXPECT_EQ(parser.Feed({}).status, FeedStatus::kPaused);  // the complete event
  EXPECT_EQ(rec.events.back(), "complete");
  EXPECT_EQ(parser.Feed({}).status, FeedStatus::kOk);
}

TEST(Http1Framer, BodySlicesPointIntoTheFedBuffer) {
  struct Slices : Recorder {
    Slices() : Recorder(false) {}
    Action OnBody(std::string_view data) override {
      slices.push_back(data);
      return Action::kContinue;
    }
    std::vector<std::string_view> slices;
  } rec;
  Parser parser(Parser::Kind::kRequest, rec);
  const std::string input = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody";
  parser.Feed(input);
  ASSERT_EQ(rec.slices.size(), 1u);
  EXPECT_EQ(rec.slices[0].data(), input.data() + input.size() - 4);
}

TEST(Http1Framer, RefusedUpgradeContinuesWithTheNextRequest) {
  Feeding run;
  run.upgrade = false;
  EXPECT_EQ(
      Drive(Parser::Kind::kRequest,
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
            "GET /next HTTP/1.1\r\nHost: a\r\n\r\n",
            run),
      (Events{"req GET / 1.1 none ka upgrade {Host: a, Connection: upgrade, Upgrade: h2c}",
              "complete", "upgrade-pending", "req GET /next 1.1 none ka {Host: a}", "complete"}));
}

TEST(Http1Framer, UpgradeWaitsForTheDecisionWithoutConsuming) {
  Recorder rec(false);
  Parser parser(Parser::Kind::kRequest, rec);
  const std::string head = "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n";
  FeedResult r = parser.Feed(head + "tls");
  EXPECT_EQ(r.status, FeedStatus::kUpgradePending);
  EXPECT_EQ(r.consumed, head.size());
  r = parser.Feed("tls");
  EXPECT_EQ(r.status, FeedStatus::kUpgradePending);
  EXPECT_EQ(r.consumed, 0u);
  parser.SwitchToOpaque();
  r = parser.Feed("tls");
  EXPECT_EQ(r.status, FeedStatus::kOpaque);
  EXPECT_EQ(r.consumed, 0u);
  EXPECT_EQ(parser.Finish().status, FeedStatus::kOpaque);
}

TEST(Http1Framer, ResponseWaitsForItsRequestsMethodInOrder) {
  Recorder rec(false);
  Parser parser(Parser::Kind::kResponse, rec);
  parser.ExpectResponseTo("HEAD");
  EXPECT_EQ(parser.Feed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").status, FeedStatus::kOk);
  parser.ExpectResponseTo("GET");
  EXPECT_EQ(parser.Feed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").status, FeedStatus::kOk);
  EXPECT_EQ(rec.events,
            (Events{"resp 200 OK 1.1 none ka {Content-Length: 3}", "complete",
                    "resp 200 OK 1.1 cl:3 ka {Content-Length: 3}", "body:abc", "complete"}));
  const FeedResult r = parser.Feed("HTTP/1.1 200 OK\r\n\r\n");
  EXPECT_EQ(r.error, Error::kUnsolicitedResponse);
}

TEST(Http1Framer, FinishCompletesABodyUntilClose) {
  Recorder rec(false);
  Parser parser(Parser::Kind::kResponse, rec);
  parser.ExpectResponseTo("GET");
  EXPECT_EQ(parser.Feed("HTTP/1.1 200 OK\r\n\r\nabc").status, FeedStatus::kOk);
  EXPECT_EQ(rec.events.back(), "body:abc");
  EXPECT_EQ(parser.Finish().status, FeedStatus::kClose);
  EXPECT_EQ(rec.events.back(), "complete");
}

struct Truncated {
  std::string name;
  std::string input;
};
void PrintTo(const Truncated& c, std::ostream* os) { *os << c.name; }
class TruncatedRequest : public testing::TestWithParam<Truncated> {};

TEST_P(TruncatedRequest, IsAnErrorAtFinish) {
  const Events events = Drive(Parser::Kind::kRequest, GetParam().input);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back(), "finish:truncated");
}

INSTANTIATE_TEST_SUITE_P(
    Http1Framer, TruncatedRequest,
    testing::Values(Truncated{"InTheRequestLine", "GET / HT"},
                    Truncated{"InTheHead", "GET / HTTP/1.1\r\nHost: a\r\n"},
                    Truncated{"InAContentLengthBody",
                              "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab"},
                    Truncated{"InAChunk", S(kChunked, "5\r\nab")},
                    Truncated{"BeforeAChunksCrlf", S(kChunked, "2\r\nab\r")},
                    Truncated{"InTheTrailers", S(kChunked, "0\r\nX: y\r\n")}),
    [](const testing::TestParamInfo<Truncated>& info) { return info.param.name; });

TEST(Http1Framer, FinishBetweenMessagesIsClean) {
  Recorder rec(false);
  Parser parser(Parser::Kind::kRequest, rec);
  EXPECT_EQ(parser.Feed("GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n").status, FeedStatus::kOk);
  EXPECT_EQ(parser.Finish().status, FeedStatus::kOk);
}

TEST(Http1Framer, LimitsAreConfigurableAndInclusive) {
  Limits limits;
  limits.max_header_bytes = 12;  // "Host: abc\r\n" (11) + "\r\n" (2) = 13
  Feeding run;
  run.limits = limits;
  EXPECT_EQ(Drive(Parser::Kind::kRequest, "GET / HTTP/1.1\r\nHost: abc\r\n\r\n", run).back(),
            "error:header_section_too_large");
  run.limits.max_header_bytes = 13;
  EXPECT_EQ(Drive(Parser::Kind::kRequest, "GET / HTTP/1.1\r\nHost: abc\r\n\r\n", run).back(),
            "complete");
  run.limits = {};
  run.limits.max_headers = 1;
  EXPECT_EQ(Drive(Parser::Kind::kRequest, "GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n", run).back(),
            "error:too_many_headers");
  run.limits = {};
  run.limits.max_start_line = 16;  // "GET / HTTP/1.1\r\n"
  EXPECT_EQ(Drive(Parser::Kind::kRequest, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", run).back(),
            "complete");
  EXPECT_EQ(Drive(Parser::Kind::kRequest, "GET /a HTTP/1.1\r\nHost: a\r\n\r\n", run).back(),
            "error:start_line_too_long");
}

TEST(Http1Framer, AHeaderAtTheDefaultLimitIsFineByteAtATime) {
  // 64 KiB of head fed one byte at a time: line buffering is linear, not a rescan per byte.
  const std::string input =
      "GET / HTTP/1.1\r\nHost: a\r\nX: " + std::string(64 * 1024 - 16, 'v') + "\r\n\r\n";
  Feeding run;
  run.piece = 1;
  EXPECT_EQ(Drive(Parser::Kind::kRequest, input, run).back(), "complete");
}

TEST(Http1Framer, ErrorsAreSticky) {
  Recorder rec(false);
  Parser parser(Parser::Kind::kRequest, rec);
  EXPECT_EQ(parser.Feed("GET / HTTP/1.1\nHost: a\r\n\r\n").error, Error::kBareLf);
  const FeedResult r = parser.Feed("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  EXPECT_EQ(r.status, FeedStatus::kError);
  EXPECT_EQ(r.consumed, 0u);
  EXPECT_EQ(parser.Finish().error, Error::kBareLf);
  EXPECT_TRUE(rec.events.empty());
}

TEST(Http1Framer, ErrorsHaveStableNamesAndStatuses) {
  EXPECT_EQ(ErrorName(Error::kBadChunkSize), "bad_chunk_size");
  EXPECT_EQ(ErrorStatus(Error::kTooManyHeaders), 431);
  EXPECT_EQ(ErrorStatus(Error::kUnknownTransferCoding), 501);
  EXPECT_EQ(ErrorStatus(Error::kUnsupportedVersion), 505);
  EXPECT_TRUE(ErrorToStatus(Error::kNone).ok());
  EXPECT_EQ(ErrorToStatus(Error::kBareLf).message(), "http1: bare_lf");
  for (int e = 0; e <= static_cast<int>(Error::kTruncated); ++e) {
    EXPECT_NE(ErrorName(static_cast<Error>(e)), "unknown") << e;
  }
}

// --- Serialising ----------------------------------------------------------------------------

TEST(Http1Framer, SerialisedRequestHeadIsNormalised) {
  Recorder rec(false);
  Parser parser(Parser::Kind::kRequest, rec);
  parser.Feed("\r\nPOST /p?q HTTP/1.1\r\nhost:  a  \r\nX-Y:\tz\r\nContent-Length: 0\r\n\r\n");
  ASSERT_EQ(rec.requests.size(), 1u);
  const std::string out = SerializeRequestHead(rec.requests[0]);
  EXPECT_EQ(out, "POST /p?q HTTP/1.1\r\nhost: a\r\nX-Y: z\r\nContent-Length: 0\r\n\r\n");
  // What it writes parses back to the same head.
  EXPECT_EQ(Drive(Parser::Kind::kRequest, out),
            (Events{"req POST /p?q 1.1 cl:0 ka {host: a, X-Y: z, Content-Length: 0}", "complete"}));
}

TEST(Http1Framer, SerialisedResponseHeadIsNormalised) {
  ResponseHead head;
  head.version_minor = 1;
  head.status = 404;
  head.reason = "Not Found";
  head.headers = {{"Content-Length", "0"}};
  EXPECT_EQ(SerializeResponseHead(head), "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
}

TEST(Http1Framer, ChunkEncoderOutputParsesBack) {
  std::string body = ChunkHeader(26) + "abcdefghijklmnopqrstuvwxyz" + std::string(kChunkEnd) +
                     LastChunk({{"grpc-status", "0"}});
  EXPECT_EQ(ChunkHeader(26), "1a\r\n");
  EXPECT_EQ(LastChunk(), "0\r\n\r\n");
  EXPECT_EQ(Drive(Parser::Kind::kRequest, S(kChunked, body)),
            (Events{"req POST / 1.1 chunked ka {Host: a, Transfer-Encoding: chunked}",
                    "body:abcdefghijklmnopqrstuvwxyz", "trailers:{grpc-status: 0}", "complete"}));
}

TEST(Http1Framer, HopByHopHeadersIncludeTheConnectionNominated) {
  Headers headers = {{"Host", "a"},
                     {"Connection", "keep-alive, X-Secret"},
                     {"x-secret", "1"},
                     {"Keep-Alive", "timeout=5"},
                     {"Transfer-Encoding", "chunked"},
                     {"X-Kept", "2"}};
  const std::vector<std::string> names = HopByHopNames(headers);
  EXPECT_NE(std::find(names.begin(), names.end(), "x-secret"), names.end());
  RemoveHopByHop(headers);
  EXPECT_EQ(Fields(headers), "{Host: a, X-Kept: 2}");
  EXPECT_EQ(FindHeader(headers, "x-kept")->value, "2");
  EXPECT_EQ(FindHeader(headers, "connection"), nullptr);
}

TEST(Http1Framer, FieldChecksForHeadersTheProxyAdds) {
  EXPECT_TRUE(IsFieldName("X-Forwarded-For"));
  EXPECT_FALSE(IsFieldName("X Forwarded"));
  EXPECT_TRUE(IsFieldValue("10.0.0.1, 10.0.0.2"));
  EXPECT_FALSE(IsFieldValue("a\r\nInjected: 1"));
  EXPECT_FALSE(IsFieldValue(" padded"));
}

}  // namespace
}  // namespace shunt::agent::http1
