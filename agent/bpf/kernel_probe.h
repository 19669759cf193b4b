// Start-up checks of the running kernel: each missing feature is reported by name, so that a node
// without (say) sockhash support gets one clear line and a non-zero exit, not a crash loop.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace shunt::agent {

struct KernelFeature {
  std::string name;  // e.g. "BPF map type sockhash"
  bool present = false;
  std::string detail;  // why it is missing, when it is
};

// Probes everything the fast path needs (BTF, map and program types, helpers, privileges).
std::vector<KernelFeature> ProbeKernelFeatures();

// OK, or FailedPrecondition("kernel feature missing: <name> (<detail>)") for the first missing one.
absl::Status CheckKernel();

// Mounts a bpffs at `path` if no bpffs is mounted there.
absl::Status EnsureBpffs(const std::string& path);

}  // namespace shunt::agent
