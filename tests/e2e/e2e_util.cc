#include "tests/e2e/e2e_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <filesystem>
#include <atomic>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/errno_status.h"
#include "common/files.h"

namespace shunt::e2e {
namespace {

absl::StatusOr<HttpResponse> HttpGetHere(const std::string& host, int port,
                                         const std::string& path) {
  sockaddr_storage ss{};
  socklen_t len;
  auto* in4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, host.c_str(), &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(port);
    len = sizeof(*in4);
  } else if (inet_pton(AF_INET6, host.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    len = sizeof(*in6);
  } else {
    return absl::InvalidArgumentError("bad host " + host);
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "socket");
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    int e = errno;
    close(fd);
    return ErrnoStatus(e, absl::StrCat("connect ", host, ":", port));
  }
  const std::string req =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", host, "\r\nConnection: close\r\n\r\n");
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    int e = errno;
    close(fd);
    return ErrnoStatus(e, "write");
  }
  std::string raw;
  char buf[16384];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) raw.append(buf, n);
  close(fd);
  HttpResponse r;
  auto sep = raw.find("\r\n\r\n");
  if (sep == std::string::npos || raw.compare(0, 5, "HTTP/") != 0) {
    return absl::DataLossError("malformed HTTP response: " + raw.substr(0, 200));
  }
  std::vector<std::string> status = absl::StrSplit(raw.substr(0, raw.find("\r\n")), ' ');
  if (status.size() < 2 || !absl::SimpleAtoi(status[1], &r.code)) {
    return absl::DataLossError("bad status line");
  }
  r.body = raw.substr(sep + 4);
  return r;
}

}  // namespace

absl::StatusOr<HttpResponse> HttpGetInNetns(const std::string& netns, const std::string& host,
                                            int port, const std::string& path) {
  absl::StatusOr<HttpResponse> result = absl::InternalError("not run");
  std::thread t([&] {
    int fd = open(("/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      result = ErrnoStatus(errno, "open netns " + netns);
      return;
    }
    // setns moves only this thread; it ends right after.
    if (setns(fd, CLONE_NEWNET) != 0) {
      result = ErrnoStatus(errno, "setns " + netns);
      close(fd);
      return;
    }
    close(fd);
    result = HttpGetHere(host, port, path);
  });
  t.join();
  return result;
}

std::vector<Sample> ParsePrometheusText(const std::string& text) {
  std::vector<Sample> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    size_t brace = line.find('{');
    size_t space;
    if (brace != absl::string_view::npos) {
      s.name = std::string(line.substr(0, brace));
      size_t end = line.find('}', brace);
      if (end == absl::string_view::npos) continue;
      absl::string_view labels = line.substr(brace + 1, end - brace - 1);
      // label="value",... (values in our tests never contain '",')
      for (absl::string_view kv : absl::StrSplit(labels, "\",", absl::SkipEmpty())) {
        size_t eq = kv.find("=\"");
        if (eq == absl::string_view::npos) continue;
        absl::string_view v = kv.substr(eq + 2);
        absl::ConsumeSuffix(&v, "\"");
        s.labels[std::string(absl::StripLeadingAsciiWhitespace(kv.substr(0, eq)))] = std::string(v);
      }
      space = end + 1;
    } else {
      space = line.find(' ');
      if (space == absl::string_view::npos) continue;
      s.name = std::string(line.substr(0, space));
    }
    absl::string_view rest = absl::StripAsciiWhitespace(line.substr(space));
    std::vector<absl::string_view> parts = absl::StrSplit(rest, ' ');
    if (parts.empty() || !absl::SimpleAtod(parts[0], &s.value)) continue;
    out.push_back(std::move(s));
  }
  return out;
}

double SumSamples(const std::vector<Sample>& samples, const std::string& name,
                  const std::map<std::string, std::string>& match) {
  double sum = 0;
  for (const auto& s : samples) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [k, v] : match) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) {
        ok = false;
        break;
      }
    }
    if (ok) sum += s.value;
  }
  return sum;
}

std::string FastpathCounterSummary(const std::vector<Sample>& samples) {
  std::map<std::string, double> by;
  for (const auto& s : samples) {
    auto label = [&](const char* k) {
      auto it = s.labels.find(k);
      return it == s.labels.end() ? std::string("?") : it->second;
    };
    if (s.name == "shunt_sockmap_fallback_messages_total")
      by["fallback " + label("reason")] += s.value;
    if (s.name == "shunt_sockhash_socket_events_total") by["event " + label("event")] += s.value;
    if (s.name == "shunt_sockmap_redirected_messages_total") by["redirected"] += s.value;
  }
  std::string out;
  for (const auto& [k, v] : by) absl::StrAppend(&out, k, "=", v, " ");
  return out;
}

std::string MetricsProblems(const std::string& text) {
  std::string promtool = "/var/cache/shunt-tools/prometheus/usr/bin/promtool";
  if (access(promtool.c_str(), X_OK) != 0) promtool = "/usr/bin/promtool";
  if (access(promtool.c_str(), X_OK) != 0) {
    return "promtool is needed (Debian package prometheus; scripts/setup.sh)\n";
  }
  char path[] = "/tmp/shunt-metrics-XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return "mkstemp failed\n";
  const bool written = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  std::string out = written ? "" : "could not write the page\n";
  if (FILE* p = popen((promtool + " check metrics < " + path + " 2>&1").c_str(), "r")) {
    char buf[512];
    while (fgets(buf, sizeof(buf), p)) out += buf;
    const int rc = pclose(p);
    if (rc != 0 && out.empty()) out = "promtool exited " + std::to_string(rc) + "\n";
  }
  unlink(path);
  std::map<std::string, int> seen;
  for (const auto& s : ParsePrometheusText(text)) {
    std::string key = s.name + "{";
    for (const auto& [k, v] : s.labels) key += k + "=\"" + v + "\",";
    ++seen[key + "}"];
  }
  for (const auto& [key, n] : seen) {
    if (n > 1) out += key + " is there " + std::to_string(n) + " times\n";
  }
  return out;
}

std::string UrlEncode(const std::string& s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<PrometheusServer>> PrometheusServer::Start(
    testbed::Testbed& bed, const testbed::Node& node, const std::vector<std::string>& targets,
    int port) {
  std::string prometheus = "/var/cache/shunt-tools/prometheus/usr/bin/prometheus";
  if (access(prometheus.c_str(), X_OK) != 0) prometheus = "/usr/bin/prometheus";
  if (access(prometheus.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        "prometheus is needed (Debian package prometheus; scripts/setup.sh)");
  }
  const std::string dir = absl::StrCat(bed.work_dir(), "/prometheus-", node.name, "-", port);
  std::error_code ec;
  std::filesystem::create_directories(dir + "/data", ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", dir, ": ", ec.message()));
  std::string config =
      "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n"
      "scrape_configs:\n  - job_name: shunt\n    static_configs:\n      - targets: [";
  for (size_t i = 0; i < targets.size(); ++i) {
    absl::StrAppend(&config, i ? ", " : "", "'", targets[i], "'");
  }
  absl::StrAppend(&config, "]\n");
  {
    std::ofstream f(dir + "/prometheus.yml");
    f << config;
    if (!f) return absl::InternalError("cannot write " + dir + "/prometheus.yml");
  }
  std::unique_ptr<PrometheusServer> p(new PrometheusServer(node, port));
  auto proc = bed.SpawnOnNode(
      node, {prometheus, "--config.file=" + dir + "/prometheus.yml",
             "--storage.tsdb.path=" + dir + "/data",
             absl::StrCat("--web.listen-address=127.0.0.1:", port), "--log.level=warn"});
  if (!proc.ok()) return proc.status();
  p->process_ = std::move(*proc);
  // Ready once its API answers.
  for (int i = 0; i < 300; ++i) {
    auto r = HttpGetInNetns(node.netns, "127.0.0.1", port, "/-/ready");
    if (r.ok() && r->code == 200) return p;
    if (!p->process_->Running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return absl::UnavailableError("prometheus did not become ready: " + p->process_->Stderr());
}

PrometheusServer::~PrometheusServer() {
  if (process_ && process_->Running()) process_->Stop(SIGTERM, std::chrono::seconds(10)).IgnoreError();
}

std::string PrometheusServer::Stderr() const { return process_ ? process_->Stderr() : ""; }

absl::StatusOr<nlohmann::json> PrometheusServer::Query(const std::string& promql) const {
  auto r = HttpGetInNetns(node_.netns, "127.0.0.1", port_, "/api/v1/query?query=" + UrlEncode(promql));
  if (!r.ok()) return r.status();
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InternalError(absl::StrCat("prometheus answered ", r->code, ": ", r->body));
  }
  if (j.value("status", "") != "success") {
    return absl::InvalidArgumentError(absl::StrCat(promql, ": ", j.value("errorType", ""), ": ",
                                                   j.value("error", r->body)));
  }
  return j["data"]["result"];
}

absl::Status PrometheusServer::WaitForFreshScrape(std::chrono::milliseconds timeout) const {
  const double since = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string last;
  while (std::chrono::steady_clock::now() < deadline) {
    // Each target's last scrape (the time of its `up` sample) after `since`, and up == 1.
    auto r = Query("timestamp(up) * up");
    if (r.ok() && !r->empty()) {
      bool fresh = true;
      for (const auto& s : *r) {
        if (std::stod(s["value"][1].get<std::string>()) <= since) fresh = false;
      }
      if (fresh) return absl::OkStatus();
      last = r->dump();
    } else if (!r.ok()) {
      last = r.status().ToString();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return absl::DeadlineExceededError("no fresh scrape of every target: " + last + " " + Stderr());
}

bool WaitForFile(const std::string& path) {
  for (int i = 0; i < 1000 && access(path.c_str(), F_OK) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return access(path.c_str(), F_OK) == 0;
}

std::string AgentBinary() {
  // Another build of the agent (a benchmark of the one before a change, in the same test bed).
  if (const char* other = getenv("SHUNT_AGENT_BINARY"); other != nullptr && *other != '\0') {
    return other;
  }
  return SHUNT_AGENT_BIN;
}

absl::StatusOr<testbed::ProcessPtr> StartTestpeerServer(testbed::Testbed& bed,
                                                        const testbed::Pod& pod,
                                                        std::vector<std::string> args,
                                                        std::vector<std::string> prefix) {
  static std::atomic<int> seq{0};
  const std::string ready = absl::StrCat(bed.work_dir(), "/ready-", pod.name, "-", ++seq);
  std::vector<std::string> argv = std::move(prefix);
  argv.push_back(TestpeerBinary());
  argv.push_back("server");
  for (auto& a : args) argv.push_back(std::move(a));
  argv.push_back("--ready-file=" + ready);
  auto p = bed.Spawn(pod, argv);
  if (!p.ok()) return p.status();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (access(ready.c_str(), F_OK) != 0) {
    if (!(*p)->Running() || std::chrono::steady_clock::now() > deadline) {
      return absl::UnavailableError("testpeer server did not start: " + (*p)->Stderr());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return std::move(*p);
}

absl::StatusOr<nlohmann::json> RunTestpeer(testbed::Testbed& bed, const testbed::Pod& pod,
                                           std::vector<std::string> args,
                                           std::chrono::seconds timeout,
                                           std::vector<std::string> prefix) {
  std::vector<std::string> argv = std::move(prefix);
  argv.push_back(TestpeerBinary());
  for (auto& a : args) argv.push_back(std::move(a));
  auto out = bed.Run(pod, argv, timeout);
  if (!out.ok()) return out.status();
  if (out->exit_code != 0) {
    return absl::InternalError(
        absl::StrCat("testpeer exit ", out->exit_code, ": ", out->out, out->err));
  }
  auto j = nlohmann::json::parse(out->out, nullptr, false);
  if (j.is_discarded()) return absl::DataLossError("testpeer output is not JSON: " + out->out);
  return j;
}
std::string TestpeerBinary() { return SHUNT_TESTPEER_BIN; }

AgentProcess::AgentProcess(testbed::Testbed& bed, const testbed::Node& node,
                           std::string policy_file, std::vector<std::string> extra_flags)
    : bed_(bed),
      node_(node),
      policy_file_(std::move(policy_file)),
      extra_flags_(std::move(extra_flags)) {}

std::vector<std::string> AgentProcess::Argv() const {
  std::vector<std::string> argv = {
      AgentBinary(),
      "--node-name=" + node_.name,
      "--cgroup-root=" + node_.cgroup_root,
      "--metrics-addr=127.0.0.1:" + std::to_string(kMetricsPort),
      "--admin-addr=127.0.0.1:" + std::to_string(kAdminPort),
      "--resync-ms=200",
      "--policy-poll-ms=100",
      "--state-dir=" + bed_.work_dir() + "/agent-state",  // removed with the test bed
      "--handoff-socket=" + bed_.work_dir() + "/handoff-" + node_.name + ".sock",
  };
  if (!policy_file_.empty()) argv.push_back("--policy-file=" + policy_file_);
  for (const auto& f : extra_flags_) argv.push_back(f);
  return argv;
}

absl::Status AgentProcess::Start(std::chrono::milliseconds timeout, bool require_ready) {
  if (absl::Status s = Spawn(); !s.ok()) return s;
  return WaitReady(timeout, require_ready);
}

absl::Status AgentProcess::Spawn() {
  auto p = bed_.SpawnOnNode(node_, Argv());
  if (!p.ok()) return p.status();
  process_ = std::move(*p);
  return absl::OkStatus();
}

absl::Status AgentProcess::WaitReady(std::chrono::milliseconds timeout, bool require_ready) {
  if (!process_) return absl::FailedPreconditionError("agent not spawned");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  absl::Status last = absl::UnavailableError("not polled");
  while (std::chrono::steady_clock::now() < deadline) {
    if (!process_->Running()) {
      return absl::InternalError("agent exited during start-up: " + process_->Stderr());
    }
    // Until this agent has bound its ports, another one may answer on them (the one it takes
    // over from, during a handoff): its readiness is not this one's.
    if (process_->Stderr().find(": metrics on ") == std::string::npos) {
      last = absl::UnavailableError("ports not bound yet");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    auto r = Get("/readyz");
    if (r.ok() && r->code == 200) return absl::OkStatus();
    last = r.ok() ? absl::UnavailableError(r->body) : r.status();
    if (!require_ready && r.ok()) {
      auto m = Scrape();
      if (m.ok() && SumSamples(*m, "shunt_agent_synced") == 1) return absl::OkStatus();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("agent not ready: ", last.message(), "\nstderr:\n", process_->Stderr()));
}

void AgentProcess::Kill() {
  if (process_) {
    process_->Stop(SIGKILL, std::chrono::seconds(5)).IgnoreError();
  }
}

absl::Status AgentProcess::Stop() {
  if (!process_) return absl::OkStatus();
  auto s = process_->Stop(SIGTERM, std::chrono::seconds(10));
  return s.ok() ? absl::OkStatus() : s.status();
}

absl::StatusOr<std::vector<Sample>> AgentProcess::Scrape() const {
  auto r = Get("/metrics", kMetricsPort);
  if (!r.ok()) return r.status();
  if (r->code != 200) return absl::UnavailableError(absl::StrCat("/metrics: ", r->code));
  return ParsePrometheusText(r->body);
}

absl::StatusOr<HttpResponse> AgentProcess::Get(const std::string& path, int port) const {
  return HttpGetInNetns(node_.netns, "127.0.0.1", port, path);
}

absl::StatusOr<testbed::Output> UninstallAgent(testbed::Testbed& bed, const testbed::Node& node) {
  // The node's cgroup root: the pods whose capture uninstall removes are found under it.
  return bed.RunOnNode(node,
                       {AgentBinary(), "--uninstall", "--node-name=" + node.name,
                        "--cgroup-root=" + node.cgroup_root},
                       std::chrono::seconds(30));
}

bool FastpathQueueBoundByReceiveBuffer(const AgentProcess& agent) {
  auto m = agent.Scrape();
  // Unknown (no scrape): the looser expectation, so that the assertions after it say what failed.
  return !m.ok() || SumSamples(*m, "shunt_sockmap_queue_bound_by_receive_buffer") != 0;
}

pid_t SupervisedAgentPid(pid_t supervisor) {
  auto text =
      ReadFileToString(absl::StrCat("/proc/", supervisor, "/task/", supervisor, "/children"));
  if (!text.ok() || text->empty()) return -1;
  return static_cast<pid_t>(strtol(text->c_str(), nullptr, 10));
}

double SplicedOrBound(const AgentProcess& agent, const std::vector<Sample>& samples,
                      const std::map<std::string, std::string>& match) {
  double v = SumSamples(samples, "shunt_sockmap_redirected_bytes_total", match);
  if (!FastpathQueueBoundByReceiveBuffer(agent)) return v;
  for (const char* reason : {"peer_backlog", "stack_bytes_unread"}) {
    auto m = match;
    m["reason"] = reason;
    v += SumSamples(samples, "shunt_sockmap_fallback_bytes_total", m);
  }
  return v;
}

uint64_t MayTakeTheStack(const AgentProcess& agent, uint64_t bytes, double spliced,
                         uint64_t unbound) {
  if (!FastpathQueueBoundByReceiveBuffer(agent)) return unbound;
  // What was not spliced crossed the veths, with its headers (66 bytes a 1448-byte segment at
  // most: under 5%, rounded up to 10%), plus what crosses anyway.
  const uint64_t carried =
      std::min<uint64_t>(bytes, spliced > 0 ? static_cast<uint64_t>(spliced) : 0);
  return (bytes - carried) * 11 / 10 + unbound;
}

}  // namespace shunt::e2e
