// An ApiCostPolicy (COST_MODEL.md) compiled for the proxy: what one finished request costs the
// pod that made it. Prices are exact (price.h); a request's cost is one integer of nano-units.
//
// A request is priced by the first route it matches (method and path prefix, or its gRPC
// method): per request and per GiB of body each way; none matched: route "other", no route
// price. It is a token request when its body names a model or its response reports usage;
// then, if it succeeded (2xx, and gRPC status 0 where gRPC), its tokens are priced by the model
// it named (else the one the response names) from `models`, else by `defaultModel`, else not at
// all (`unpriced`). A token request that succeeded without usage is `usage_missing`, never
// guessed; a failed one costs its route price only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/cost/price.h"
#include "agent/cost/usage.h"
#include "shunt/v1/policy.pb.h"

namespace shunt::agent::cost {

// What the proxy saw of one request and its response.
struct ExchangeFacts {
  std::string_view method = {}, path = {};  // path without the query (gRPC: "/pkg.Service/Method")
  bool grpc = false;
  int status = 0;        // HTTP status (0: none, the exchange broke)
  int grpc_status = -1;  // -1: none
  uint64_t request_bytes = 0, response_bytes = 0;  // bodies
  std::string_view request_model = {};             // the request body's `model` ("" none)
  const UsageReader* response = nullptr;           // the response body read (null: not read)
};

enum class CostResult : uint8_t { kPriced, kFailed, kUnpriced, kUsageMissing };
std::string_view CostResultName(CostResult r);  // "priced", "failed", "unpriced", "usage_missing"

struct Charge {
  uint64_t nano = 0;      // the request's cost, nano-units of the policy's currency
  std::string route;      // a route's name, or "other"
  std::string model;      // a listed model, "other" (unlisted), "" (not a token request)
  CostResult result = CostResult::kPriced;
  bool tokens_priced = false;
  Usage::Billable tokens;  // as billed (zero unless tokens_priced or unpriced with usage)
};

class CostPolicy {
 public:
  static absl::StatusOr<CostPolicy> Compile(const shunt::v1::ApiCostPolicy& p);

  const std::string& currency() const { return currency_; }
  const std::string& name() const { return name_; }  // "namespace/name"
  Charge Price(const ExchangeFacts& f) const;
  // Whether responses need reading for usage (the policy prices tokens).
  bool prices_tokens() const { return !models_.empty() || has_default_; }

 private:
  struct Route {
    std::string name, method, path_prefix, grpc_method;
    Atto per_request = 0, per_gib_request = 0, per_gib_response = 0;
  };
  struct Model {
    std::string name;
    Atto input = 0, cached_input = 0, cache_creation = 0, output = 0, reasoning = 0;
    bool reasoning_apart = false;  // a reasoning price of its own (else: output's)
  };
  static absl::StatusOr<Model> CompileModel(const shunt::v1::ModelPrice& m);
  const Route* MatchRoute(const ExchangeFacts& f) const;
  const Model* FindModel(std::string_view name) const;

  std::string name_, currency_;
  std::vector<Route> routes_;
  std::vector<Model> models_;  // sorted by name
  Model default_;
  bool has_default_ = false;
};

}  // namespace shunt::agent::cost
