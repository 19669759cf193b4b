// Command-line helpers shared by the binaries.
#pragma once

#include <string>
#include <vector>

namespace shunt {

// Flags are spelled with dashes on the command line (--node-name); Abseil names them with
// underscores. Returns argv with "--a-b[=v]" rewritten to "--a_b[=v]" (values untouched, nothing
// after a bare "--").
std::vector<std::string> NormalizeFlagDashes(int argc, char** argv);

// Runs `main_fn(argc, argv)` on the normalized arguments.
template <typename F>
int WithNormalizedFlags(int argc, char** argv, F main_fn) {
  std::vector<std::string> args = NormalizeFlagDashes(argc, argv);
  std::vector<char*> ptrs;
  for (auto& a : args) ptrs.push_back(a.data());
  return main_fn(static_cast<int>(ptrs.size()), ptrs.data());
}

}  // namespace shunt
