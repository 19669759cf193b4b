// Small filesystem helpers.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shunt {

// The whole content of a (small) file.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// mkdir -p with `mode` for the directories it creates.
absl::Status MkdirAll(const std::string& path, unsigned mode = 0700);

// Writes `bytes` to `path` through a temporary file, fsync and rename: readers see the old or the
// new content, never a half-written file.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view bytes);

}  // namespace shunt
