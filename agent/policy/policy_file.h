// The --policy-file format: a shunt.v1.PolicyBundle written as JSON or YAML (docs/policy-file.md).
//
// ParsePolicyBundle turns the text of such a file into a validated bundle. It is the boundary where
// untrusted text meets the agent: it never throws and never crashes, whatever the input, and every
// error is an InvalidArgumentError whose message names the offending element, e.g.
// `workloads[3].ips[1]: "10.0.0.x" is not an IPv4 or IPv6 address`. Called by the file source, and
// by the controller source for the same validation of what it receives.
#pragma once

#include <cstddef>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shunt/v1/workload.pb.h"

namespace shunt::agent {

// Limits of a policy file (or bundle); larger input is rejected, not truncated.
inline constexpr size_t kMaxPolicyBytes = size_t{16} << 20;  // 16 MiB
inline constexpr int kMaxPolicyWorkloads = 100000;
inline constexpr size_t kMaxWorkloadUidLength = 128;
inline constexpr size_t kMaxDnsNameLength = 253;

// Parses JSON (the first non-blank character is '{') or YAML. Field names are the proto JSON names
// (lowerCamelCase, e.g. serviceAccount) or the proto names (service_account); an unknown field is
// an error. Bool fields take true/false, quoted or not. The result is validated
// (ValidatePolicyBundle).
absl::StatusOr<shunt::v1::PolicyBundle> ParsePolicyBundle(std::string_view text);

// The semantic checks of ParsePolicyBundle, for bundles that did not come from text (the
// controller's stream): uids non-empty, at most 128 characters and unique; namespace and name
// DNS names; IPs valid IPv4/IPv6 and claimed by one workload only; at most kMaxPolicyWorkloads.
absl::Status ValidatePolicyBundle(const shunt::v1::PolicyBundle& bundle);

}  // namespace shunt::agent
