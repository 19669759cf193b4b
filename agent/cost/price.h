// Prices as ApiCostPolicy writes them (decimal strings, COST_MODEL.md) and the arithmetic that
// turns counts into money without floating point.
//
// A price is held exactly, in atto-units of its currency (10^-18): a decimal string has at most
// 18 digits after the point and at most 12 before it (10^12 units per request, token million or
// GiB). What one request costs is computed exactly from its counts and then rounded once, half
// up, to a whole nano-unit (10^-9): that integer is the request's cost, and every total is a sum
// of such integers, so a total over pods equals the total over requests, exactly, always.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace shunt::agent::cost {

using Atto = unsigned __int128;

inline constexpr uint64_t kNanoPerUnit = 1'000'000'000;

// "2.50" -> 2.5 * 10^18. Refused: empty, a sign, exponent, spaces, more than 18 decimals or 12
// integer digits. The CRD's pattern is ^[0-9]+(\.[0-9]+)?$; "" is "no price" to the caller.
absl::StatusOr<Atto> ParsePrice(std::string_view s);

// The exact cost of `count` things priced `price` per `per` of them (1: per request; 10^6: per
// million tokens; 2^30: per GiB), accumulated in atto-units * per-denominators: callers add the
// terms of one request with Sum and round once with ToNano.
class Amount {
 public:
  // count * price / per, kept exactly as a fraction over a common denominator.
  void Add(uint64_t count, Atto price, uint64_t per);
  // Rounded half up to a whole nano-unit; saturates at UINT64_MAX (18 billion units).
  uint64_t ToNano() const;
  bool zero() const { return million_ == 0 && gib_ == 0 && unit_ == 0; }

 private:
  // Kept per denominator (an exact sum needs no common one until the end): atto * count.
  Atto unit_ = 0, million_ = 0, gib_ = 0;
  bool overflow_ = false;
};

}  // namespace shunt::agent::cost
