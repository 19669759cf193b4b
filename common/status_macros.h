// RETURN_IF_ERROR / ASSIGN_OR_RETURN: Debian's Abseil (20220623) predates the official macros.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SHUNT_CONCAT_INNER_(a, b) a##b
#define SHUNT_CONCAT_(a, b) SHUNT_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status shunt_status_ = (expr);     \
    if (!shunt_status_.ok()) return shunt_status_; \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(SHUNT_CONCAT_(shunt_statusor_, __LINE__), lhs, rexpr)

#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                           \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()
