// The proxy's reader of one priced exchange (a BodyObserver, l7_session.h): the request body's
// `model`, the response's usage (JSON or server-sent events; gzip and deflate decoded as they
// pass, with a bound on what they expand to), then the request's price (cost_policy.h). Holds a
// few kilobytes whatever the bodies' sizes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/time/time.h"
#include "agent/cost/cost_policy.h"
#include "agent/cost/usage.h"
#include "agent/proxy/l7_session.h"

namespace shunt::agent::cost {

class CostObserver final : public BodyObserver {
 public:
  // Bytes a compressed response may expand to before the rest is not read (usage missing).
  static constexpr uint64_t kMaxInflated = uint64_t{256} << 20;

  // `service`: the priced Service (namespace, name) the request is charged to.
  CostObserver(std::shared_ptr<const CostPolicy> policy,
               std::pair<std::string, std::string> service = {});
  ~CostObserver() override;

  bool ReadsResponse() const override { return policy_->prices_tokens(); }
  void RequestBody(std::string_view data) override;
  void ResponseHead(int status, std::string_view content_type,
                    std::string_view content_encoding) override;
  void ResponseBody(std::string_view data) override;

  // The exchange is over: what it costs.
  Charge Finish(const ExchangeRecord& r);
  const CostPolicy& policy() const { return *policy_; }
  const std::pair<std::string, std::string>& service() const { return service_; }
  // Why the response was not read for usage ("" it was, or it did not need to be).
  std::string_view unread() const { return unread_; }
  // When a streamed (server-sent events) response's first body bytes came (InfinitePast: not a
  // stream, or none came).
  absl::Time first_event() const { return first_event_; }

 private:
  struct Inflater;
  std::shared_ptr<const CostPolicy> policy_;
  std::pair<std::string, std::string> service_;
  RequestReader request_;
  std::unique_ptr<UsageReader> response_;
  std::unique_ptr<Inflater> inflater_;
  std::string_view unread_;
  bool stream_ = false;
  absl::Time first_event_ = absl::InfinitePast();
};

}  // namespace shunt::agent::cost
