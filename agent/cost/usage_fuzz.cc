// libFuzzer target for the usage readers (usage.h), run by ctest (scripts/run-cost-fuzz.sh).
// The input's first byte picks the format (JSON body, event stream, request body) and a slice
// length; the rest is the body. Checked: no crash, leak or undefined behaviour (ASan, UBSan),
// and the same result whether the body comes whole or in slices (a reader's state must not
// depend on where reads cut the bytes).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "agent/cost/price.h"
#include "agent/cost/usage.h"

namespace {

using shunt::agent::cost::Amount;
using shunt::agent::cost::RequestReader;
using shunt::agent::cost::Usage;
using shunt::agent::cost::UsageReader;

void Check(bool ok) {
  if (!ok) std::abort();
}

bool Same(const Usage& a, const Usage& b) {
  return a.input == b.input && a.input_cached == b.input_cached && a.cache_read == b.cache_read &&
         a.cache_creation == b.cache_creation && a.output == b.output && a.reasoning == b.reasoning;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  const size_t slice = 1 + (mode >> 2);  // 1..64
  if ((mode & 3) == 2) {
    RequestReader whole, sliced;
    whole.Feed(body);
    whole.Finish();
    for (size_t i = 0; i < body.size(); i += slice) sliced.Feed(body.substr(i, slice));
    sliced.Finish();
    Check(whole.model() == sliced.model() && whole.stream() == sliced.stream() &&
          whole.whole() == sliced.whole());
    return 0;
  }
  const auto format =
      (mode & 1) ? UsageReader::Format::kEventStream : UsageReader::Format::kJson;
  UsageReader whole(format), sliced(format);
  whole.Feed(body);
  whole.Finish();
  for (size_t i = 0; i < body.size(); i += slice) sliced.Feed(body.substr(i, slice));
  sliced.Finish();
  Check(Same(whole.usage(), sliced.usage()));
  Check(whole.model() == sliced.model());
  Check(whole.documents() == sliced.documents() && whole.bad_documents() == sliced.bad_documents());
  Check(whole.done() == sliced.done());
  // What would be billed: each count at most what was reported, never wrapped.
  for (bool apart : {false, true}) {
    const Usage::Billable b = whole.usage().Bill(apart);
    const Usage& u = whole.usage();
    Check(b.input <= u.input.value_or(0));
    Check(b.output + b.reasoning == u.output.value_or(0));
    Amount a;
    a.Add(b.input, 1'000'000'000'000'000'000ULL, 1'000'000);
    a.Add(b.output, 1, 1'000'000);
    (void)a.ToNano();
  }
  return 0;
}
