#include "tests/test_certs.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace shunt::test {

using namespace std::chrono_literals;

std::string ReadWholeFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

namespace {
constexpr char kOpensslConfig[] = R"(
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[wrong_ip_server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.2
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectAltName = DNS:node-a
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
)";

}  // namespace

Certs::Certs() {
  char t[] = "/tmp/shunt-tls-XXXXXX";
  if (mkdtemp(t) == nullptr) {
    error_ = "mkdtemp failed";
    return;
  }
  dir_ = t;
  if (!(std::ofstream(Path("openssl.cnf")) << kOpensslConfig)) {
    error_ = "cannot write " + Path("openssl.cnf");
    return;
  }
  // ca: signs the controller's and the agent's certificates; other_ca: unrelated.
  // wrong_ip_server: from the right CA, but for 127.0.0.2, not the address dialled.
  if (!MakeCa("ca", "shunt-test-ca") || !MakeCa("other_ca", "unrelated-ca") ||
      !MakeLeaf("server", "shunt-controller", "ca", "server_ext", 2) ||
      !MakeLeaf("wrong_ip_server", "shunt-controller", "ca", "wrong_ip_server_ext", 5) ||
      !MakeLeaf("client", "node-a", "ca", "client_ext", 3) ||
      !MakeLeaf("rogue_client", "node-a", "other_ca", "client_ext", 4)) {
    return;
  }
}

Certs::~Certs() {
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

bool Certs::MakeCa(const std::string& name, const std::string& cn) {
  return Openssl({"req", "-x509", "-config", Path("openssl.cnf"), "-extensions", "ca_ext",
                  "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
                  Path(name + ".key"), "-out", Path(name + ".crt"), "-days", "2", "-subj",
                  "/CN=" + cn});
}

bool Certs::MakeLeaf(const std::string& name, const std::string& cn, const std::string& ca,
                     const std::string& ext, int serial) {
  return Openssl({"req", "-new", "-config", Path("openssl.cnf"), "-newkey", "ec", "-pkeyopt",
                  "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", Path(name + ".key"), "-out",
                  Path(name + ".csr"), "-subj", "/CN=" + cn}) &&
         Openssl({"x509", "-req", "-in", Path(name + ".csr"), "-CA", Path(ca + ".crt"), "-CAkey",
                  Path(ca + ".key"), "-set_serial", std::to_string(serial), "-days", "2",
                  "-extfile", Path("openssl.cnf"), "-extensions", ext, "-out",
                  Path(name + ".crt")});
}

// Runs openssl with these arguments (no shell), output to openssl.log; bounded to 30 s.
bool Certs::Openssl(std::vector<std::string> args) {
  args.insert(args.begin(), "openssl");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string log = Path("openssl.log");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid;
  int rc = posix_spawnp(&pid, "openssl", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  std::string cmd;
  for (const auto& a : args) cmd += a + " ";
  if (rc != 0) {
    error_ = "cannot run openssl (is the openssl package installed?): " + std::string(strerror(rc));
    return false;
  }
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  int status = 0;
  while (true) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) {
      error_ = "waitpid: " + std::string(strerror(errno));
      return false;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      error_ = "timed out: " + cmd;
      return false;
    }
    std::this_thread::sleep_for(5ms);
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    error_ = "failed: " + cmd + "\n" + ReadWholeFile(log);
    return false;
  }
  return true;
}

}  // namespace shunt::test
