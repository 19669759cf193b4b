#include "agent/cost/cost_policy.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace shunt::agent::cost {
namespace {

constexpr uint64_t kMillion = 1'000'000;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// "" is no price (0); anything else must parse.
absl::StatusOr<Atto> Optional(const std::string& s, std::string_view where) {
  if (s.empty()) return Atto{0};
  absl::StatusOr<Atto> p = ParsePrice(s);
  if (!p.ok()) return absl::InvalidArgumentError(absl::StrCat(std::string(where), ": ", std::string(p.status().message())));
  return p;
}

}  // namespace

std::string_view CostResultName(CostResult r) {
  switch (r) {
    case CostResult::kPriced: return "priced";
    case CostResult::kFailed: return "failed";
    case CostResult::kUnpriced: return "unpriced";
    case CostResult::kUsageMissing: return "usage_missing";
  }
  return "priced";
}

absl::StatusOr<CostPolicy::Model> CostPolicy::CompileModel(const shunt::v1::ModelPrice& m) {
  Model out;
  out.name = m.model();
  const std::string where = m.model().empty() ? "defaultModel" : absl::StrCat("model ", m.model());
  auto input = Optional(m.per_million_input(), where);
  auto cached = Optional(m.per_million_cached_input(), where);
  auto creation = Optional(m.per_million_cache_creation(), where);
  auto output = Optional(m.per_million_output(), where);
  auto reasoning = Optional(m.per_million_reasoning(), where);
  for (const auto* s : {&input, &cached, &creation, &output, &reasoning}) {
    if (!s->ok()) return s->status();
  }
  out.input = *input;
  // A token type without a price of its own is billed as the providers bill it when they do not
  // discount it: cache reads and writes as input, reasoning as output (it is part of it).
  out.cached_input = m.per_million_cached_input().empty() ? *input : *cached;
  out.cache_creation = m.per_million_cache_creation().empty() ? *input : *creation;
  out.output = *output;
  out.reasoning = *reasoning;
  out.reasoning_apart = !m.per_million_reasoning().empty();
  return out;
}

absl::StatusOr<CostPolicy> CostPolicy::Compile(const shunt::v1::ApiCostPolicy& p) {
  CostPolicy c;
  c.name_ = absl::StrCat(p.namespace_(), "/", p.name());
  c.currency_ = p.currency();
  for (const auto& r : p.routes()) {
    Route out{.name = r.name(),
              .method = r.method(),
              .path_prefix = r.path_prefix(),
              .grpc_method = r.grpc_method()};
    const std::string where = absl::StrCat("route ", r.name());
    auto per_request = Optional(r.per_request(), where);
    auto per_gib_request = Optional(r.per_gib_request(), where);
    auto per_gib_response = Optional(r.per_gib_response(), where);
    for (const auto* s : {&per_request, &per_gib_request, &per_gib_response}) {
      if (!s->ok()) return s->status();
    }
    out.per_request = *per_request;
    out.per_gib_request = *per_gib_request;
    out.per_gib_response = *per_gib_response;
    c.routes_.push_back(std::move(out));
  }
  for (const auto& m : p.models()) {
    auto model = CompileModel(m);
    if (!model.ok()) return model.status();
    c.models_.push_back(std::move(*model));
  }
  std::sort(c.models_.begin(), c.models_.end(),
            [](const Model& a, const Model& b) { return a.name < b.name; });
  if (p.has_default_model()) {
    auto d = CompileModel(p.default_model());
    if (!d.ok()) return d.status();
    c.default_ = std::move(*d);
    c.default_.name = "other";
    c.has_default_ = true;
  }
  return c;
}

const CostPolicy::Route* CostPolicy::MatchRoute(const ExchangeFacts& f) const {
  for (const Route& r : routes_) {
    if (!r.grpc_method.empty()) {
      if (f.grpc && f.path == r.grpc_method) return &r;
      continue;
    }
    if (!r.method.empty() && r.method != f.method) continue;
    if (!r.path_prefix.empty() && !f.path.starts_with(r.path_prefix)) continue;
    return &r;
  }
  return nullptr;
}

const CostPolicy::Model* CostPolicy::FindModel(std::string_view name) const {
  if (name.empty()) return nullptr;
  auto it = std::lower_bound(models_.begin(), models_.end(), name,
                             [](const Model& m, std::string_view n) { return m.name < n; });
  return it != models_.end() && it->name == name ? &*it : nullptr;
}

Charge CostPolicy::Price(const ExchangeFacts& f) const {
  Charge c;
  Amount amount;
  const Route* route = MatchRoute(f);
  c.route = route ? route->name : "other";
  if (route) {
    amount.Add(1, route->per_request, 1);
    amount.Add(f.request_bytes, route->per_gib_request, kGiB);
    amount.Add(f.response_bytes, route->per_gib_response, kGiB);
  }
  // gRPC: only a status of 0 is a success (none at all: the call broke before its trailers).
  const bool succeeded = f.status >= 200 && f.status < 300 && (!f.grpc || f.grpc_status == 0);
  const bool has_usage = f.response && f.response->usage().any();
  const bool token_request = !f.request_model.empty() || has_usage;
  if (token_request) {
    const Model* m = FindModel(f.request_model);
    if (!m && f.response) m = FindModel(f.response->model());
    if (!m && has_default_) m = &default_;
    c.model = m ? m->name : "other";
    if (!succeeded) {
      c.result = CostResult::kFailed;  // its route price only
    } else if (!has_usage) {
      c.result = CostResult::kUsageMissing;
    } else if (!m) {
      c.result = CostResult::kUnpriced;
      c.tokens = f.response->usage().Bill(false);
    } else {
      c.tokens = f.response->usage().Bill(m->reasoning_apart);
      c.tokens_priced = true;
      amount.Add(c.tokens.input, m->input, kMillion);
      amount.Add(c.tokens.cached_input, m->cached_input, kMillion);
      amount.Add(c.tokens.cache_creation, m->cache_creation, kMillion);
      amount.Add(c.tokens.output, m->output, kMillion);
      amount.Add(c.tokens.reasoning, m->reasoning, kMillion);
    }
  } else if (!succeeded) {
    c.result = CostResult::kFailed;
  }
  c.nano = amount.ToNano();
  return c;
}

}  // namespace shunt::agent::cost
