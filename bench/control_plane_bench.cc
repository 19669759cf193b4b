// Control-plane benchmark (issue 3): a real shunt-controller serving a manifests directory of 1000
// pods and 500 services.
//  1. Propagation to 1000 agent streams: lightweight stream clients (bench/h2_policy_fleet.h: gRPC
//     over nghttp2, one connection each, one thread for all) stand in for agents; each ACKs every
//     response. Time from a manifest write to each client's
//     receipt of the change (p50, p99, and the last client). Baseline in the same run: 1 stream.
//  2. The controller's memory (RSS) and CPU with 1000 streams. Baseline: the same controller with
//     no stream.
//  3. To the BPF maps of real agents: two agents in the test bed, the same 1000 pods / 500
//  services;
//     time from a manifest write (a pod's mesh annotation) to the pod's entry appearing in /
//     leaving the agent's pinned pods map. Baseline: the same with a 4-pod cluster.
// Not a test: it asserts nothing; it prints figures and ratios (README has the latest).
#include <bpf/bpf.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fcntl.h>

#include <condition_variable>
#include <functional>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/cgroup.h"
#include "common/files.h"
#include "grpcpp/grpcpp.h"
#include "shunt/v1/discovery.grpc.pb.h"
#include "bench/h2_policy_fleet.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testbed/testbed.h"

ABSL_FLAG(int, pods, 1000, "Pods in the cluster.");
ABSL_FLAG(int, services, 500, "Services in the cluster (2 endpoints each).");
ABSL_FLAG(int, streams, 1000, "Agent streams for parts 1 and 2.");
ABSL_FLAG(int, changes, 30, "Manifest changes measured per configuration.");
ABSL_FLAG(int, poll_ms, 10, "The controller's --manifests-poll-ms.");
ABSL_FLAG(int, settle_ms, 3000, "Pause between the initial sync and the first measured change.");
ABSL_FLAG(int, change_gap_ms, 50, "Pause after every client got a change, before the next.");
ABSL_FLAG(bool, skip_agents, false, "Skip part 3 (real agents in the test bed; needs root).");

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

struct Cluster {
  int pods = 0, services = 0;
  std::vector<json> extra_pods;  // real test-bed pods
};

json PodJson(int i, const std::string& node, const std::string& uid, const std::string& ip,
             bool meshed_annotation) {
  json p = {{"apiVersion", "v1"},
            {"kind", "Pod"},
            {"metadata",
             {{"namespace", "bench"},
              {"name", absl::StrCat("pod-", i)},
              {"uid", uid},
              {"labels", {{"app", absl::StrCat("app-", i % 500)}}}}},
            {"spec", {{"nodeName", node}}},
            {"status", {{"phase", "Running"}, {"podIP", ip}, {"podIPs", {{{"ip", ip}}}}}}};
  if (meshed_annotation) p["metadata"]["annotations"] = {{"shunt.dev/mesh", "enabled"}};
  return p;
}

std::string FakeIp(int i) { return absl::StrCat("198.18.", 100 + i / 250, ".", 2 + i % 250); }

// Writes namespace, pods and services; the toggled pod lives in its own file.
void WriteCluster(const std::string& dir, int pods, int services) {
  json ns = {{"apiVersion", "v1"}, {"kind", "Namespace"}, {"metadata", {{"name", "bench"}}}};
  shunt::WriteFileAtomic(dir + "/ns.json", ns.dump()).IgnoreError();
  std::vector<json> items;
  for (int i = 0; i < pods; ++i) {
    items.push_back(PodJson(i, absl::StrCat("node-", i % 50),
                                    absl::StrFormat("00000000-0000-4000-8000-%012d", i), FakeIp(i),
                                    true));
  }
  for (int s = 0; s < services; ++s) {
    const std::string name = absl::StrCat("svc-", s);
    items.push_back(
        {{"apiVersion", "v1"},
         {"kind", "Service"},
         {"metadata", {{"namespace", "bench"}, {"name", name}}},
         {"spec",
          {{"clusterIP", absl::StrCat("198.19.", 10 + s / 250, ".", 1 + s % 250)},
           {"ports", {{{"name", "http"}, {"port", 80}, {"targetPort", 8080}}}}}}});
    json eps = json::array();
    for (int e = 0; e < 2 && pods > 0; ++e) {
      eps.push_back(
          {{"addresses", {FakeIp((2 * s + e) % pods)}}, {"conditions", {{"ready", true}}}});
    }
    items.push_back({{"apiVersion", "discovery.k8s.io/v1"},
                             {"kind", "EndpointSlice"},
                             {"metadata",
                              {{"namespace", "bench"},
                               {"name", name + "-1"},
                               {"labels", {{"kubernetes.io/service-name", name}}}}},
                             {"addressType", "IPv4"},
                             {"ports", {{{"name", "http"}, {"port", 8080}}}},
                             {"endpoints", eps}});
  }
  // Files of at most 1000 objects: a manifest file is capped at 4 MiB (ManifestsOptions).
  for (size_t first = 0, file = 0; first < items.size() || file == 0; first += 1000, ++file) {
    json list = {{"apiVersion", "v1"}, {"kind", "List"}, {"items", json::array()}};
    for (size_t i = first; i < std::min(items.size(), first + 1000); ++i) {
      list["items"].push_back(std::move(items[i]));
    }
    shunt::WriteFileAtomic(absl::StrFormat("%s/cluster-%04d.json", dir, file), list.dump())
        .IgnoreError();
  }
}

struct ProcStat {
  double rss_mib = 0;
  double cpu_s = 0;
};

ProcStat Stat(pid_t pid) {
  ProcStat s;
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) s.rss_mib = std::stod(line.substr(6)) / 1024.0;
  }
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string all((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto rp = all.rfind(')');
  std::istringstream rest(all.substr(rp + 2));
  std::vector<std::string> f;
  std::string x;
  while (rest >> x) f.push_back(x);
  if (f.size() > 13) {
    s.cpu_s = (std::stod(f[11]) + std::stod(f[12])) / sysconf(_SC_CLK_TCK);
  }
  return s;
}

pid_t StartController(const std::string& dir, int port) {
  pid_t pid = fork();
  if (pid == 0) {
    const std::string m = "--manifests=" + dir;
    const std::string l = absl::StrCat("--listen=127.0.0.1:", port);
    const std::string p = absl::StrCat("--manifests-poll-ms=", absl::GetFlag(FLAGS_poll_ms));
    const char* verbose = getenv("SHUNT_BENCH_TRACE") ? "--verbose" : "--noverbose";
    execl(SHUNT_CONTROLLER_BIN, SHUNT_CONTROLLER_BIN, m.c_str(), "--plaintext", l.c_str(),
          "--metrics-addr=127.0.0.1:0", "--admin-addr=127.0.0.1:0", p.c_str(), verbose,
          (char*)nullptr);
    _exit(127);
  }
  return pid;
}

void StopController(pid_t pid) {
  kill(pid, SIGTERM);
  int st;
  waitpid(pid, &st, 0);
}

// Toggles bench pod 0's label: one changed Workload per write.
void TouchPod(const std::string& dir, int n) {
  json p = PodJson(100000 + n % 2, "node-0", "11111111-0000-4000-8000-000000000000", "198.18.99.2",
                   true);
  p["metadata"]["name"] = "toggled";
  p["metadata"]["labels"]["round"] = absl::StrCat(n);
  shunt::WriteFileAtomic(dir + "/toggled.json", p.dump()).IgnoreError();
}

struct StreamResult {
  std::vector<double> latencies_ms;  // every client, every change
  std::vector<double> last_ms;       // per change: the slowest client
  ProcStat idle, loaded;
  double cpu_per_change_ms = 0;
};

StreamResult MeasureStreams(const std::string& dir, int streams, int changes, int port) {
  StreamResult r;
  pid_t pid = StartController(dir, port);
  const std::string target = absl::StrCat("127.0.0.1:", port);
  {  // Wait for the controller to serve.
    auto probe = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    for (int i = 0; i < 200; ++i) {
      if (probe->WaitForConnected(std::chrono::system_clock::now() +
                                  std::chrono::milliseconds(50)))
        break;
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  r.idle = Stat(pid);
  auto started = shunt::bench::H2PolicyFleet::Start(port, streams);
  if (!started.ok()) {
    std::fprintf(stderr, "stream clients: %s\n",
                 std::string(started.status().message()).c_str());
    StopController(pid);
    return r;
  }
  auto& fleet = **started;
  // Initial sync: everyone on the same version.
  const auto sync_deadline = Clock::now() + std::chrono::seconds(120);
  while (Clock::now() < sync_deadline) {
    const std::string v = fleet.version(0);
    if (!v.empty() && fleet.AllOn(v)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // The whole cluster must be in the snapshot, or the figures measure an empty one (a manifest
  // over the controller's size limit is skipped, for instance).
  const int expected = absl::GetFlag(FLAGS_pods) + absl::GetFlag(FLAGS_services) + 1;
  if (fleet.first_resources(0) != expected) {
    std::fprintf(stderr, "the controller's snapshot has %d resources, not %d: see its log\n",
                 fleet.first_resources(0), expected);
    StopController(pid);
    std::exit(1);
  }
  // Steady state: let the controller finish the initial sync's ACKs (1000 full-state pushes)
  // before measuring.
  std::this_thread::sleep_for(std::chrono::milliseconds(absl::GetFlag(FLAGS_settle_ms)));
  const ProcStat before = Stat(pid);
  for (int n = 0; n < changes; ++n) {
    const std::string old = fleet.version(0);
    const auto t0 = Clock::now();
    TouchPod(dir, n + 1);
    std::string v;
    const auto deadline = t0 + std::chrono::seconds(30);
    // Arrival times are taken by the clients; this loop only waits, and sleeps enough not to
    // compete with the controller for the 2 CPUs.
    while (Clock::now() < deadline) {
      v = fleet.version(0);
      if (v != old && fleet.AllOn(v)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    double last = 0;
    std::vector<double> this_change;
    for (int i = 0; i < fleet.size(); ++i) {
      Clock::time_point t;
      if (!fleet.ArrivalOf(i, v, &t)) continue;
      const double ms = std::chrono::duration<double, std::milli>(t - t0).count();
      r.latencies_ms.push_back(ms);
      this_change.push_back(ms);
      last = std::max(last, ms);
    }
    if (getenv("SHUNT_BENCH_TRACE")) {
      std::fprintf(stderr, "change %d: %zu streams, first %.1f p50 %.1f p90 %.1f last %.1f ms\n",
                   n, this_change.size(), Percentile(this_change, 0), Percentile(this_change, 0.5),
                   Percentile(this_change, 0.9), last);
    }
    r.last_ms.push_back(last);
    std::this_thread::sleep_for(std::chrono::milliseconds(absl::GetFlag(FLAGS_change_gap_ms)));
  }
  if (fleet.closed() > 0) std::fprintf(stderr, "%d streams were closed by the controller\n", fleet.closed());
  r.loaded = Stat(pid);
  r.cpu_per_change_ms = (r.loaded.cpu_s - before.cpu_s) * 1000.0 / std::max(changes, 1);
  StopController(pid);
  return r;
}

// Part 3: real agents in the test bed; the change is observed in the agent's pinned pods map.
void BenchAgents(int pods, int services, int changes) {
  using shunt::testbed::Pod;
  shunt::testbed::Testbed::InstallSignalTeardown();
  shunt::testbed::Options opts;
  opts.nodes = 2;
  opts.pods_per_node = 2;
  auto created = shunt::testbed::Testbed::Create(opts);
  if (!created.ok()) {
    std::fprintf(stderr, "test bed: %s\n", std::string(created.status().message()).c_str());
    return;
  }
  auto& bed = **created;
  const std::string dir = bed.work_dir() + "/manifests";
  shunt::MkdirAll(dir).IgnoreError();
  const Pod& target = bed.pod(1, 0);
  auto write_real_pods = [&](bool meshed) {
    json list = {{"apiVersion", "v1"}, {"kind", "List"}, {"items", json::array()}};
    for (const auto& node : bed.nodes()) {
      for (const auto& pod : node.pods) {
        json p = {{"apiVersion", "v1"},
                  {"kind", "Pod"},
                  {"metadata", {{"namespace", "default"}, {"name", pod.name}, {"uid", pod.uid}}},
                  {"spec", {{"nodeName", node.name}}},
                  {"status",
                   {{"phase", "Running"}, {"podIP", pod.ipv4}, {"podIPs", {{{"ip", pod.ipv4}}}}}}};
        if (&pod == &target && meshed)
          p["metadata"]["annotations"] = {{"shunt.dev/mesh", "enabled"}};
        list["items"].push_back(p);
      }
    }
    shunt::WriteFileAtomic(dir + "/real.json", list.dump()).IgnoreError();
  };
  write_real_pods(false);
  auto controller = bed.SpawnOnNode(
      bed.node(0),
      {SHUNT_CONTROLLER_BIN, "--manifests=" + dir, "--plaintext", "--listen=0.0.0.0:15010",
       "--metrics-addr=127.0.0.1:15014", "--admin-addr=127.0.0.1:15015",
       absl::StrCat("--manifests-poll-ms=", absl::GetFlag(FLAGS_poll_ms))});
  if (!controller.ok()) return;
  std::vector<std::unique_ptr<shunt::e2e::AgentProcess>> agents;
  for (const auto& node : bed.nodes()) {
    agents.push_back(std::make_unique<shunt::e2e::AgentProcess>(
        bed, node, "",
        std::vector<std::string>{absl::StrCat("--controller=", bed.node(0).ipv4, ":15010"),
                                 "--controller-plaintext", "--controller-max-backoff-ms=200",
                                 "--resync-ms=1000"}));
    if (absl::Status s = agents.back()->Start(std::chrono::seconds(30)); !s.ok()) {
      std::fprintf(stderr, "agent: %s\n", std::string(s.message()).c_str());
      return;
    }
  }
  auto cgroup_id = shunt::CgroupId(target.pod_cgroup);
  const std::string pin = "/sys/fs/bpf/shunt/" + bed.node(1).name + "/shunt_pods_v1";
  int map_fd = bpf_obj_get(pin.c_str());
  if (!cgroup_id.ok() || map_fd < 0) {
    std::fprintf(stderr, "cannot watch %s\n", pin.c_str());
    return;
  }
  auto in_map = [&] {
    uint64_t key = *cgroup_id;
    uint8_t value[64];
    return bpf_map_lookup_elem(map_fd, &key, value) == 0;
  };
  auto measure = [&](std::vector<double>& out) {
    for (int n = 0; n < changes; ++n) {
      const bool want = (n % 2) == 0;
      const auto t0 = Clock::now();
      write_real_pods(want);
      const auto deadline = t0 + std::chrono::seconds(10);
      while (in_map() != want && Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      out.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
    }
    if (in_map()) {  // end unmeshed
      write_real_pods(false);
      while (in_map()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  };
  std::vector<double> small, large;
  measure(small);
  WriteCluster(dir, pods - 4, services);  // the rest of the cluster arrives
  std::this_thread::sleep_for(std::chrono::seconds(2));
  measure(large);
  close(map_fd);
  std::printf("\n[to the BPF maps of a real agent: manifest write -> pods map entry on node 2]\n");
  std::printf("%-34s %12s %12s %12s\n", "metric", "4 pods", absl::StrCat(pods, " pods").c_str(),
              "ratio");
  const double s50 = Percentile(small, 0.5), l50 = Percentile(large, 0.5);
  const double s99 = Percentile(small, 0.99), l99 = Percentile(large, 0.99);
  std::printf("%-34s %12.1f %12.1f %11.2fx\n", "p50 (ms)", s50, l50, s50 > 0 ? l50 / s50 : 0);
  std::printf("%-34s %12.1f %12.1f %11.2fx\n", "p99 (ms)", s99, l99, s99 > 0 ? l99 / s99 : 0);
  for (auto& a : agents) a->Kill();
  (*controller)->Stop(SIGTERM, std::chrono::seconds(5)).IgnoreError();
  for (const auto& node : bed.nodes()) shunt::e2e::UninstallAgent(bed, node).IgnoreError();
  bed.Teardown();
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  rlimit nofile;  // one connection per stream on each side
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }

  const int pods = absl::GetFlag(FLAGS_pods), services = absl::GetFlag(FLAGS_services);
  const int streams = absl::GetFlag(FLAGS_streams), changes = absl::GetFlag(FLAGS_changes);
  char tmpl[] = "/tmp/shunt-cpbench-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  WriteCluster(dir, pods, services);
  TouchPod(dir, 0);

  std::printf("control plane: %d pods, %d services, manifests polled every %d ms, %u CPUs\n", pods,
              services, absl::GetFlag(FLAGS_poll_ms), std::thread::hardware_concurrency());
  StreamResult one = MeasureStreams(dir, 1, changes, 25010);
  StreamResult many = MeasureStreams(dir, streams, changes, 25011);
  std::printf("\n[propagation: manifest write -> change received by the agent stream]\n");
  std::printf("%-34s %12s %12s %12s\n", "metric", "1 stream",
              absl::StrCat(streams, " streams").c_str(), "ratio");
  auto row = [](const char* name, double a, double b) {
    std::printf("%-34s %12.1f %12.1f %11.2fx\n", name, a, b, a > 0 ? b / a : 0);
  };
  row("p50 (ms)", Percentile(one.latencies_ms, 0.5), Percentile(many.latencies_ms, 0.5));
  row("p99 (ms)", Percentile(one.latencies_ms, 0.99), Percentile(many.latencies_ms, 0.99));
  row("slowest stream, p99 over changes (ms)", Percentile(one.last_ms, 0.99),
      Percentile(many.last_ms, 0.99));
  std::printf("\n[controller resources]\n");
  std::printf("%-34s %12s %12s %12s\n", "metric", "no stream",
              absl::StrCat(streams, " streams").c_str(), "ratio");
  row("RSS (MiB)", many.idle.rss_mib, many.loaded.rss_mib);
  std::printf("%-34s %12.1f %12.1f\n", "CPU per change (ms), 1 vs N", one.cpu_per_change_ms,
              many.cpu_per_change_ms);

  if (!absl::GetFlag(FLAGS_skip_agents)) BenchAgents(pods, services, changes);
  std::filesystem::remove_all(dir);
  return 0;
}
