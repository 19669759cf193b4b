// The rules of our CRDs' openAPIV3Schema (deploy/crds/*.yaml), checked in C++: in manifests mode
// there is no API server to enforce them, so the manifests source calls this before it accepts a
// TrafficRoute, AccessPolicy or ApiCostPolicy. tests/unit/crd_schema_test.cc walks the CRD YAML
// with an independent checker and asserts that both accept and reject the same samples; change
// the two together.
#pragma once

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace shunt::controller {

// OK, or an InvalidArgument error naming the first offending field by its path, e.g.
// `spec.rules[0].backends[1].weight: must be <= 1000000`. Checks apiVersion
// (policy.shunt.dev/v1alpha1), kind (TrafficRoute, AccessPolicy, ApiCostPolicy), metadata.name,
// and the whole spec: types, required fields, enums, ranges, patterns, list sizes, unknown fields
// (rejected, as `kubectl apply` does with strict field validation), plus the CRDs' CEL rules
// (port range `to >= from`). status is not checked: the controller owns it.
absl::Status ValidatePolicyObject(const nlohmann::json& object);

}  // namespace shunt::controller
