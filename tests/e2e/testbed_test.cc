// The simulated cluster itself: processes land in their pod's cgroup and netns, pods reach each
// other over IPv4 and IPv6 on one node and across nodes, nothing routes out of the machine, both
// kubelet cgroup layouts exist, and teardown (or reaping a dead run) leaves nothing behind.
#include "tests/testbed/testbed.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/cgroup.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#ifndef SHUNT_TESTPEER_BIN
#error "SHUNT_TESTPEER_BIN must name the shunt-testpeer binary"
#endif

namespace shunt::testbed {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kTestpeer[] = SHUNT_TESTPEER_BIN;

std::unique_ptr<Testbed> MakeTestbed(int nodes, int pods, const std::string& prefix = "shunt") {
  Options options;
  options.nodes = nodes;
  options.pods_per_node = pods;
  options.prefix = prefix;
  absl::StatusOr<std::unique_ptr<Testbed>> tb = Testbed::Create(options);
  EXPECT_TRUE(tb.ok()) << tb.status();
  return tb.ok() ? std::move(*tb) : nullptr;
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The last non-empty line of a testpeer's stdout as JSON (null when it is not JSON).
nlohmann::json ResultJson(const std::string& out) {
  std::vector<absl::string_view> lines = absl::StrSplit(out, '\n', absl::SkipEmpty());
  if (lines.empty()) return nullptr;
  nlohmann::json j = nlohmann::json::parse(lines.back(), nullptr, /*allow_exceptions=*/false);
  return j.is_discarded() ? nlohmann::json(nullptr) : j;
}

uint64_t JsonU64(const nlohmann::json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number_unsigned() ? j[key].get<uint64_t>()
                                                                         : ~0ULL;
}

// Starts a testpeer server in `pod` and waits until it listens.
ProcessPtr StartServer(Testbed& tb, const Pod& pod, int port, const std::string& mode, int conns,
                       const std::vector<std::string>& extra = {}) {
  static int n = 0;
  const std::string ready = absl::StrCat(tb.work_dir(), "/ready-", pod.name, "-", port, "-", ++n);
  std::vector<std::string> argv = {kTestpeer,
                                   "server",
                                   absl::StrCat("--port=", port),
                                   "--mode=" + mode,
                                   absl::StrCat("--conns=", conns),
                                   "--ready-file=" + ready};
  argv.insert(argv.end(), extra.begin(), extra.end());
  absl::StatusOr<ProcessPtr> p = tb.Spawn(pod, argv);
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return nullptr;
  const auto deadline = std::chrono::steady_clock::now() + seconds(10);
  while (!fs::exists(ready)) {
    if (!(*p)->Running() || std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "server in " << pod.name << " not ready; stderr: " << (*p)->Stderr();
      return nullptr;
    }
    std::this_thread::sleep_for(milliseconds(5));
  }
  return std::move(*p);
}

// Runs a testpeer client in `pod` and returns its JSON result (null on any failure).
nlohmann::json RunClient(Testbed& tb, const Pod& pod, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {kTestpeer};
  argv.insert(argv.end(), args.begin(), args.end());
  absl::StatusOr<Output> out = tb.Run(pod, argv, seconds(120));
  EXPECT_TRUE(out.ok()) << out.status();
  if (!out.ok()) return nullptr;
  EXPECT_EQ(out->exit_code, 0) << "stdout: " << out->out << "\nstderr: " << out->err;
  return ResultJson(out->out);
}

nlohmann::json StopServer(ProcessPtr server) {
  absl::StatusOr<int> status = server->Wait(seconds(30));
  EXPECT_TRUE(status.ok()) << status.status() << "; stderr: " << server->Stderr();
  if (!status.ok()) return nullptr;
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << server->Stderr();
  return ResultJson(server->Stdout());
}

// Sends pattern streams from `client` to `server_pod` on each address and checks every byte.
void ExpectVerifiedTraffic(Testbed& tb, const Pod& server_pod, const Pod& client) {
  constexpr int kPort = 7001;
  ProcessPtr server = StartServer(tb, server_pod, kPort, "verify", 2 + 20);
  ASSERT_NE(server, nullptr);
  nlohmann::json v4 = RunClient(tb, client,
                                {"verify", absl::StrCat("--to=", server_pod.ipv4, ":", kPort),
                                 "--bytes=3M", "--seed=7", "--bind=" + client.ipv4});
  EXPECT_EQ(JsonU64(v4, "ok"), 1u) << v4;
  EXPECT_EQ(JsonU64(v4, "bytes"), 3u << 20) << v4;
  nlohmann::json v6 = RunClient(tb, client,
                                {"verify", absl::StrCat("--to=[", server_pod.ipv6, "]:", kPort),
                                 "--bytes=1000003", "--seed=8", "--chunk=4093"});
  EXPECT_EQ(JsonU64(v6, "ok"), 1u) << v6;
  nlohmann::json many = RunClient(tb, client,
                                  {"verify", absl::StrCat("--to=", server_pod.ipv4, ":", kPort),
                                   "--bytes=10000", "--seed=9", "--conns=20", "--concurrent"});
  EXPECT_EQ(JsonU64(many, "ok"), 20u) << many;
  nlohmann::json summary = StopServer(std::move(server));
  EXPECT_EQ(JsonU64(summary, "ok"), 22u) << summary;
  EXPECT_EQ(JsonU64(summary, "bad"), 0u) << summary;
}

// connect() from a thread that entered `netns`; returns 0 or the errno, and the time it took.
int ConnectErrnoFrom(const std::string& netns, const std::string& addr, int port,
                     double* took_seconds) {
  int result = -1;
  std::thread t([&] {
    int ns = open(absl::StrCat("/run/netns/", netns).c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(ns, CLONE_NEWNET) != 0) {
      result = -2;
      if (ns >= 0) close(ns);
      return;
    }
    close(ns);
    sockaddr_storage ss{};
    socklen_t len;
    auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (inet_pton(AF_INET, addr.c_str(), &v4->sin_addr) == 1) {
      v4->sin_family = AF_INET;
      v4->sin_port = htons(port);
      len = sizeof(*v4);
    } else {
      inet_pton(AF_INET6, addr.c_str(), &v6->sin6_addr);
      v6->sin6_family = AF_INET6;
      v6->sin6_port = htons(port);
      len = sizeof(*v6);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    const auto start = std::chrono::steady_clock::now();
    result = connect(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0 ? 0 : errno;
    *took_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    close(fd);
  });
  t.join();
  return result;
}

std::string RunIp(const std::vector<std::string>& args, int* exit_code) {
  std::string cmd = "ip";
  for (const std::string& a : args) cmd += " " + a;
  cmd += " 2>/dev/null";
  FILE* f = popen(cmd.c_str(), "r");
  std::string out;
  if (f == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  int status = pclose(f);
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

std::vector<std::string> NetnsNamesContaining(const std::string& needle) {
  int code = 0;
  std::string out = RunIp({"netns", "list"}, &code);
  std::vector<std::string> found;
  for (absl::string_view line : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
    if (absl::StrContains(line, needle)) found.emplace_back(line);
  }
  return found;
}

std::string CgroupMount() {
  absl::StatusOr<std::string> mount = FindCgroup2Mount();
  EXPECT_TRUE(mount.ok()) << mount.status();
  return mount.value_or("/nonexistent");
}

TEST(TestbedTest, PodProcessRunsInItsContainerCgroupAndNetns) {
  std::unique_ptr<Testbed> tb = MakeTestbed(1, 2);
  ASSERT_NE(tb, nullptr);
  const Pod& pod = tb->pod(0, 1);
  absl::StatusOr<ProcessPtr> sleeper = tb->Spawn(pod, {"sleep", "30"});
  ASSERT_TRUE(sleeper.ok()) << sleeper.status();
  const pid_t pid = (*sleeper)->pid();

  const std::string mount = CgroupMount();
  const std::string want = pod.container_cgroup.substr(mount.size());
  EXPECT_THAT(ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/cgroup")),
              HasSubstr(absl::StrCat("0::", want, "\n")));
  EXPECT_THAT(ReadFileOrEmpty(pod.container_cgroup + "/cgroup.procs"),
              HasSubstr(absl::StrCat(pid, "\n")));
  struct stat proc_ns, pod_ns;
  ASSERT_EQ(stat(absl::StrCat("/proc/", pid, "/ns/net").c_str(), &proc_ns), 0);
  ASSERT_EQ(stat(absl::StrCat("/run/netns/", pod.netns).c_str(), &pod_ns), 0);
  EXPECT_EQ(proc_ns.st_ino, pod_ns.st_ino);

  // Inside the pod the cgroup2 mount is still visible (no `ip netns exec` remount of /sys).
  absl::StatusOr<Output> self = tb->Run(pod, {"cat", "/proc/self/cgroup"}, seconds(10));
  ASSERT_TRUE(self.ok()) << self.status();
  EXPECT_THAT(self->out, HasSubstr(absl::StrCat("0::", want, "\n")));
  absl::StatusOr<Output> visible =
      tb->Run(pod, {"test", "-e", pod.container_cgroup + "/cgroup.procs"}, seconds(10));
  ASSERT_TRUE(visible.ok()) << visible.status();
  EXPECT_EQ(visible->exit_code, 0);
  absl::StatusOr<Output> addr = tb->Run(pod, {"ip", "-o", "addr", "show", "eth0"}, seconds(10));
  ASSERT_TRUE(addr.ok()) << addr.status();
  EXPECT_THAT(addr->out, HasSubstr(pod.ipv4 + "/24"));
  EXPECT_THAT(addr->out, HasSubstr(pod.ipv6 + "/64"));

  // A node process runs in the node's netns and stays in our cgroup.
  absl::StatusOr<Output> node_cg =
      tb->RunOnNode(tb->node(0), {"cat", "/proc/self/cgroup"}, seconds(10));
  ASSERT_TRUE(node_cg.ok()) << node_cg.status();
  EXPECT_EQ(node_cg->out, ReadFileOrEmpty("/proc/self/cgroup"));

  absl::StatusOr<int> stopped = (*sleeper)->Stop(SIGTERM, seconds(5));
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_TRUE(WIFSIGNALED(*stopped) && WTERMSIG(*stopped) == SIGTERM);
  EXPECT_FALSE((*sleeper)->Running());
}

TEST(TestbedTest, SpawnReportsAMissingBinary) {
  std::unique_ptr<Testbed> tb = MakeTestbed(1, 1);
  ASSERT_NE(tb, nullptr);
  absl::StatusOr<ProcessPtr> p = tb->Spawn(tb->pod(0, 0), {"/nonexistent/shunt-binary"});
  EXPECT_FALSE(p.ok());
  absl::StatusOr<Output> slow = tb->Run(tb->pod(0, 0), {"sleep", "10"}, milliseconds(200));
  EXPECT_TRUE(absl::IsDeadlineExceeded(slow.status())) << slow.status();
}

TEST(TestbedTest, TcpBetweenPodsOnOneNode) {
  std::unique_ptr<Testbed> tb = MakeTestbed(1, 2);
  ASSERT_NE(tb, nullptr);
  absl::StatusOr<Testbed::LinkStats> before = tb->PodLinkStats(tb->pod(0, 1));
  ASSERT_TRUE(before.ok()) << before.status();
  ExpectVerifiedTraffic(*tb, tb->pod(0, 0), tb->pod(0, 1));
  absl::StatusOr<Testbed::LinkStats> after = tb->PodLinkStats(tb->pod(0, 1));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_GT(after->tx_bytes, before->tx_bytes + (4u << 20));
  EXPECT_GT(after->tx_packets, before->tx_packets);
  EXPECT_GT(after->rx_packets, before->rx_packets);
}

TEST(TestbedTest, TcpAcrossNodes) {
  std::unique_ptr<Testbed> tb = MakeTestbed(2, 2);
  ASSERT_NE(tb, nullptr);
  ExpectVerifiedTraffic(*tb, tb->pod(0, 0), tb->pod(1, 1));
  ExpectVerifiedTraffic(*tb, tb->pod(1, 0), tb->pod(0, 1));
}

TEST(TestbedTest, TestpeerModesInsideAPod) {
  std::unique_ptr<Testbed> tb = MakeTestbed(1, 1);
  ASSERT_NE(tb, nullptr);
  const Pod& pod = tb->pod(0, 0);

  ProcessPtr sink = StartServer(*tb, pod, 7101, "sink", 1);
  ASSERT_NE(sink, nullptr);
  nlohmann::json bulk = RunClient(*tb, pod, {"bulk", "--to=127.0.0.1:7101", "--seconds=0.5"});
  EXPECT_GT(JsonU64(bulk, "bytes"), 0u) << bulk;
  EXPECT_TRUE(bulk.contains("gbit_per_s")) << bulk;
  EXPECT_EQ(JsonU64(StopServer(std::move(sink)), "ok"), 1u);

  ProcessPtr echo = StartServer(*tb, pod, 7102, "echo", 1);
  ASSERT_NE(echo, nullptr);
  nlohmann::json pp =
      RunClient(*tb, pod, {"pingpong", "--to=[::1]:7102", "--size=1024", "--count=300"});
  EXPECT_EQ(JsonU64(pp, "count"), 300u) << pp;
  ASSERT_TRUE(pp.is_object() && pp.contains("p50_us") && pp.contains("p99_us")) << pp;
  EXPECT_LE(pp["p50_us"].get<double>(), pp["p99_us"].get<double>());
  EXPECT_EQ(JsonU64(StopServer(std::move(echo)), "ok"), 1u);

  ProcessPtr verify = StartServer(*tb, pod, 7103, "verify", 1 + 1000);
  ASSERT_NE(verify, nullptr);
  nlohmann::json hold = RunClient(
      *tb, pod, {"hold", "--to=127.0.0.1:7103", "--bytes=256K", "--seed=3", "--rate-mbps=10"});
  EXPECT_EQ(JsonU64(hold, "ok"), 1u) << hold;
  ASSERT_TRUE(hold.is_object() && hold.contains("seconds")) << hold;
  EXPECT_GT(hold["seconds"].get<double>(), 0.15);  // 2 Mbit at 10 Mbit/s
  nlohmann::json many = RunClient(*tb, pod,
                                  {"verify", "--to=" + pod.ipv4 + ":7103", "--bytes=1000",
                                   "--seed=1", "--conns=1000", "--concurrent"});
  EXPECT_EQ(JsonU64(many, "ok"), 1000u) << many;
  nlohmann::json summary = StopServer(std::move(verify));
  EXPECT_EQ(JsonU64(summary, "ok"), 1001u) << summary;

  // --expect-seed rejects a stream meant for another server; --bind takes a fixed source port.
  ProcessPtr picky = StartServer(*tb, pod, 7104, "verify", 2, {"--expect-seed=5"});
  ASSERT_NE(picky, nullptr);
  nlohmann::json mine = RunClient(
      *tb, pod,
      {"verify", "--to=127.0.0.1:7104", "--bytes=100K", "--seed=5", "--bind=127.0.0.1:41000"});
  EXPECT_EQ(JsonU64(mine, "ok"), 1u) << mine;
  absl::StatusOr<Output> other = tb->Run(
      pod, {kTestpeer, "verify", "--to=127.0.0.1:7104", "--bytes=100K", "--seed=6"}, seconds(20));
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_NE(other->exit_code, 0) << other->out;
  absl::StatusOr<int> picky_status = picky->Wait(seconds(10));
  ASSERT_TRUE(picky_status.ok()) << picky_status.status();
  EXPECT_NE(WEXITSTATUS(*picky_status), 0);  // a bad connection fails the server
  nlohmann::json picky_summary = ResultJson(picky->Stdout());
  EXPECT_EQ(JsonU64(picky_summary, "ok"), 1u) << picky_summary;
  EXPECT_EQ(JsonU64(picky_summary, "bad"), 1u) << picky_summary;

  // Nobody listens: the client fails (non-zero exit, JSON error), it does not hang.
  absl::StatusOr<Output> refused = tb->Run(
      pod, {kTestpeer, "verify", "--to=127.0.0.1:7199", "--bytes=1", "--seed=1"}, seconds(20));
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_NE(refused->exit_code, 0);
  EXPECT_EQ(JsonU64(ResultJson(refused->out), "failed"), 1u) << refused->out;
}

TEST(TestbedTest, NothingRoutesOutOfTheTestbed) {
  std::unique_ptr<Testbed> tb = MakeTestbed(2, 1);
  ASSERT_NE(tb, nullptr);
  const std::string fabric = tb->run_id() + "-fabric";
  for (const std::string& ns : {tb->node(0).netns, tb->node(1).netns, fabric}) {
    int code = 0;
    EXPECT_EQ(RunIp({"-n", ns, "-4", "route", "show", "default"}, &code), "") << ns;
    EXPECT_EQ(RunIp({"-n", ns, "-6", "route", "show", "default"}, &code), "") << ns;
    RunIp({"-n", ns, "route", "get", "192.0.2.1"}, &code);
    EXPECT_NE(code, 0) << ns << " has a route to 192.0.2.1";
    double took = 0;
    EXPECT_EQ(ConnectErrnoFrom(ns, "192.0.2.1", 9, &took), ENETUNREACH) << ns;
    EXPECT_EQ(ConnectErrnoFrom(ns, "2001:db8::1", 9, &took), ENETUNREACH) << ns;
  }
  // A pod's default route ends at its node, which answers "unreachable" at once.
  for (const char* addr : {"192.0.2.1", "2001:db8::1"}) {
    double took = 0;
    int err = ConnectErrnoFrom(tb->pod(0, 0).netns, addr, 9, &took);
    EXPECT_THAT(err, AnyOf(ENETUNREACH, EHOSTUNREACH)) << addr << ": " << strerror(err);
    EXPECT_LT(took, 3.0) << addr;
  }
  // Pods do reach each other across nodes (the routes exist, they just stay inside).
  double took = 0;
  EXPECT_EQ(ConnectErrnoFrom(tb->pod(0, 0).netns, tb->pod(1, 0).ipv4, 9, &took), ECONNREFUSED);
  EXPECT_EQ(ConnectErrnoFrom(tb->pod(0, 0).netns, tb->pod(1, 0).ipv6, 9, &took), ECONNREFUSED);
}

TEST(TestbedTest, CgroupLayoutsOfBothDrivers) {
  std::unique_ptr<Testbed> tb = MakeTestbed(2, 2);
  ASSERT_NE(tb, nullptr);
  const std::string mount = CgroupMount();
  const std::regex uid_re("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");

  const Node& systemd = tb->node(0);
  ASSERT_EQ(systemd.driver, CgroupDriver::kSystemd);
  EXPECT_EQ(systemd.cgroup_root,
            absl::StrCat(mount, "/", tb->run_id(), "/", systemd.name, "/kubepods.slice"));
  for (const Pod& pod : systemd.pods) {
    EXPECT_TRUE(std::regex_match(pod.uid, uid_re)) << pod.uid;
    EXPECT_EQ(pod.pod_cgroup, absl::StrCat(systemd.cgroup_root,
                                           "/kubepods-besteffort.slice/kubepods-besteffort-pod",
                                           absl::StrReplaceAll(pod.uid, {{"-", "_"}}), ".slice"));
    EXPECT_TRUE(std::regex_match(
        pod.container_cgroup, std::regex(pod.pod_cgroup + "/cri-containerd-[0-9a-f]{64}\\.scope")))
        << pod.container_cgroup;
  }
  const Node& cgroupfs = tb->node(1);
  ASSERT_EQ(cgroupfs.driver, CgroupDriver::kCgroupfs);
  EXPECT_EQ(cgroupfs.cgroup_root,
            absl::StrCat(mount, "/", tb->run_id(), "/", cgroupfs.name, "/kubepods"));
  for (const Pod& pod : cgroupfs.pods) {
    EXPECT_TRUE(std::regex_match(pod.uid, uid_re)) << pod.uid;
    EXPECT_EQ(pod.pod_cgroup, absl::StrCat(cgroupfs.cgroup_root, "/besteffort/pod", pod.uid));
    EXPECT_TRUE(
        std::regex_match(pod.container_cgroup, std::regex(pod.pod_cgroup + "/[0-9a-f]{64}")))
        << pod.container_cgroup;
  }
  for (const Node& node : tb->nodes()) {
    EXPECT_TRUE(fs::is_directory(node.cgroup_root)) << node.cgroup_root;
    absl::StatusOr<std::string> resolved = ResolveCgroupRoot(mount, node.cgroup_root);
    EXPECT_TRUE(resolved.ok()) << resolved.status();
    for (const Pod& pod : node.pods) {
      EXPECT_TRUE(fs::is_directory(pod.container_cgroup)) << pod.container_cgroup;
      EXPECT_TRUE(CgroupId(pod.pod_cgroup).ok());
    }
  }
  absl::StatusOr<uint64_t> a = CgroupId(tb->pod(0, 0).pod_cgroup);
  absl::StatusOr<uint64_t> b = CgroupId(tb->pod(1, 0).pod_cgroup);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
}

TEST(TestbedTest, PolicyFileListsEveryPod) {
  std::unique_ptr<Testbed> tb = MakeTestbed(2, 2);
  ASSERT_NE(tb, nullptr);
  absl::StatusOr<std::string> path =
      tb->WritePolicyFile("policy.json", {{"pod-0-1", true}, {"pod-1-0", false}});
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_EQ(*path, tb->work_dir() + "/policy.json");
  nlohmann::json j = nlohmann::json::parse(ReadFileOrEmpty(*path), nullptr, false);
  ASSERT_TRUE(j.is_object() && j.contains("workloads") && j["workloads"].is_array()) << j;
  ASSERT_EQ(j["workloads"].size(), 4u);
  for (const nlohmann::json& w : j["workloads"]) {
    const std::string name = w.value("name", "");
    const Pod* pod = nullptr;
    for (const Node& node : tb->nodes()) {
      for (const Pod& p : node.pods) {
        if (p.name == name) pod = &p;
      }
    }
    ASSERT_NE(pod, nullptr) << w;
    EXPECT_EQ(w.value("uid", ""), pod->uid);
    EXPECT_EQ(w.value("namespace", ""), "default");
    EXPECT_EQ(w.value("node", ""), tb->node(pod->node_index).name);
    EXPECT_EQ(w["ips"], nlohmann::json({pod->ipv4, pod->ipv6}));
    EXPECT_EQ(w.value("meshed", false), name == "pod-0-1") << name;
  }
}

TEST(TestbedTest, TeardownLeavesNothingBehind) {
  std::unique_ptr<Testbed> tb = MakeTestbed(2, 2);
  ASSERT_NE(tb, nullptr);
  const std::string run_id = tb->run_id();
  const std::string cgroup_dir = CgroupMount() + "/" + run_id;
  const std::string work_dir = tb->work_dir();
  EXPECT_EQ(NetnsNamesContaining(run_id).size(), 2u * 2u + 2u + 1u);
  EXPECT_TRUE(fs::is_directory(cgroup_dir));
  EXPECT_TRUE(fs::is_directory(work_dir));

  absl::StatusOr<ProcessPtr> in_pod = tb->Spawn(tb->pod(1, 1), {"sleep", "60"});
  ASSERT_TRUE(in_pod.ok()) << in_pod.status();
  absl::StatusOr<ProcessPtr> on_node = tb->SpawnOnNode(tb->node(0), {"sleep", "60"});
  ASSERT_TRUE(on_node.ok()) << on_node.status();

  tb->Teardown();
  EXPECT_THAT(NetnsNamesContaining(run_id), ::testing::IsEmpty());
  EXPECT_FALSE(fs::exists(cgroup_dir));
  EXPECT_FALSE(fs::exists(work_dir));
  for (ProcessPtr* p : {&*in_pod, &*on_node}) {
    absl::StatusOr<int> status = (*p)->Wait(seconds(5));
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL);
  }
  tb->Teardown();  // idempotent
  EXPECT_FALSE(tb->Spawn(tb->pod(0, 0), {"true"}).ok());
}

// What a forked child that built a test bed reports: its run id and the pids of a pod process
// and a node process it started.
struct ChildRun {
  pid_t child = -1;
  std::string run_id;
  pid_t pod_pid = -1, node_pid = -1;
};

// Forks a child that installs the signal teardown, builds a 1x1 test bed with prefix `prefix`,
// starts `sleep` in the pod and on the node, reports, and waits for a signal.
ChildRun ForkTestbedOwner(const std::string& prefix) {
  ChildRun run;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return run;
  run.child = fork();
  if (run.child == 0) {
    close(fds[0]);
    Testbed::InstallSignalTeardown();
    Options options;
    options.nodes = 1;
    options.pods_per_node = 1;
    options.prefix = prefix;
    absl::StatusOr<std::unique_ptr<Testbed>> tb = Testbed::Create(options);
    if (!tb.ok()) _exit(3);
    absl::StatusOr<ProcessPtr> in_pod = (*tb)->Spawn((*tb)->pod(0, 0), {"sleep", "60"});
    absl::StatusOr<ProcessPtr> on_node = (*tb)->SpawnOnNode((*tb)->node(0), {"sleep", "60"});
    if (!in_pod.ok() || !on_node.ok()) _exit(4);
    std::string line =
        absl::StrCat((*tb)->run_id(), " ", (*in_pod)->pid(), " ", (*on_node)->pid(), "\n");
    if (write(fds[1], line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(5);
    while (true) pause();
  }
  close(fds[1]);
  if (run.child < 0) {
    close(fds[0]);
    return run;
  }
  std::string line;
  pollfd pfd = {fds[0], POLLIN, 0};
  char buf[256];
  while (line.find('\n') == std::string::npos && poll(&pfd, 1, 20000) == 1) {
    ssize_t n = read(fds[0], buf, sizeof(buf));
    if (n <= 0) break;
    line.append(buf, n);
  }
  close(fds[0]);
  std::vector<std::string> f = absl::StrSplit(absl::StripTrailingAsciiWhitespace(line), ' ');
  if (f.size() == 3) {
    run.run_id = f[0];
    run.pod_pid = std::stoi(f[1]);
    run.node_pid = std::stoi(f[2]);
  }
  return run;
}

bool GoneWithin(pid_t pid, milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    // Orphans are reaped by init; a zombie still counts as gone.
    std::string stat = ReadFileOrEmpty(absl::StrCat("/proc/", pid, "/stat"));
    if (stat.empty() || absl::StrContains(stat, ") Z ")) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return false;
}

void ExpectRunGone(const ChildRun& run) {
  EXPECT_THAT(NetnsNamesContaining(run.run_id), ::testing::IsEmpty());
  EXPECT_FALSE(fs::exists(CgroupMount() + "/" + run.run_id));
  EXPECT_FALSE(fs::exists("/tmp/" + run.run_id));
  EXPECT_TRUE(GoneWithin(run.pod_pid, seconds(5))) << "pod process " << run.pod_pid;
  EXPECT_TRUE(GoneWithin(run.node_pid, seconds(5))) << "node process " << run.node_pid;
}

// Last resort if a test below fails half-way: whatever its child left is reaped.
void KillAndReap(ChildRun& run, const std::string& prefix) {
  if (run.child > 0 && waitpid(run.child, nullptr, WNOHANG) == 0) {
    kill(run.child, SIGKILL);
    waitpid(run.child, nullptr, 0);
  }
  Testbed::ReapStale(prefix);
}

TEST(TestbedTest, SigtermTearsDownEveryLiveTestbed) {
  const std::string prefix = "shunt-sigtest";
  ChildRun run = ForkTestbedOwner(prefix);
  ASSERT_GT(run.child, 0);
  if (run.run_id.empty()) KillAndReap(run, prefix);
  ASSERT_FALSE(run.run_id.empty()) << "child did not build its test bed";
  EXPECT_THAT(NetnsNamesContaining(run.run_id), Not(::testing::IsEmpty()));
  ASSERT_EQ(kill(run.child, SIGTERM), 0);
  int status = 0;
  ASSERT_EQ(waitpid(run.child, &status, 0), run.child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << status;  // re-raised
  ExpectRunGone(run);
  KillAndReap(run, prefix);
}

TEST(TestbedTest, RunOfAKilledProcessIsReaped) {
  const std::string prefix = "shunt-killtest";
  ChildRun run = ForkTestbedOwner(prefix);
  ASSERT_GT(run.child, 0);
  if (run.run_id.empty()) KillAndReap(run, prefix);
  ASSERT_FALSE(run.run_id.empty()) << "child did not build its test bed";
  ASSERT_EQ(kill(run.child, SIGKILL), 0);
  ASSERT_EQ(waitpid(run.child, nullptr, 0), run.child);
  EXPECT_THAT(NetnsNamesContaining(run.run_id), Not(::testing::IsEmpty()));  // left behind
  Testbed::ReapStale(prefix);
  ExpectRunGone(run);
  KillAndReap(run, prefix);
}

// A run whose creator died (crash, SIGKILL) is reaped by the next Create()/ReapStale().
TEST(TestbedTest, ReapStaleRemovesRunsOfDeadProcesses) {
  const std::string prefix = "shunt-reaptest";
  pid_t dead = fork();
  ASSERT_GE(dead, 0);
  if (dead == 0) _exit(0);
  ASSERT_EQ(waitpid(dead, nullptr, 0), dead);
  const std::string stale = absl::StrCat(prefix, "-", dead, "-beef");
  const std::string live = absl::StrCat(prefix, "-", getpid(), "-cafe");
  const std::string mount = CgroupMount();
  int code = 0;

  RunIp({"netns", "add", stale + "-n0"}, &code);
  ASSERT_EQ(code, 0);
  RunIp({"netns", "add", live + "-n0"}, &code);
  ASSERT_EQ(code, 0);
  ASSERT_TRUE(fs::create_directories(mount + "/" + stale + "/" + stale + "-n0/kubepods"));
  ASSERT_TRUE(fs::create_directories("/tmp/" + stale));
  // A leftover pod process in the stale cgroup and a leftover node process listed in node-pids.
  pid_t pod_proc = fork();
  ASSERT_GE(pod_proc, 0);
  if (pod_proc == 0) {
    pause();
    _exit(0);
  }
  std::ofstream(mount + "/" + stale + "/" + stale + "-n0/kubepods/cgroup.procs")
      << pod_proc << "\n";
  pid_t node_proc = fork();
  ASSERT_GE(node_proc, 0);
  if (node_proc == 0) {
    pause();
    _exit(0);
  }
  std::this_thread::sleep_for(milliseconds(20));
  std::string stat = ReadFileOrEmpty(absl::StrCat("/proc/", node_proc, "/stat"));
  std::vector<std::string> fields = absl::StrSplit(stat.substr(stat.rfind(')') + 2), ' ');
  ASSERT_GT(fields.size(), 19u);
  std::ofstream("/tmp/" + stale + "/node-pids") << node_proc << " " << fields[19] << "\n";
  const bool made_bpffs_dir = !fs::exists("/sys/fs/bpf/shunt");
  std::error_code ec;
  fs::create_directories("/sys/fs/bpf/shunt/" + stale + "-n0", ec);
  const bool have_bpffs = !ec;

  Testbed::ReapStale(prefix);

  EXPECT_THAT(NetnsNamesContaining(stale), ::testing::IsEmpty());
  EXPECT_THAT(NetnsNamesContaining(live), Not(::testing::IsEmpty()));
  EXPECT_FALSE(fs::exists(mount + "/" + stale));
  EXPECT_FALSE(fs::exists("/tmp/" + stale));
  if (have_bpffs) {
    EXPECT_FALSE(fs::exists("/sys/fs/bpf/shunt/" + stale + "-n0"));
  }
  for (pid_t pid : {pod_proc, node_proc}) {
    int status = 0;
    pid_t r = 0;
    for (int i = 0; i < 200 && r == 0; ++i) {
      r = waitpid(pid, &status, WNOHANG);
      if (r == 0) std::this_thread::sleep_for(milliseconds(10));
    }
    if (r == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      ADD_FAILURE() << "process " << pid << " of the stale run survived";
    } else {
      EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    }
  }

  // Clean up whatever the test itself made (and what a failed reap left).
  RunIp({"netns", "del", live + "-n0"}, &code);
  RunIp({"netns", "del", stale + "-n0"}, &code);
  fs::remove_all("/tmp/" + stale, ec);
  if (fs::exists(mount + "/" + stale)) {
    rmdir((mount + "/" + stale + "/" + stale + "-n0/kubepods").c_str());
    rmdir((mount + "/" + stale + "/" + stale + "-n0").c_str());
    rmdir((mount + "/" + stale).c_str());
  }
  fs::remove_all("/sys/fs/bpf/shunt/" + stale + "-n0", ec);
  if (made_bpffs_dir) rmdir("/sys/fs/bpf/shunt");
}

}  // namespace
}  // namespace shunt::testbed
