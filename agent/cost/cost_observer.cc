#include "agent/cost/cost_observer.h"

#include <zlib.h>

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace shunt::agent::cost {

struct CostObserver::Inflater {
  z_stream z{};
  bool ok = false;
  uint64_t out = 0;
  ~Inflater() {
    if (ok) inflateEnd(&z);
  }
};

CostObserver::CostObserver(std::shared_ptr<const CostPolicy> policy,
                           std::pair<std::string, std::string> service)
    : policy_(std::move(policy)), service_(std::move(service)) {}

CostObserver::~CostObserver() = default;

void CostObserver::RequestBody(std::string_view data) { request_.Feed(data); }

void CostObserver::ResponseHead(int status, std::string_view content_type,
                                std::string_view content_encoding) {
  (void)status;  // a failed response is read too: its usage is not charged, but it may say
  if (!policy_->prices_tokens()) return;
  // The media type without its parameters, in lower case.
  std::string type(absl::StripAsciiWhitespace(
      absl::string_view(content_type.data(), content_type.size()).substr(
          0, content_type.find(';'))));
  absl::AsciiStrToLower(&type);
  UsageReader::Format format;
  if (type == "text/event-stream") {
    format = UsageReader::Format::kEventStream;
  } else if (type == "application/json" || absl::EndsWith(type, "+json")) {
    format = UsageReader::Format::kJson;
  } else {
    unread_ = "media_type";
    return;
  }
  std::string encoding(absl::StripAsciiWhitespace(
      absl::string_view(content_encoding.data(), content_encoding.size())));
  absl::AsciiStrToLower(&encoding);
  if (encoding == "gzip" || encoding == "x-gzip" || encoding == "deflate") {
    inflater_ = std::make_unique<Inflater>();
    // gzip: its header; deflate: RFC 9110's is zlib's format.
    inflater_->ok =
        inflateInit2(&inflater_->z, encoding == "deflate" ? MAX_WBITS : MAX_WBITS + 16) == Z_OK;
    if (!inflater_->ok) {
      inflater_.reset();
      unread_ = "encoding";
      return;
    }
  } else if (!encoding.empty() && encoding != "identity") {
    unread_ = "encoding";  // br, zstd, several: not read
    return;
  }
  response_ = std::make_unique<UsageReader>(format);
  stream_ = format == UsageReader::Format::kEventStream;
}

void CostObserver::ResponseBody(std::string_view data) {
  if (!response_) return;
  if (stream_ && first_event_ == absl::InfinitePast() && !data.empty()) first_event_ = absl::Now();
  if (!inflater_) {
    response_->Feed(data);
    return;
  }
  Inflater& in = *inflater_;
  in.z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  in.z.avail_in = static_cast<uInt>(data.size());
  char buf[16 << 10];
  while (in.z.avail_in > 0) {
    in.z.next_out = reinterpret_cast<Bytef*>(buf);
    in.z.avail_out = sizeof(buf);
    const int rc = inflate(&in.z, Z_NO_FLUSH);
    const size_t n = sizeof(buf) - in.z.avail_out;
    in.out += n;
    if (in.out > kMaxInflated) {
      response_.reset();
      unread_ = "inflated_too_large";
      return;
    }
    if (n > 0) response_->Feed(std::string_view(buf, n));
    if (rc == Z_STREAM_END) return;  // anything after it is not part of the body's encoding
    if (rc != Z_OK) {
      if (rc == Z_BUF_ERROR && n == 0) return;  // needs more input
      response_.reset();
      unread_ = "encoding";
      return;
    }
  }
}

Charge CostObserver::Finish(const ExchangeRecord& r) {
  request_.Finish();
  if (response_) response_->Finish();
  ExchangeFacts f{.method = r.request.method,
                  .path = r.request.path,
                  .grpc = r.request.grpc,
                  .status = r.status,
                  .grpc_status = r.grpc_status,
                  .request_bytes = r.request_bytes,
                  .response_bytes = r.response_bytes,
                  // Believed only from a body that parsed whole (one that did not may say
                  // two things; the upstream's reading is not known): else the response's.
                  .request_model = request_.whole() ? std::string_view(request_.model())
                                                    : std::string_view(),
                  .response = response_.get()};
  return policy_->Price(f);
}

}  // namespace shunt::agent::cost
