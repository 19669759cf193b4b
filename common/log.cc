#include "common/log.h"

#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <string>

namespace shunt::log {
namespace {
std::atomic<int> g_min_level{static_cast<int>(Level::kInfo)};
std::string g_program = "shunt";

char LevelChar(Level l) {
  switch (l) {
    case Level::kDebug: return 'D';
    case Level::kInfo: return 'I';
    case Level::kWarning: return 'W';
    case Level::kError: return 'E';
  }
  return '?';
}
}  // namespace

void SetMinLevel(Level level) { g_min_level.store(static_cast<int>(level)); }
Level MinLevel() { return static_cast<Level>(g_min_level.load(std::memory_order_relaxed)); }
void SetProgramName(std::string_view name) { g_program = std::string(name); }

Line::Line(Level level, const char* file, int line) : level_(level) {
  struct timeval tv;
  gettimeofday(&tv, nullptr);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[40];
  std::snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<long>(tv.tv_usec));
  std::string_view f(file);
  if (auto pos = f.rfind('/'); pos != std::string_view::npos) f.remove_prefix(pos + 1);
  stream_ << LevelChar(level) << ' ' << ts << ' ' << g_program << ' ' << f << ':' << line << "] ";
}

Line::~Line() {
  stream_ << '\n';
  const std::string s = stream_.str();
  // One write(2) per line so that lines of concurrent threads do not interleave.
  ssize_t unused = ::write(STDERR_FILENO, s.data(), s.size());
  (void)unused;
}

bool EveryNSec(std::atomic<int64_t>& last_ns, double seconds) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const int64_t now = ts.tv_sec * 1000000000LL + ts.tv_nsec;
  int64_t last = last_ns.load(std::memory_order_relaxed);
  if (last != 0 && now - last < static_cast<int64_t>(seconds * 1e9)) return false;
  return last_ns.compare_exchange_strong(last, now);
}

}  // namespace shunt::log
