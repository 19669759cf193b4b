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

// Whether this kernel lets a tracing program of `attach_type` (BPF_TRACE_FENTRY, BPF_TRACE_FEXIT,
// BPF_TRACE_RAW_TP for a tp_btf tracepoint) be loaded for `target`: a function or tracepoint may
// be missing, inlined, or refused by the kernel's build or security policy.
bool CanTrace(const char* target, int attach_type);

// Mounts a bpffs at `path` if no bpffs is mounted there.
absl::Status EnsureBpffs(const std::string& path);

}  // namespace shunt::agent
