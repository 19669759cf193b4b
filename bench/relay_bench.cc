// Cross-node pod-to-pod benchmark of the in-pod capture and relay (docs/capture.md): a client pod
// of node 1 to a server pod of node 0, direct (the server pod unmeshed) against through shunt's
// relay (the server pod meshed, the agent with --capture: TPROXY in the pod's namespace, an
// upstream as the client, bytes spliced in the kernel), measured in the same run, rounds
// interleaved, medians. Prints bulk throughput and 1 KiB request/response latency (p50, p99),
// the ratios and what the relay adds. Not a test: it asserts nothing and is run by hand
// (README). HAProxy and nginx at the same place are still to come (issue 9).
#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testbed/testbed.h"

ABSL_FLAG(int, seconds, 3, "Duration of each bulk throughput run.");
ABSL_FLAG(int, rounds, 5, "Interleaved rounds per path; the median is reported.");
ABSL_FLAG(int, pingpong_count, 20000, "Request/response exchanges per latency run.");

namespace {

using shunt::testbed::Pod;
using shunt::testbed::Testbed;

using shunt::bench::Client;
using shunt::bench::Median;

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  Testbed::InstallSignalTeardown();
  auto created = shunt::bench::CreateTestbed(2, 2);
  if (!created) return 1;
  Testbed& bed = *created;
  // Servers on node 0: pod 0 meshed (captured), pod 1 not; clients on node 1.
  const Pod &meshed = bed.pod(0, 0), &plain = bed.pod(0, 1);
  const Pod &c0 = bed.pod(1, 0), &c1 = bed.pod(1, 1);
  auto policy = bed.WritePolicyFile("policy.json", {{meshed.name, true}});
  if (!policy.ok()) return 1;
  shunt::e2e::AgentProcess agent(bed, bed.node(0), *policy, {"--capture"});
  if (absl::Status s = agent.Start(); !s.ok()) {
    std::fprintf(stderr, "agent: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  for (int i = 0; i < 100; ++i) {  // until the pod is captured
    auto m = agent.Scrape();
    if (m.ok() && shunt::e2e::SumSamples(*m, "shunt_capture_pods") == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  struct Path {
    const char* name;
    const Pod* client;
    const Pod* server;
  };
  const std::vector<Path> paths = {{"direct", &c1, &plain}, {"shunt", &c0, &meshed}};
  std::vector<shunt::testbed::ProcessPtr> servers;
  for (const auto& p : paths) {
    for (const auto& [port, mode] : {std::pair{9100, "sink"}, {9101, "echo"}}) {
      auto s = shunt::e2e::StartTestpeerServer(
          bed, *p.server, {absl::StrCat("--port=", port), std::string("--mode=") + mode, "--bind=::"});
      if (!s.ok()) {
        std::fprintf(stderr, "server: %s\n", std::string(s.status().message()).c_str());
        return 1;
      }
      servers.push_back(std::move(*s));
    }
  }
  const std::string secs = absl::StrCat("--seconds=", absl::GetFlag(FLAGS_seconds));
  const std::string count = absl::StrCat("--count=", absl::GetFlag(FLAGS_pingpong_count));
  std::map<std::string, std::vector<double>> gbps, p50, p99;
  for (int r = 0; r < absl::GetFlag(FLAGS_rounds); ++r) {
    for (const auto& p : paths) {
      gbps[p.name].push_back(
          Client(bed, *p.client, {"bulk", absl::StrCat("--to=", p.server->ipv4, ":9100"), secs})
              .value("gbit_per_s", 0.0));
      auto pp = Client(bed, *p.client, {"pingpong", absl::StrCat("--to=", p.server->ipv4, ":9101"),
                                        "--size=1024", count, "--warmup=1000"});
      p50[p.name].push_back(pp.value("p50_us", 0.0));
      p99[p.name].push_back(pp.value("p99_us", 0.0));
    }
    std::fprintf(stderr, "round %d: direct %.2f Gbit/s p50 %.1f us | shunt %.2f Gbit/s p50 %.1f us\n",
                 r + 1, gbps["direct"].back(), p50["direct"].back(), gbps["shunt"].back(),
                 p50["shunt"].back());
  }
  auto m = agent.Scrape();
  const double relayed =
      m.ok() ? shunt::e2e::SumSamples(*m, "shunt_relay_bytes_total", {{"direction", "to_upstream"}})
             : 0;
  std::printf("cross-node pod-to-pod, %d interleaved rounds (median), 1024 B messages\n",
              absl::GetFlag(FLAGS_rounds));
  std::printf("%-26s %10s %10s %12s %12s\n", "metric", "direct", "shunt", "shunt/direct",
              "shunt-direct");
  auto row = [&](const char* metric, std::map<std::string, std::vector<double>>& v) {
    const double d = Median(v["direct"]), s = Median(v["shunt"]);
    std::printf("%-26s %10.2f %10.2f %11.2fx %12.2f\n", metric, d, s, d > 0 ? s / d : 0, s - d);
  };
  row("bulk throughput (Gbit/s)", gbps);
  row("req/resp p50 latency (us)", p50);
  row("req/resp p99 latency (us)", p99);
  std::printf("relayed to the server pods: %.0f bytes (through the relay, not around it)\n",
              relayed);
  agent.Stop().IgnoreError();
  shunt::e2e::UninstallAgent(bed, bed.node(0)).IgnoreError();
  bed.Teardown();
  return 0;
}
