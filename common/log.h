// One project logger: `SHUNT_LOG(INFO) << "text";` writes one line to stderr.
// Debian's Abseil (20220623) has no absl/log. Rate-limit with SHUNT_LOG_EVERY_N_SEC on any
// per-connection path.
#pragma once

#include <atomic>
#include <chrono>
#include <sstream>
#include <string_view>

namespace shunt::log {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Lines below this level are dropped. Default kInfo; set once from main.
void SetMinLevel(Level level);
Level MinLevel();
void SetProgramName(std::string_view name);

class Line {
 public:
  Line(Level level, const char* file, int line);
  ~Line();
  Line(const Line&) = delete;
  Line& operator=(const Line&) = delete;
  template <typename T>
  Line& operator<<(const T& v) {
    stream_ << v;
    return *this;
  }

 private:
  Level level_;
  std::ostringstream stream_;
};

// True at most once per `seconds` for the call site that owns `last_ns`.
bool EveryNSec(std::atomic<int64_t>& last_ns, double seconds);

}  // namespace shunt::log

#define SHUNT_LOG_LEVEL_DEBUG ::shunt::log::Level::kDebug
#define SHUNT_LOG_LEVEL_INFO ::shunt::log::Level::kInfo
#define SHUNT_LOG_LEVEL_WARNING ::shunt::log::Level::kWarning
#define SHUNT_LOG_LEVEL_ERROR ::shunt::log::Level::kError

#define SHUNT_LOG(level)                                                 \
  if (SHUNT_LOG_LEVEL_##level < ::shunt::log::MinLevel()) {              \
  } else                                                                 \
    ::shunt::log::Line(SHUNT_LOG_LEVEL_##level, __FILE__, __LINE__)

// One statement (usable as an `if` body); the static is per call site.
#define SHUNT_LOG_EVERY_N_SEC(level, seconds)                                       \
  if (static std::atomic<int64_t> shunt_log_last_{0};                              \
      !::shunt::log::EveryNSec(shunt_log_last_, seconds)) {                        \
  } else                                                                           \
    SHUNT_LOG(level)

