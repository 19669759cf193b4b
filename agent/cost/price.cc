#include "agent/cost/price.h"

#include <limits>
#include <string>

#include "absl/strings/str_cat.h"

namespace shunt::agent::cost {
namespace {

constexpr Atto kMax = ~Atto{0};
constexpr Atto kPow10(int n) {
  Atto v = 1;
  for (int i = 0; i < n; ++i) v *= 10;
  return v;
}

// a * b, or kMax (and `overflow` set) when it does not fit.
Atto MulSat(Atto a, Atto b, bool& overflow) {
  if (a != 0 && b > kMax / a) {
    overflow = true;
    return kMax;
  }
  return a * b;
}
Atto AddSat(Atto a, Atto b, bool& overflow) {
  if (b > kMax - a) {
    overflow = true;
    return kMax;
  }
  return a + b;
}

}  // namespace

absl::StatusOr<Atto> ParsePrice(std::string_view s) {
  const size_t dot = s.find('.');
  const std::string_view whole = s.substr(0, dot);
  const std::string_view frac = dot == std::string_view::npos ? "" : s.substr(dot + 1);
  auto digits = [](std::string_view d) {
    for (char c : d) {
      if (c < '0' || c > '9') return false;
    }
    return true;
  };
  if (whole.empty() || !digits(whole) || !digits(frac) ||
      (dot != std::string_view::npos && frac.empty())) {
    return absl::InvalidArgumentError(absl::StrCat("\"", std::string(s), "\" is not a decimal price"));
  }
  size_t lead = 0;  // leading zeros do not count towards the 12 digits
  while (lead + 1 < whole.size() && whole[lead] == '0') ++lead;
  if (whole.size() - lead > 12 || frac.size() > 18) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", std::string(s), "\": at most 12 digits before the point and 18 after it"));
  }
  Atto v = 0;
  for (char c : whole.substr(lead)) v = v * 10 + static_cast<unsigned>(c - '0');
  v *= kPow10(18);
  Atto f = 0;
  for (char c : frac) f = f * 10 + static_cast<unsigned>(c - '0');
  return v + f * kPow10(18 - static_cast<int>(frac.size()));
}

void Amount::Add(uint64_t count, Atto price, uint64_t per) {
  const Atto term = MulSat(count, price, overflow_);
  Atto& acc = per == 1 ? unit_ : per == 1'000'000 ? million_ : gib_;
  acc = AddSat(acc, term, overflow_);
}

uint64_t Amount::ToNano() const {
  if (overflow_) return std::numeric_limits<uint64_t>::max();
  // Each accumulator over its own denominator in atto-units (10^9 to the nano-unit): a whole
  // quotient and a remainder below its denominator; the remainders are added over their least
  // common multiple (2^39 * 5^15, about 1.7e22: three of them fit many times in 128 bits).
  constexpr Atto kD1 = kPow10(9);                    // unit:    atto -> nano
  constexpr Atto kD2 = kPow10(15);                   // million: / 10^6 / 10^9
  constexpr Atto kD3 = (Atto{1} << 30) * kPow10(9);  // GiB:     / 2^30 / 10^9
  constexpr Atto kL = (Atto{1} << 39) * kPow10(15) / (Atto{1} << 15);  // 2^39 * 5^15
  static_assert(kL % kD1 == 0 && kL % kD2 == 0 && kL % kD3 == 0);
  Atto whole = unit_ / kD1 + million_ / kD2 + gib_ / kD3;
  const Atto rest = (unit_ % kD1) * (kL / kD1) + (million_ % kD2) * (kL / kD2) +
                    (gib_ % kD3) * (kL / kD3);
  whole += rest / kL;
  if ((rest % kL) * 2 >= kL) ++whole;  // half up, once per request
  if (whole > std::numeric_limits<uint64_t>::max()) return std::numeric_limits<uint64_t>::max();
  return static_cast<uint64_t>(whole);
}

}  // namespace shunt::agent::cost
