// libFuzzer entry for ParsePolicyBundle: any input must give a bundle or an error, never a crash,
// a throw or a sanitizer report. Built only with clang; see CMakeLists.txt in this directory:
//   cmake -DCMAKE_CXX_COMPILER=clang++ ... && cmake --build ... --target policy_file_fuzz
// (compiled with -fsanitize=fuzzer,address).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "agent/policy/policy_file.h"
#include "common/log.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool quiet = [] {
    shunt::log::SetMinLevel(shunt::log::Level::kError);
    return true;
  }();
  (void)quiet;
  auto bundle =
      shunt::agent::ParsePolicyBundle(std::string_view(reinterpret_cast<const char*>(data), size));
  if (bundle.ok()) {
    // What parses must also pass the standalone validation.
    if (!shunt::agent::ValidatePolicyBundle(*bundle).ok()) __builtin_trap();
  }
  return 0;
}
