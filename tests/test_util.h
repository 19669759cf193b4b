// Helpers shared by the tests (header-only): bounded polling and self-removing temp directories.
#pragma once

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <thread>

namespace shunt::test {

// Polls `f` until it holds or `timeout` passes; returns its last value. Tests never sleep blindly.
template <typename F>
bool Eventually(F f, std::chrono::milliseconds timeout = std::chrono::seconds(10),
                std::chrono::milliseconds poll = std::chrono::milliseconds(5)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (f()) return true;
    std::this_thread::sleep_for(poll);
  }
  return f();
}

// A unique directory under /tmp, removed with everything in it when the test ends, pass or fail.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "shunt-test") {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    if (const char* p = ::mkdtemp(tmpl.data())) path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  // Writes `text` to path()/name (replacing it) and returns that path.
  std::string Write(const std::string& name, const std::string& text) const {
    const std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
    return p;
  }

 private:
  std::string path_;
};

}  // namespace shunt::test
