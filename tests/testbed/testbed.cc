#include "tests/testbed/testbed.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "common/unique_fd.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/errno_status.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace shunt::testbed {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr char kNetnsDir[] = "/run/netns";
constexpr char kBpffsShuntDir[] = "/sys/fs/bpf/shunt";
constexpr char kTmpDir[] = "/tmp";
constexpr char kNodePidsFile[] = "node-pids";
constexpr std::chrono::milliseconds kIpTimeout{15000};
constexpr std::chrono::milliseconds kCgroupBusyTimeout{3000};

// Live test beds, torn down by the SIGINT/SIGTERM handler.
std::mutex g_registry_mu;
std::vector<Testbed*>& Registry() {
  static auto* registry = new std::vector<Testbed*>();
  return *registry;
}

using Fd = shunt::UniqueFd;  // an owned file descriptor

std::string RandomHex(int chars) {
  std::random_device rd;
  std::string out;
  static constexpr char kDigits[] = "0123456789abcdef";
  while (static_cast<int>(out.size()) < chars) {
    uint32_t v = rd();
    for (int i = 0; i < 8 && static_cast<int>(out.size()) < chars; ++i, v >>= 4) {
      out.push_back(kDigits[v & 0xf]);
    }
  }
  return out;
}

// A random (version 4) UUID, the form of a kubelet pod UID.
std::string NewUuid() {
  std::string h = RandomHex(32);
  h[12] = '4';
  h[16] = "89ab"[std::stoi(h.substr(16, 1), nullptr, 16) & 3];
  return absl::StrCat(h.substr(0, 8), "-", h.substr(8, 4), "-", h.substr(12, 4), "-",
                      h.substr(16, 4), "-", h.substr(20, 12));
}

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteFile(const std::string& path, absl::string_view content, int flags = O_TRUNC) {
  Fd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0644));
  if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("open ", path));
  size_t done = 0;
  while (done < content.size()) {
    ssize_t n = write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, absl::StrCat("write ", path));
    done += n;
  }
  return absl::OkStatus();
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

bool PidAlive(pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

// Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat); 0 if gone.
uint64_t ProcessStartTime(pid_t pid) {
  std::optional<std::string> stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  if (!stat) return 0;
  size_t paren = stat->rfind(')');
  if (paren == std::string::npos) return 0;
  std::vector<absl::string_view> f =
      absl::StrSplit(absl::string_view(*stat).substr(paren + 1), ' ', absl::SkipEmpty());
  // f[0] is field 3 (state), so field 22 is f[19].
  uint64_t start = 0;
  if (f.size() < 20 || !absl::SimpleAtoi(f[19], &start)) return 0;
  return start;
}

// Kills `pid` if it is still the process that started at `start_time`.
void KillIfSame(pid_t pid, uint64_t start_time) {
  if (start_time != 0 && ProcessStartTime(pid) == start_time) kill(pid, SIGKILL);
}

absl::StatusOr<std::string> ResolveBinary(const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("empty argv[0]");
  if (name.find('/') != std::string::npos) {
    if (access(name.c_str(), X_OK) != 0) return ErrnoStatus(errno, absl::StrCat("exec ", name));
    return name;
  }
  const char* env = getenv("PATH");
  std::string path = absl::StrCat(env ? env : "/usr/bin:/bin", ":/usr/local/sbin:/usr/sbin:/sbin");
  for (absl::string_view dir : absl::StrSplit(path, ':', absl::SkipEmpty())) {
    std::string candidate = absl::StrCat(dir, "/", name);
    struct stat st;
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return absl::NotFoundError(absl::StrCat(name, " not found in PATH"));
}

std::vector<char*> CArgv(const std::vector<std::string>& argv) {
  std::vector<char*> out;
  out.reserve(argv.size() + 1);
  for (const std::string& a : argv) out.push_back(const_cast<char*>(a.c_str()));
  out.push_back(nullptr);
  return out;
}

// In a forked child before exec: no handler or mask of the parent (a test harness's SIGINT
// teardown, an ignored SIGPIPE) leaks into the new program. Async-signal-safe calls only.
void ResetSignalsInChild() {
  for (int sig : {SIGINT, SIGTERM, SIGPIPE, SIGCHLD, SIGHUP, SIGQUIT}) signal(sig, SIG_DFL);
  sigset_t all;
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, nullptr);
}

int ExitCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1;
}

pid_t WaitPidNoIntr(pid_t pid, int* status, int flags) {
  pid_t r;
  do {
    r = waitpid(pid, status, flags);
  } while (r < 0 && errno == EINTR);
  return r;
}

// Runs argv to completion in the caller's namespaces, capturing stdout and stderr.
absl::StatusOr<Output> Exec(const std::vector<std::string>& argv,
                            std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(std::string path, ResolveBinary(argv.at(0)));
  std::vector<char*> cargv = CArgv(argv);
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  Fd out_r(out_pipe[0]), out_w(out_pipe[1]);
  if (pipe2(err_pipe, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  Fd err_r(err_pipe[0]), err_w(err_pipe[1]);
  Fd devnull(open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!devnull.valid()) return ErrnoStatus(errno, "open /dev/null");

  pid_t pid = fork();
  if (pid < 0) return ErrnoStatus(errno, "fork");
  if (pid == 0) {
    ResetSignalsInChild();
    if (dup2(devnull.get(), 0) < 0 || dup2(out_w.get(), 1) < 0 || dup2(err_w.get(), 2) < 0) {
      _exit(126);
    }
    execv(path.c_str(), cargv.data());
    _exit(127);
  }
  out_w.Reset();
  err_w.Reset();

  Output result;
  const auto deadline = Clock::now() + timeout;
  bool out_open = true, err_open = true, timed_out = false;
  char buf[4096];
  while (out_open || err_open) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    struct pollfd pfds[2] = {{out_open ? out_r.get() : -1, POLLIN, 0},
                             {err_open ? err_r.get() : -1, POLLIN, 0}};
    int n = poll(pfds, 2, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < 2 && n > 0; ++i) {
      if (pfds[i].revents == 0) continue;
      ssize_t r = read(pfds[i].fd, buf, sizeof(buf));
      if (r > 0) {
        (i == 0 ? result.out : result.err).append(buf, r);
      } else if (r == 0 || errno != EINTR) {
        (i == 0 ? out_open : err_open) = false;
      }
    }
  }
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  if (WaitPidNoIntr(pid, &status, 0) < 0) return ErrnoStatus(errno, "waitpid");
  if (timed_out) {
    return absl::DeadlineExceededError(
        absl::StrCat(absl::StrJoin(argv, " "), ": timed out after ", timeout.count(), " ms"));
  }
  result.exit_code = ExitCode(status);
  return result;
}

absl::Status Ip(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  ASSIGN_OR_RETURN(Output out, Exec(argv, kIpTimeout));
  if (out.exit_code != 0) {
    return absl::InternalError(absl::StrCat(absl::StrJoin(argv, " "), " failed (exit ",
                                            out.exit_code, "): ", out.err, out.out));
  }
  return absl::OkStatus();
}

bool NetnsExists(const std::string& name) { return Exists(absl::StrCat(kNetnsDir, "/", name)); }

void DeleteNetns(const std::string& name) {
  if (name.empty() || !NetnsExists(name)) return;
  absl::Status s = Ip({"netns", "del", name});
  if (!s.ok()) {
    SHUNT_LOG(WARNING) << "testbed: " << s;
  }
}

// Writes sysctl values (paths under /proc/sys/net) inside `netns`: /proc/sys/net shows the
// namespace of the task that opens it, so a child setns()es there first.
absl::Status WriteSysctls(const std::string& netns,
                          const std::vector<std::pair<std::string, std::string>>& values) {
  std::string ns_path = absl::StrCat(kNetnsDir, "/", netns);
  Fd ns(open(ns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!ns.valid()) return ErrnoStatus(errno, absl::StrCat("open ", ns_path));
  pid_t pid = fork();
  if (pid < 0) return ErrnoStatus(errno, "fork");
  if (pid == 0) {
    if (setns(ns.get(), CLONE_NEWNET) != 0) _exit(100);
    for (size_t i = 0; i < values.size(); ++i) {
      int fd = open(values[i].first.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0) _exit(101 + static_cast<int>(i));
      const std::string& v = values[i].second;
      if (write(fd, v.data(), v.size()) != static_cast<ssize_t>(v.size())) {
        _exit(101 + static_cast<int>(i));
      }
      close(fd);
    }
    _exit(0);
  }
  int status = 0;
  if (WaitPidNoIntr(pid, &status, 0) < 0) return ErrnoStatus(errno, "waitpid");
  int code = ExitCode(status);
  if (code == 0) return absl::OkStatus();
  if (code == 100) return absl::InternalError(absl::StrCat("setns into ", netns, " failed"));
  size_t i = code - 101;
  return absl::InternalError(absl::StrCat(
      "writing ", i < values.size() ? values[i].first : "sysctl", " in ", netns, " failed"));
}

// Waits until every veth and every bridge with ports that is administratively up in `netns` is
// operationally up, and every bridge port forwards. The kernel applies carrier changes
// asynchronously (linkwatch delays some by up to a second): until then a bridge drops what it
// would forward through a port, and a bridge has not joined its IPv6 solicited-node groups (its
// addresses were added before it had a carrier), so neighbor solicitations to it are lost.
absl::Status WaitLinksReady(const std::string& netns, Clock::time_point deadline) {
  std::string pending;
  while (true) {
    ASSIGN_OR_RETURN(Output out, Exec({"ip", "-n", netns, "-d", "-j", "link", "show"}, kIpTimeout));
    if (out.exit_code != 0) {
      return absl::InternalError(absl::StrCat("ip -n ", netns, " link show: ", out.err));
    }
    pending.clear();
    try {
      const nlohmann::json links = nlohmann::json::parse(out.out);
      std::vector<std::string> masters;
      for (const nlohmann::json& link : links) masters.push_back(link.value("master", ""));
      for (const nlohmann::json& link : links) {
        const nlohmann::json flags = link.value("flags", nlohmann::json::array());
        if (std::find(flags.begin(), flags.end(), "UP") == flags.end()) continue;
        const nlohmann::json info = link.value("linkinfo", nlohmann::json::object());
        const std::string name = link.value("ifname", "?");
        const std::string kind = info.value("info_kind", "");
        const bool has_ports = std::find(masters.begin(), masters.end(), name) != masters.end();
        const std::string operstate = link.value("operstate", "");
        if ((kind == "veth" && operstate != "UP") ||
            (kind == "bridge" && has_ports && operstate == "DOWN")) {
          absl::StrAppend(&pending, name, " is ", link.value("operstate", "?"), "; ");
        }
        if (info.value("info_slave_kind", "") == "bridge") {
          const std::string state =
              info.value("info_slave_data", nlohmann::json::object()).value("state", "");
          if (state != "forwarding") absl::StrAppend(&pending, name, " port is ", state, "; ");
        }
      }
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("parsing ip -j link output: ", e.what()));
    }
    if (pending.empty()) return absl::OkStatus();
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("links of ", netns, " not ready: ", pending));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Kills every process in the cgroup subtree at `path` and waits (briefly) until it is empty.
void KillCgroupTree(const std::string& path) {
  if (!Exists(path)) return;
  std::string kill_file = path + "/cgroup.kill";
  if (!Exists(kill_file) || !WriteFile(kill_file, "1").ok()) {
    std::error_code ec;
    std::vector<std::string> dirs = {path};
    for (auto it = fs::recursive_directory_iterator(path, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_directory(ec)) dirs.push_back(it->path().string());
    }
    for (const std::string& dir : dirs) {
      std::optional<std::string> procs = ReadFile(dir + "/cgroup.procs");
      if (!procs) continue;
      for (absl::string_view line : absl::StrSplit(*procs, '\n', absl::SkipEmpty())) {
        pid_t pid = 0;
        if (absl::SimpleAtoi(line, &pid) && pid > 0) kill(pid, SIGKILL);
      }
    }
  }
  const auto deadline = Clock::now() + kCgroupBusyTimeout;
  while (Clock::now() < deadline) {
    std::optional<std::string> events = ReadFile(path + "/cgroup.events");
    if (!events || absl::StrContains(*events, "populated 0")) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  SHUNT_LOG(WARNING) << "testbed: cgroup " << path << " still populated after kill";
}

// rmdir()s the cgroup tree at `path`, deepest first (cgroup dirs hold only kernel files).
void RemoveCgroupTree(const std::string& path) {
  if (!Exists(path)) return;
  std::vector<std::string> dirs = {path};
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(path, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_directory(ec) && !it->is_symlink(ec)) dirs.push_back(it->path().string());
  }
  // Longer paths are deeper: remove children before parents.
  std::sort(dirs.begin(), dirs.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  for (const std::string& dir : dirs) {
    const auto deadline = Clock::now() + kCgroupBusyTimeout;
    while (rmdir(dir.c_str()) != 0 && errno != ENOENT) {
      if (errno != EBUSY || Clock::now() >= deadline) {
        SHUNT_LOG(WARNING) << "testbed: rmdir " << dir << ": " << std::strerror(errno);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
}

void RemoveAll(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) {
    SHUNT_LOG(WARNING) << "testbed: remove " << path << ": " << ec.message();
  }
}

// Parses "<prefix>-<pid>-<hex>[-rest]" into the run id "<prefix>-<pid>-<hex>" and its pid.
// With `exact`, nothing may follow the hex part.
bool ParseRunName(absl::string_view name, const std::string& prefix, bool exact, pid_t* pid,
                  std::string* run_id) {
  absl::string_view rest = name;
  if (!absl::ConsumePrefix(&rest, prefix) || !absl::ConsumePrefix(&rest, "-")) return false;
  size_t dash = rest.find('-');
  if (dash == absl::string_view::npos || dash == 0) return false;
  absl::string_view pid_part = rest.substr(0, dash);
  if (!std::all_of(pid_part.begin(), pid_part.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      !absl::SimpleAtoi(pid_part, pid)) {
    return false;
  }
  rest.remove_prefix(dash + 1);
  size_t hex_len = 0;
  while (hex_len < rest.size() && std::isxdigit(static_cast<unsigned char>(rest[hex_len]))) {
    ++hex_len;
  }
  if (hex_len < 4) return false;
  if (hex_len < rest.size() && (exact || rest[hex_len] != '-')) return false;
  *run_id = std::string(name.substr(0, name.size() - rest.size() + hex_len));
  return true;
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  return names;
}

// Names of all network namespaces under /run/netns (first word of `ip netns list` lines).
std::vector<std::string> ListNetns() {
  std::vector<std::string> names;
  absl::StatusOr<Output> out = Exec({"ip", "netns", "list"}, kIpTimeout);
  if (!out.ok() || out->exit_code != 0) return ListDir(kNetnsDir);
  for (absl::string_view line : absl::StrSplit(out->out, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (!words.empty()) names.emplace_back(words[0]);
  }
  return names;
}

void KillListedNodeProcesses(const std::string& work_dir) {
  std::optional<std::string> pids = ReadFile(absl::StrCat(work_dir, "/", kNodePidsFile));
  if (!pids) return;
  for (absl::string_view line : absl::StrSplit(*pids, '\n', absl::SkipEmpty())) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    pid_t pid = 0;
    uint64_t start = 0;
    if (f.size() == 2 && absl::SimpleAtoi(f[0], &pid) && absl::SimpleAtoi(f[1], &start)) {
      KillIfSame(pid, start);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Process

Process::Process(pid_t pid, std::string stdout_path, std::string stderr_path)
    : pid_(pid), stdout_path_(std::move(stdout_path)), stderr_path_(std::move(stderr_path)) {}

Process::~Process() {
  if (status_.has_value() || pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  WaitPidNoIntr(pid_, &status, 0);
}

absl::StatusOr<int> Process::Wait(std::chrono::milliseconds timeout) {
  if (status_.has_value()) return *status_;
  const auto deadline = Clock::now() + timeout;
  auto nap = std::chrono::milliseconds(1);
  while (true) {
    int status = 0;
    pid_t r = WaitPidNoIntr(pid_, &status, WNOHANG);
    if (r == pid_) {
      status_ = status;
      return status;
    }
    if (r < 0) return ErrnoStatus(errno, absl::StrCat("waitpid ", pid_));
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("process ", pid_, " still running after ", timeout.count(), " ms"));
    }
    std::this_thread::sleep_for(nap);
    nap = std::min(nap * 2, std::chrono::milliseconds(20));
  }
}

absl::StatusOr<int> Process::Stop(int sig, std::chrono::milliseconds timeout) {
  if (status_.has_value()) return *status_;
  kill(pid_, sig);
  absl::StatusOr<int> status = Wait(timeout);
  if (status.ok() || !absl::IsDeadlineExceeded(status.status())) return status;
  kill(pid_, SIGKILL);
  return Wait(std::chrono::seconds(10));
}

bool Process::Running() {
  if (status_.has_value()) return false;
  return absl::IsDeadlineExceeded(Wait(std::chrono::milliseconds(0)).status());
}

std::string Process::Stdout() const { return ReadFile(stdout_path_).value_or(""); }
std::string Process::Stderr() const { return ReadFile(stderr_path_).value_or(""); }

// ---------------------------------------------------------------------------------------------
// Testbed: creation

absl::StatusOr<std::unique_ptr<Testbed>> Testbed::Create(const Options& options) {
  ReapStale(options.prefix);
  std::unique_ptr<Testbed> tb(new Testbed());
  {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    Registry().push_back(tb.get());
  }
  absl::Status s = tb->Build(options);
  if (!s.ok()) {
    tb->Teardown();
    return s;
  }
  return tb;
}

absl::Status Testbed::Build(const Options& options) {
  if (options.nodes < 1 || options.nodes > 250) {
    return absl::InvalidArgumentError("nodes must be in [1, 250]");
  }
  if (options.pods_per_node < 0 || options.pods_per_node > 250) {
    return absl::InvalidArgumentError("pods_per_node must be in [0, 250]");
  }
  if (options.drivers.empty()) return absl::InvalidArgumentError("no cgroup driver given");
  if (options.prefix.empty() || options.prefix.find('/') != std::string::npos) {
    return absl::InvalidArgumentError("prefix must be non-empty and contain no '/'");
  }
  ASSIGN_OR_RETURN(std::string cgroup_mount, FindCgroup2Mount());

  run_id_ = absl::StrCat(options.prefix, "-", getpid(), "-", RandomHex(4));
  work_dir_ = absl::StrCat(kTmpDir, "/", run_id_);
  cgroup_run_dir_ = absl::StrCat(cgroup_mount, "/", run_id_);
  fabric_netns_ = run_id_ + "-fabric";

  // Plan every name first so that Teardown() can undo a half-built run.
  for (int i = 0; i < options.nodes; ++i) {
    Node node;
    node.index = i;
    node.name = absl::StrCat(run_id_, "-n", i);
    node.netns = node.name;
    node.ipv4 = absl::StrCat("198.19.0.", i + 1);
    node.driver = options.drivers[i % options.drivers.size()];
    const bool systemd = node.driver == CgroupDriver::kSystemd;
    node.cgroup_root =
        absl::StrCat(cgroup_run_dir_, "/", node.name, "/", systemd ? "kubepods.slice" : "kubepods");
    for (int j = 0; j < options.pods_per_node; ++j) {
      Pod pod;
      pod.node_index = i;
      pod.index = j;
      pod.uid = NewUuid();
      pod.name = absl::StrCat("pod-", i, "-", j);
      pod.netns = absl::StrCat(node.name, "-p", j);
      // The v6 groups use the same decimal digits as the v4 octets (valid hex, canonical form).
      pod.ipv4 = absl::StrCat("198.18.", i, ".", j + 2);
      pod.ipv6 = absl::StrCat("fd5a:", i + 1, "::", j + 2);
      PodCgroupPaths paths = PodCgroupsFor(node, pod.uid);
      pod.pod_cgroup = std::move(paths.pod);
      pod.container_cgroup = std::move(paths.container);
      pod.host_veth = absl::StrCat("veth", j);
      node.pods.push_back(std::move(pod));
    }
    nodes_.push_back(std::move(node));
  }

  if (mkdir(work_dir_.c_str(), 0755) != 0) return ErrnoStatus(errno, "mkdir " + work_dir_);

  // Cgroups, laid out as kubelet does.
  for (const Node& node : nodes_) {
    std::error_code ec;
    fs::create_directories(node.cgroup_root, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("mkdir ", node.cgroup_root, ": ", ec.message()));
    }
    for (const Pod& pod : node.pods) {
      fs::create_directories(pod.container_cgroup, ec);
      if (ec) {
        return absl::InternalError(
            absl::StrCat("mkdir ", pod.container_cgroup, ": ", ec.message()));
      }
    }
  }

  // Namespaces. Every veth is created inside a namespace with its peer sent straight to another
  // one: nothing ever appears in the host namespace.
  //
  // No IPv6 DAD on any interface, set before the interfaces exist: a node forwarding a packet
  // solicits the next hop from its link-local address, and silently sends nothing while that
  // address is still tentative (the first connection would stall for a retransmission).
  const std::vector<std::pair<std::string, std::string>> no_dad = {
      {"/proc/sys/net/ipv6/conf/all/accept_dad", "0"},
      {"/proc/sys/net/ipv6/conf/default/accept_dad", "0"}};
  RETURN_IF_ERROR(Ip({"netns", "add", fabric_netns_}));
  RETURN_IF_ERROR(WriteSysctls(fabric_netns_, no_dad));
  for (const Node& node : nodes_) {
    RETURN_IF_ERROR(Ip({"netns", "add", node.netns}));
    std::vector<std::pair<std::string, std::string>> sysctls = no_dad;
    sysctls.insert(sysctls.end(), {{"/proc/sys/net/ipv4/ip_forward", "1"},
                                   {"/proc/sys/net/ipv6/conf/all/forwarding", "1"},
                                   {"/proc/sys/net/ipv6/conf/default/forwarding", "1"},
                                   // Answer "unreachable" every time, not once a second per host:
                                   // tests expect a prompt failure.
                                   {"/proc/sys/net/ipv4/icmp_ratelimit", "0"},
                                   {"/proc/sys/net/ipv6/icmp/ratelimit", "0"}});
    RETURN_IF_ERROR(WriteSysctls(node.netns, sysctls));
    for (const Pod& pod : node.pods) {
      RETURN_IF_ERROR(Ip({"netns", "add", pod.netns}));
      RETURN_IF_ERROR(WriteSysctls(pod.netns, no_dad));
    }
  }
  // Bridges never snoop multicast: IPv6 neighbor solicitations must reach every port at once.
  const std::vector<std::string> fabric_setup = {
      "link set lo up", "link add br0 type bridge mcast_snooping 0", "link set br0 up"};
  RETURN_IF_ERROR(IpBatch(fabric_netns_, fabric_setup));

  std::vector<std::string> fabric_lines;
  for (const Node& node : nodes_) {
    const int i = node.index;
    const std::string uplink_peer = absl::StrCat("n", i);
    // Creation order matters: no veth may get the same ifindex as its peer has in the other
    // namespace, or the kernel treats its carrier change as non-urgent and applies it up to a
    // second later (linkwatch). So the uplink comes first here (fabric: br0 first), and pods'
    // veths come after br0.
    std::vector<std::string> lines = {
        "link set lo up",
        absl::StrCat("link add uplink type veth peer name ", uplink_peer, " netns ", fabric_netns_),
        absl::StrCat("addr add ", node.ipv4, "/24 dev uplink"),
        absl::StrCat("addr add fd5a:ffff::", i + 1, "/64 dev uplink nodad"),
        "link set uplink up",
        "link add br0 type bridge mcast_snooping 0",
        absl::StrCat("addr add 198.18.", i, ".1/24 dev br0"),
        absl::StrCat("addr add fd5a:", i + 1, "::1/64 dev br0 nodad"),
        "link set br0 up",
    };
    for (const Node& other : nodes_) {
      if (other.index == i) continue;
      const int k = other.index;
      lines.push_back(absl::StrCat("route add 198.18.", k, ".0/24 via ", other.ipv4));
      lines.push_back(absl::StrCat("route add fd5a:", k + 1, "::/64 via fd5a:ffff::", k + 1));
    }
    for (const Pod& pod : node.pods) {
      lines.push_back(
          absl::StrCat("link add ", pod.host_veth, " type veth peer name eth0 netns ", pod.netns));
      lines.push_back(absl::StrCat("link set ", pod.host_veth, " master br0"));
      lines.push_back(absl::StrCat("link set ", pod.host_veth, " up"));
    }
    RETURN_IF_ERROR(IpBatch(node.netns, lines));
    fabric_lines.push_back(absl::StrCat("link set ", uplink_peer, " master br0"));
    fabric_lines.push_back(absl::StrCat("link set ", uplink_peer, " up"));

    for (const Pod& pod : node.pods) {
      // The only default routes of the test bed: pod to node (the node has none).
      const std::vector<std::string> pod_lines = {
          "link set lo up",
          absl::StrCat("addr add ", pod.ipv4, "/24 dev eth0"),
          absl::StrCat("addr add ", pod.ipv6, "/64 dev eth0 nodad"),
          "link set eth0 up",
          absl::StrCat("route add default via 198.18.", i, ".1 dev eth0"),
          absl::StrCat("route add ::/0 via fd5a:", i + 1, "::1 dev eth0"),
      };
      RETURN_IF_ERROR(IpBatch(pod.netns, pod_lines));
    }
  }
  RETURN_IF_ERROR(IpBatch(fabric_netns_, fabric_lines));

  const auto deadline = Clock::now() + std::chrono::seconds(10);
  RETURN_IF_ERROR(WaitLinksReady(fabric_netns_, deadline));
  for (const Node& node : nodes_) {
    RETURN_IF_ERROR(WaitLinksReady(node.netns, deadline));
    for (const Pod& pod : node.pods) RETURN_IF_ERROR(WaitLinksReady(pod.netns, deadline));
  }
  SHUNT_LOG(INFO) << "testbed " << run_id_ << ": " << nodes_.size() << " nodes x "
                  << options.pods_per_node << " pods up (work dir " << work_dir_ << ")";
  return absl::OkStatus();
}

absl::Status Testbed::IpBatch(const std::string& netns, const std::vector<std::string>& lines) {
  if (lines.empty()) return absl::OkStatus();
  std::string file = absl::StrCat(work_dir_, "/ip-", seq_.fetch_add(1), ".batch");
  RETURN_IF_ERROR(WriteFile(file, absl::StrCat(absl::StrJoin(lines, "\n"), "\n")));
  absl::Status s = Ip({"-n", netns, "-batch", file});
  if (!s.ok()) {
    return absl::Status(s.code(),
                        absl::StrCat(s.message(), " [batch: ", absl::StrJoin(lines, "; "), "]"));
  }
  unlink(file.c_str());
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Testbed: teardown

Testbed::~Testbed() { Teardown(); }

void Testbed::Teardown() {
  {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    auto& reg = Registry();
    reg.erase(std::remove(reg.begin(), reg.end(), this), reg.end());
  }
  TeardownResources();
}

void Testbed::TeardownResources() {
  if (teardown_started_.exchange(true)) return;
  if (run_id_.empty()) {
    torn_down_ = true;
    return;
  }
  // Processes first: a namespace outlives its unmount while a process is still in it.
  if (!cgroup_run_dir_.empty()) KillCgroupTree(cgroup_run_dir_);
  {
    std::lock_guard<std::mutex> lock(node_procs_mu_);
    for (const auto& [pid, start] : node_procs_) KillIfSame(pid, start);
  }
  if (!cgroup_run_dir_.empty()) RemoveCgroupTree(cgroup_run_dir_);
  for (const Node& node : nodes_) {
    for (const Pod& pod : node.pods) DeleteNetns(pod.netns);
  }
  for (const Node& node : nodes_) DeleteNetns(node.netns);
  DeleteNetns(fabric_netns_);
  for (const Node& node : nodes_) {
    std::string pins = absl::StrCat(kBpffsShuntDir, "/", node.name);
    if (Exists(pins)) RemoveAll(pins);
  }
  if (!work_dir_.empty() && Exists(work_dir_)) RemoveAll(work_dir_);
  torn_down_ = true;
  SHUNT_LOG(INFO) << "testbed " << run_id_ << ": torn down";
}

void Testbed::OnSignal(int sig) {
  // Best effort (this is a test tool): never hang here, SIGALRM's default action ends us.
  alarm(30);
  const bool locked = g_registry_mu.try_lock();
  for (Testbed* tb : Registry()) tb->TeardownResources();
  if (locked) g_registry_mu.unlock();
  // SA_RESETHAND restored the default action and SA_NODEFER lets this take effect right away.
  raise(sig);
}

void Testbed::InstallSignalTeardown() {
  static std::once_flag once;
  std::call_once(once, [] {
    Registry();  // constructed outside of the handler
    struct sigaction sa {};
    sa.sa_handler = &Testbed::OnSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
  });
}

void Testbed::ReapStale(const std::string& prefix) {
  if (prefix.empty()) return;
  auto stale = [&prefix](absl::string_view name, bool exact, std::string* run_id) {
    pid_t pid = 0;
    return ParseRunName(name, prefix, exact, &pid, run_id) && !PidAlive(pid);
  };
  std::string run_id;
  // Processes first, then everything that names the run.
  absl::StatusOr<std::string> mount = FindCgroup2Mount();
  std::vector<std::string> stale_cgroups;
  if (mount.ok()) {
    for (const std::string& name : ListDir(*mount)) {
      if (stale(name, /*exact=*/true, &run_id)) {
        stale_cgroups.push_back(absl::StrCat(*mount, "/", name));
        KillCgroupTree(stale_cgroups.back());
      }
    }
  }
  std::vector<std::string> stale_tmp;
  for (const std::string& name : ListDir(kTmpDir)) {
    if (stale(name, /*exact=*/true, &run_id)) {
      stale_tmp.push_back(absl::StrCat(kTmpDir, "/", name));
      KillListedNodeProcesses(stale_tmp.back());
    }
  }
  for (const std::string& dir : stale_cgroups) {
    SHUNT_LOG(INFO) << "testbed: reaping stale cgroup " << dir;
    RemoveCgroupTree(dir);
  }
  for (const std::string& name : ListNetns()) {
    if (stale(name, /*exact=*/false, &run_id)) {
      SHUNT_LOG(INFO) << "testbed: reaping stale netns " << name;
      DeleteNetns(name);
    }
  }
  for (const std::string& name : ListDir(kBpffsShuntDir)) {
    if (stale(name, /*exact=*/false, &run_id)) {
      SHUNT_LOG(INFO) << "testbed: reaping stale bpffs pins " << name;
      RemoveAll(absl::StrCat(kBpffsShuntDir, "/", name));
    }
  }
  for (const std::string& dir : stale_tmp) {
    SHUNT_LOG(INFO) << "testbed: reaping stale work dir " << dir;
    RemoveAll(dir);
  }
}

// ---------------------------------------------------------------------------------------------
// Testbed: processes

absl::StatusOr<ProcessPtr> Testbed::SpawnIn(const std::string& netns, const std::string& cgroup,
                                            const std::vector<std::string>& argv, bool on_node) {
  if (teardown_started_) return absl::FailedPreconditionError("test bed is torn down");
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");
  // Everything the child needs is prepared here: after fork() it only makes syscalls.
  ASSIGN_OR_RETURN(std::string path, ResolveBinary(argv[0]));
  std::vector<char*> cargv = CArgv(argv);
  const std::string base = absl::StrCat(work_dir_, "/", seq_.fetch_add(1), "-",
                                        fs::path(argv[0]).filename().string(), "-", netns);
  const std::string out_path = base + ".out", err_path = base + ".err";

  std::string ns_path = absl::StrCat(kNetnsDir, "/", netns);
  Fd ns(open(ns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!ns.valid()) return ErrnoStatus(errno, absl::StrCat("open ", ns_path));
  Fd procs;
  if (!cgroup.empty()) {
    std::string procs_path = cgroup + "/cgroup.procs";
    procs = Fd(open(procs_path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!procs.valid()) return ErrnoStatus(errno, absl::StrCat("open ", procs_path));
  }
  Fd out(open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!out.valid()) return ErrnoStatus(errno, absl::StrCat("open ", out_path));
  Fd err(open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!err.valid()) return ErrnoStatus(errno, absl::StrCat("open ", err_path));
  Fd devnull(open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!devnull.valid()) return ErrnoStatus(errno, "open /dev/null");
  // Close-on-exec pipe: EOF means exec succeeded, otherwise the child reports {stage, errno}.
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  Fd report_r(report[0]), report_w(report[1]);

  pid_t pid = fork();
  if (pid < 0) return ErrnoStatus(errno, "fork");
  if (pid == 0) {
    int failure[2] = {0, 0};
    ResetSignalsInChild();
    // Join the container cgroup *before* entering the pod's netns (pitfall 13).
    if (procs.valid() && write(procs.get(), "0", 1) != 1) {
      failure[0] = 1;
    } else if (setns(ns.get(), CLONE_NEWNET) != 0) {
      failure[0] = 2;
    } else if (dup2(devnull.get(), 0) < 0 || dup2(out.get(), 1) < 0 || dup2(err.get(), 2) < 0) {
      failure[0] = 3;
    } else {
      execv(path.c_str(), cargv.data());
      failure[0] = 4;
    }
    failure[1] = errno;
    ssize_t unused = write(report_w.get(), failure, sizeof(failure));
    (void)unused;
    _exit(127);
  }
  report_w.Reset();
  int failure[2] = {0, 0};
  ssize_t n;
  do {
    n = read(report_r.get(), failure, sizeof(failure));
  } while (n < 0 && errno == EINTR);
  if (n > 0) {
    int status = 0;
    WaitPidNoIntr(pid, &status, 0);
    static constexpr const char* kStage[] = {"?", "join cgroup", "setns", "redirect", "exec"};
    return ErrnoStatus(
        failure[1],
        absl::StrCat(kStage[failure[0] >= 1 && failure[0] <= 4 ? failure[0] : 0], " for ", argv[0],
                     " in ", netns, cgroup.empty() ? "" : " / " + cgroup));
  }
  if (on_node) {
    const uint64_t start = ProcessStartTime(pid);
    std::lock_guard<std::mutex> lock(node_procs_mu_);
    node_procs_.emplace_back(pid, start);
    WriteFile(absl::StrCat(work_dir_, "/", kNodePidsFile), absl::StrCat(pid, " ", start, "\n"),
              O_APPEND)
        .IgnoreError();
  }
  return std::make_unique<Process>(pid, out_path, err_path);
}

std::string Testbed::NewPodUid() { return NewUuid(); }

PodCgroupPaths Testbed::PodCgroupsFor(const Node& node, const std::string& uid) {
  const std::string container_id = RandomHex(64);
  PodCgroupPaths p;
  if (node.driver == CgroupDriver::kSystemd) {
    p.pod = absl::StrCat(node.cgroup_root, "/kubepods-besteffort.slice/", "kubepods-besteffort-pod",
                         absl::StrReplaceAll(uid, {{"-", "_"}}), ".slice");
    p.container = absl::StrCat(p.pod, "/cri-containerd-", container_id, ".scope");
  } else {
    p.pod = absl::StrCat(node.cgroup_root, "/besteffort/pod", uid);
    p.container = absl::StrCat(p.pod, "/", container_id);
  }
  return p;
}

absl::StatusOr<ProcessPtr> Testbed::SpawnInCgroup(const Pod& netns_of, const std::string& cgroup,
                                                  const std::vector<std::string>& argv) {
  return SpawnIn(netns_of.netns, cgroup, argv, /*on_node=*/false);
}

absl::StatusOr<ProcessPtr> Testbed::Spawn(const Pod& pod, const std::vector<std::string>& argv) {
  return SpawnIn(pod.netns, pod.container_cgroup, argv, /*on_node=*/false);
}

absl::StatusOr<ProcessPtr> Testbed::SpawnOnNode(const Node& node,
                                                const std::vector<std::string>& argv) {
  return SpawnIn(node.netns, "", argv, /*on_node=*/true);
}

absl::StatusOr<Output> Testbed::Finish(ProcessPtr process, std::chrono::milliseconds timeout) {
  absl::StatusOr<int> status = process->Wait(timeout);
  if (!status.ok()) {
    process->Stop(SIGKILL, std::chrono::seconds(5)).IgnoreError();
    std::string err = process->Stderr();
    if (err.size() > 2000) err = err.substr(err.size() - 2000);
    return absl::Status(status.status().code(),
                        absl::StrCat(status.status().message(), "; stderr: ", err));
  }
  Output out;
  out.exit_code = ExitCode(*status);
  out.out = process->Stdout();
  out.err = process->Stderr();
  return out;
}

absl::StatusOr<Output> Testbed::Run(const Pod& pod, const std::vector<std::string>& argv,
                                    std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(ProcessPtr process, Spawn(pod, argv));
  return Finish(std::move(process), timeout);
}

absl::StatusOr<Output> Testbed::RunOnNode(const Node& node, const std::vector<std::string>& argv,
                                          std::chrono::milliseconds timeout) {
  ASSIGN_OR_RETURN(ProcessPtr process, SpawnOnNode(node, argv));
  return Finish(std::move(process), timeout);
}

// ---------------------------------------------------------------------------------------------
// Testbed: observation and configuration

absl::StatusOr<Testbed::LinkStats> Testbed::PodLinkStats(const Pod& pod) {
  ASSIGN_OR_RETURN(
      Output out,
      Exec({"ip", "-n", pod.netns, "-j", "-s", "link", "show", "dev", "eth0"}, kIpTimeout));
  if (out.exit_code != 0) {
    return absl::InternalError(absl::StrCat("ip -n ", pod.netns, " link show eth0: ", out.err));
  }
  try {
    nlohmann::json j = nlohmann::json::parse(out.out);
    const nlohmann::json& link = j.at(0);
    const nlohmann::json& stats = link.contains("stats64") ? link.at("stats64") : link.at("stats");
    LinkStats s;
    s.rx_bytes = stats.at("rx").at("bytes").get<uint64_t>();
    s.rx_packets = stats.at("rx").at("packets").get<uint64_t>();
    s.tx_bytes = stats.at("tx").at("bytes").get<uint64_t>();
    s.tx_packets = stats.at("tx").at("packets").get<uint64_t>();
    return s;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("parsing ip -j link output: ", e.what()));
  }
}

absl::StatusOr<std::string> Testbed::WritePolicyFile(
    const std::string& file_name, const std::map<std::string, bool>& meshed_by_pod_name) {
  if (file_name.empty() || file_name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError("policy file name must be a plain file name");
  }
  std::string text;
  try {
    nlohmann::json workloads = nlohmann::json::array();
    for (const Node& node : nodes_) {
      for (const Pod& pod : node.pods) {
        auto it = meshed_by_pod_name.find(pod.name);
        workloads.push_back({{"uid", pod.uid},
                             {"namespace", pod.k8s_namespace},
                             {"name", pod.name},
                             {"node", node.name},
                             {"ips", {pod.ipv4, pod.ipv6}},
                             {"meshed", it != meshed_by_pod_name.end() && it->second}});
      }
    }
    text = nlohmann::json{{"workloads", workloads}}.dump(2) + "\n";
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("building policy JSON: ", e.what()));
  }
  const std::string path = absl::StrCat(work_dir_, "/", file_name);
  const std::string tmp = absl::StrCat(path, ".tmp-", seq_.fetch_add(1));
  RETURN_IF_ERROR(WriteFile(tmp, text));
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    absl::Status s = ErrnoStatus(errno, absl::StrCat("rename ", tmp, " to ", path));
    unlink(tmp.c_str());
    return s;
  }
  return path;
}

}  // namespace shunt::testbed
