// What the relay's tests (relay_test.cc, relay_h2_test.cc) share: loopback sockets, blocking
// reads and writes, child processes.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "agent/proxy/l7_session.h"
#include "common/unique_fd.h"

namespace shunt::agent {

inline sockaddr_storage Loopback(uint16_t port) {
  sockaddr_storage ss{};
  auto* a = reinterpret_cast<sockaddr_in*>(&ss);
  a->sin_family = AF_INET;
  a->sin_port = htons(port);
  a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return ss;
}

inline uint16_t PortOf(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

inline UniqueFd Listen(bool nonblocking) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | (nonblocking ? SOCK_NONBLOCK : 0) | SOCK_CLOEXEC, 0));
  sockaddr_storage a = Loopback(0);
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(sockaddr_in)), 0);
  EXPECT_EQ(listen(fd.get(), 4096), 0);
  return fd;
}

inline UniqueFd Connect(uint16_t port) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_storage a = Loopback(port);
  EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(sockaddr_in)), 0);
  timeval tv{10, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

inline std::string ReadAll(int fd, int* err = nullptr) {
  std::string out;
  char buf[65536];
  while (true) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
      out.append(buf, n);
      continue;
    }
    if (err) *err = n < 0 ? errno : 0;
    return out;
  }
}

inline void WriteAll(int fd, const std::string& s) {
  for (size_t off = 0; off < s.size();) {
    const ssize_t n = write(fd, s.data() + off, s.size() - off);
    ASSERT_GT(n, 0) << strerror(errno);
    off += n;
  }
}

// A child process killed (and reaped) when it goes out of scope.
struct Child {
  pid_t pid = -1;
  ~Child() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
};

// Runs a shell command; its standard output.
inline std::string Output(const std::string& command) {
  std::string out;
  FILE* f = popen(command.c_str(), "r");
  if (!f) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  pclose(f);
  return out;
}

// The tests' L7 rule, as a policy "test/no-admin" would make it: requests whose path starts with
// /admin, or is `also` (a gRPC method), are denied.
inline L7Authorize DenyAdmin(std::string also = "") {
  return [also](const L7Request& r) {
    L7Verdict v;
    v.allow = !r.path.starts_with("/admin") && (also.empty() || r.path != also);
    v.policy = "test/no-admin";
    return v;
  };
}

// An exchange sink that keeps every record under `mu`.
inline ExchangeSink RecordInto(absl::Mutex& mu, std::vector<ExchangeRecord>& records) {
  return [&mu, &records](const ExchangeRecord& r) {
    absl::MutexLock l(&mu);
    records.push_back(r);
  };
}

// nginx's configuration (one process, files under `dir`) for an h2c origin (HTTP/2 with prior
// knowledge) on `listen` ("address:port"): every path answers 200 "hello <path>\n", but
// /files/<name>, which is `dir`/files/<name>.
inline std::string NginxH2Config(const std::string& dir, const std::string& listen) {
  return "pid " + dir + "/nginx.pid;\nuser root;\nworker_processes 1;\nmaster_process off;\n"
         "daemon off;\nerror_log " + dir + "/error.log;\nevents { worker_connections 1024; }\n"
         "http {\n  access_log off;\n  client_body_temp_path " + dir + "/body;\n"
         "  proxy_temp_path " + dir + "/proxy;\n  fastcgi_temp_path " + dir + "/fastcgi;\n"
         "  uwsgi_temp_path " + dir + "/uwsgi;\n  scgi_temp_path " + dir + "/scgi;\n"
         "  server {\n    listen " + listen + " http2;\n"
         "    location / { default_type text/plain; return 200 \"hello $uri\\n\"; }\n"
         "    location /files/ { root " + dir + "; }\n  }\n}\n";
}

}  // namespace shunt::agent
