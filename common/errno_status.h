// absl::Status from errno values (syscalls and libbpf, which returns -errno).
#pragma once

#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace shunt {

// Status for a failed syscall: canonical code from `err`, message "what: strerror".
absl::Status ErrnoStatus(int err, absl::string_view what);

// For libbpf-style returns: 0 is OK, a negative value is -errno.
inline absl::Status LibbpfStatus(long ret, absl::string_view what) {
  return ret < 0 ? ErrnoStatus(static_cast<int>(-ret), what) : absl::OkStatus();
}

}  // namespace shunt
