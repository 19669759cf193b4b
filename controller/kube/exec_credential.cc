#include "controller/kube/exec_credential.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace shunt::controller {
namespace {

constexpr size_t kMaxOutput = 1 << 20;

std::string Tail(const std::string& s, size_t n = 500) {
  std::string t(absl::StripAsciiWhitespace(s));
  return t.size() <= n ? t : "..." + t.substr(t.size() - n);
}

}  // namespace

absl::StatusOr<ExecCredential> ParseExecCredential(const std::string& text,
                                                   const std::string& api_version) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError("its output is not a JSON object");
  if (j.value("kind", "") != "ExecCredential") {
    return absl::InvalidArgumentError("its output is not an ExecCredential (kind)");
  }
  if (j.value("apiVersion", "") != api_version) {
    return absl::InvalidArgumentError(absl::StrCat("it answered apiVersion '",
                                                   j.value("apiVersion", ""), "', the kubeconfig ",
                                                   "asks for '", api_version, "'"));
  }
  auto status = j.find("status");
  if (status == j.end() || !status->is_object()) {
    return absl::InvalidArgumentError("its ExecCredential has no status");
  }
  auto str = [&](const char* key) {
    auto it = status->find(key);
    return it != status->end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  ExecCredential out;
  out.token = str("token");
  out.client_cert_pem = str("clientCertificateData");
  out.client_key_pem = str("clientKeyData");
  if (out.client_cert_pem.empty() != out.client_key_pem.empty()) {
    return absl::InvalidArgumentError(
        "its ExecCredential has only one of clientCertificateData and clientKeyData");
  }
  if (out.token.empty() && out.client_cert_pem.empty()) {
    return absl::InvalidArgumentError(
        "its ExecCredential has neither a token nor a client certificate");
  }
  if (const std::string exp = str("expirationTimestamp"); !exp.empty()) {
    std::string err;
    if (!absl::ParseTime(absl::RFC3339_full, exp, &out.expiry, &err)) {
      return absl::InvalidArgumentError(
          absl::StrCat("its expirationTimestamp '", exp, "' is not RFC 3339: ", err));
    }
  }
  return out;
}

absl::StatusOr<ExecCredential> RunExecCredential(const ExecConfig& config,
                                                 absl::Duration timeout,
                                                 const std::atomic<bool>* cancel) {
  const std::string what = absl::StrCat("kubeconfig exec plugin '", config.command, "'");
  if (config.api_version != "client.authentication.k8s.io/v1" &&
      config.api_version != "client.authentication.k8s.io/v1beta1") {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": apiVersion '", config.api_version,
                     "' is not client.authentication.k8s.io/v1 or v1beta1"));
  }
  if (config.interactive_mode == "Always") {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " needs a terminal (interactiveMode: Always); the controller has none"));
  }
  // Environment: ours, then the configured variables, then KUBERNETES_EXEC_INFO.
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.emplace_back(*e);
  auto set = [&env](const std::string& name, const std::string& value) {
    const std::string prefix = name + "=";
    for (auto& e : env) {
      if (e.compare(0, prefix.size(), prefix) == 0) {
        e = prefix + value;
        return;
      }
    }
    env.push_back(prefix + value);
  };
  for (const auto& [k, v] : config.env) set(k, v);
  nlohmann::json info = {{"apiVersion", config.api_version},
                         {"kind", "ExecCredential"},
                         {"spec", {{"interactive", false}}}};
  set("KUBERNETES_EXEC_INFO", info.dump());
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = {config.command};
  args.insert(args.end(), config.args.begin(), config.args.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe: " + std::string(strerror(errno)));
  if (pipe2(err, O_CLOEXEC) != 0) {
    close(out[0]);
    close(out[1]);
    return absl::InternalError("pipe: " + std::string(strerror(errno)));
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa, err[1], STDERR_FILENO);
  // The plugin gets default signal handling and no blocked signals (the controller blocks
  // SIGTERM/SIGINT in its threads), in a process group of its own so that a timeout kills
  // whatever it started too.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD}) sigaddset(&defaults, sig);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
  pid_t pid;
  const int rc = posix_spawnp(&pid, config.command.c_str(), &fa, &attr, argv.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  close(out[1]);
  close(err[1]);
  if (rc != 0) {
    close(out[0]);
    close(err[0]);
    return absl::NotFoundError(absl::StrCat(what, " cannot be run: ", strerror(rc)));
  }
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  std::string stdout_text, stderr_text;
  bool overflow = false;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  // Reads what is there now; false once both pipes are closed.
  auto drain = [&]() {
    for (int i = 0; i < 2; ++i) {
      while (fds[i].fd >= 0) {
        char buf[4096];
        const ssize_t n = read(fds[i].fd, buf, sizeof(buf));
        if (n > 0) {
          std::string& dst = i == 0 ? stdout_text : stderr_text;
          if (dst.size() + static_cast<size_t>(n) > kMaxOutput) {
            overflow = overflow || i == 0;
          } else {
            dst.append(buf, static_cast<size_t>(n));
          }
          continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) fds[i].fd = -1;  // closed
        break;
      }
    }
    return fds[0].fd >= 0 || fds[1].fd >= 0;
  };
  // Until the plugin exits (not until its pipes close: a helper it leaves behind may hold them)
  // or the deadline passes.
  const absl::Time deadline = absl::Now() + timeout;
  bool timed_out = false, cancelled = false;
  int wstatus = 0;
  while (true) {
    const pid_t w = waitpid(pid, &wstatus, WNOHANG);
    if (w == pid || (w < 0 && errno != EINTR)) break;
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    cancelled = cancel != nullptr && cancel->load();
    if (left <= 0 || cancelled) {
      timed_out = !cancelled;
      kill(-pid, SIGKILL);  // the plugin's process group
      while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    const int wait_ms = static_cast<int>(std::min<int64_t>(left, 20));
    if (drain()) {
      poll(fds, 2, wait_ms);
    } else {
      usleep(static_cast<useconds_t>(wait_ms) * 1000);
    }
  }
  drain();  // what it wrote before exiting
  close(out[0]);
  close(err[0]);
  if (cancelled) return absl::CancelledError(absl::StrCat(what, " stopped: shutting down"));
  if (timed_out) {
    return absl::DeadlineExceededError(
        absl::StrCat(what, " did not answer within ", absl::FormatDuration(timeout)));
  }
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    return absl::UnavailableError(absl::StrCat(
        what, " failed (",
        WIFEXITED(wstatus) ? absl::StrCat("exit ", WEXITSTATUS(wstatus))
                           : absl::StrCat("signal ", WTERMSIG(wstatus)),
        "): ", Tail(stderr_text)));
  }
  if (overflow) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " printed more than ", kMaxOutput, " bytes"));
  }
  auto cred = ParseExecCredential(stdout_text, config.api_version);
  if (!cred.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", cred.status().message()));
  }
  return cred;
}

}  // namespace shunt::controller
