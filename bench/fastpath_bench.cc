// Same-node pod-to-pod benchmark: the plain kernel path (two unmeshed pods) against shunt's
// sockhash redirect (two meshed pods), measured in the same run on the same test bed, rounds
// interleaved. Prints bulk throughput and 1 KiB request/response latency (p50, p99) and the
// shunt/plain ratios. Not a test: it asserts nothing and is run by hand (see README).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testbed/testbed.h"

ABSL_FLAG(int, seconds, 3, "Duration of each bulk throughput run.");
ABSL_FLAG(int, rounds, 3, "Interleaved rounds per path; the median is reported.");
ABSL_FLAG(int, pingpong_count, 20000, "Request/response exchanges per latency run.");
ABSL_FLAG(int, message_size, 1024, "Request/response message size in bytes.");
ABSL_FLAG(std::string, json_out, "", "Also write the figures as JSON to this file.");

namespace {

using namespace std::chrono_literals;
using shunt::e2e::AgentProcess;
using shunt::e2e::TestpeerBinary;
using shunt::testbed::Pod;
using shunt::testbed::Testbed;

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Processes are pinned with taskset so that both paths see the same CPU placement.
shunt::testbed::ProcessPtr Server(Testbed& bed, const Pod& pod, int port, const std::string& mode,
                                  const std::string& cpu) {
  auto p = shunt::e2e::StartTestpeerServer(
      bed, pod, {absl::StrCat("--port=", port), "--mode=" + mode}, {"taskset", "-c", cpu});
  if (!p.ok()) std::fprintf(stderr, "server: %s\n", std::string(p.status().message()).c_str());
  return p.ok() ? std::move(*p) : nullptr;
}

nlohmann::json Client(Testbed& bed, const Pod& pod, const std::string& cpu,
                      std::vector<std::string> args) {
  auto r = shunt::e2e::RunTestpeer(bed, pod, std::move(args), std::chrono::seconds(300),
                                   {"taskset", "-c", cpu});
  if (!r.ok()) {
    std::fprintf(stderr, "client failed: %s\n", std::string(r.status().message()).c_str());
    return {};
  }
  return *r;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  Testbed::InstallSignalTeardown();
  shunt::testbed::Options opts;
  opts.nodes = 1;
  opts.pods_per_node = 4;
  auto created = Testbed::Create(opts);
  if (!created.ok()) {
    std::fprintf(stderr, "test bed: %s\n", std::string(created.status().message()).c_str());
    return 1;
  }
  Testbed& bed = **created;
  const Pod &a = bed.pod(0, 0), &b = bed.pod(0, 1), &c = bed.pod(0, 2), &d = bed.pod(0, 3);
  auto policy = bed.WritePolicyFile("policy.json", {{a.name, true}, {b.name, true}});
  if (!policy.ok()) return 1;
  AgentProcess agent(bed, bed.node(0), *policy);
  if (absl::Status s = agent.Start(); !s.ok()) {
    std::fprintf(stderr, "agent: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  const int rounds = absl::GetFlag(FLAGS_rounds);
  const std::string secs = absl::StrCat("--seconds=", absl::GetFlag(FLAGS_seconds));
  const std::string count = absl::StrCat("--count=", absl::GetFlag(FLAGS_pingpong_count));
  const std::string size = absl::StrCat("--size=", absl::GetFlag(FLAGS_message_size));
  const int ncpu = static_cast<int>(std::thread::hardware_concurrency());
  nlohmann::json report = nlohmann::json::object();
  std::printf("same-node pod-to-pod, %d interleaved rounds (median), %d B messages, %d CPUs\n",
              rounds, absl::GetFlag(FLAGS_message_size), ncpu);
  // CPU placement changes wake-up costs more than anything else on a small VM: measure both
  // paths with client and server on different CPUs, and on one CPU.
  struct Placement {
    const char* name;
    std::string client_cpu, server_cpu;
  };
  std::vector<Placement> placements = {{"split CPUs", "0", ncpu > 1 ? "1" : "0"},
                                       {"one CPU", "0", "0"}};
  int port = 9000;
  for (const auto& pl : placements) {
    std::vector<shunt::testbed::ProcessPtr> servers;
    const int sink_port = port++, echo_port = port++;
    for (const Pod* p : {&b, &d}) {
      servers.push_back(Server(bed, *p, sink_port, "sink", pl.server_cpu));
      servers.push_back(Server(bed, *p, echo_port, "echo", pl.server_cpu));
    }
    auto to = [](const Pod& p, int port) { return absl::StrCat("--to=", p.ipv4, ":", port); };
    std::vector<double> plain_gbps, shunt_gbps, plain_p50, shunt_p50, plain_p99, shunt_p99;
    for (int r = 0; r < rounds; ++r) {
      // Interleaved so that drift of the machine hits both paths alike.
      plain_gbps.push_back(Client(bed, c, pl.client_cpu, {"bulk", to(d, sink_port), secs})
                               .value("gbit_per_s", 0.0));
      shunt_gbps.push_back(Client(bed, a, pl.client_cpu, {"bulk", to(b, sink_port), secs})
                               .value("gbit_per_s", 0.0));
      auto pp = Client(bed, c, pl.client_cpu,
                       {"pingpong", to(d, echo_port), size, count, "--warmup=1000"});
      auto ps = Client(bed, a, pl.client_cpu,
                       {"pingpong", to(b, echo_port), size, count, "--warmup=1000"});
      plain_p50.push_back(pp.value("p50_us", 0.0));
      plain_p99.push_back(pp.value("p99_us", 0.0));
      shunt_p50.push_back(ps.value("p50_us", 0.0));
      shunt_p99.push_back(ps.value("p99_us", 0.0));
      std::fprintf(stderr,
                   "%s round %d: plain %.2f Gbit/s p50 %.1f us | shunt %.2f Gbit/s p50 %.1f us\n",
                   pl.name, r + 1, plain_gbps.back(), plain_p50.back(), shunt_gbps.back(),
                   shunt_p50.back());
    }
    const double tp = Median(plain_gbps), ts = Median(shunt_gbps);
    const double p50p = Median(plain_p50), p50s = Median(shunt_p50);
    const double p99p = Median(plain_p99), p99s = Median(shunt_p99);
    std::printf("\n[%s: client on CPU %s, server on CPU %s]\n", pl.name, pl.client_cpu.c_str(),
                pl.server_cpu.c_str());
    std::printf("%-26s %12s %12s %12s\n", "metric", "plain", "shunt", "shunt/plain");
    std::printf("%-26s %12.2f %12.2f %11.2fx\n", "bulk throughput (Gbit/s)", tp, ts,
                tp > 0 ? ts / tp : 0);
    std::printf("%-26s %12.1f %12.1f %11.2fx\n", "req/resp p50 latency (us)", p50p, p50s,
                p50p > 0 ? p50s / p50p : 0);
    std::printf("%-26s %12.1f %12.1f %11.2fx\n", "req/resp p99 latency (us)", p99p, p99s,
                p99p > 0 ? p99s / p99p : 0);
    report[pl.name] = {{"throughput_gbit_per_s", {{"plain", tp}, {"shunt", ts}}},
                       {"p50_us", {{"plain", p50p}, {"shunt", p50s}}},
                       {"p99_us", {{"plain", p99p}, {"shunt", p99s}}}};
  }
  if (auto m = agent.Scrape(); m.ok()) {
    // How the meshed pair's sends went: a benchmark of the redirect must show that it redirected.
    std::printf("shunt path sends: redirected %.0f msgs / %.0f bytes", 
                shunt::e2e::SumSamples(*m, "shunt_sockmap_redirected_messages_total"),
                shunt::e2e::SumSamples(*m, "shunt_sockmap_redirected_bytes_total"));
    for (const char* reason : {"peer_not_ready", "socket_on_stack", "peer_gone", "no_state"}) {
      std::printf(", %s %.0f msgs", reason,
                  shunt::e2e::SumSamples(*m, "shunt_sockmap_fallback_messages_total",
                                         {{"reason", reason}}));
    }
    std::printf("\n");
  }
  if (!absl::GetFlag(FLAGS_json_out).empty()) {
    FILE* f = std::fopen(absl::GetFlag(FLAGS_json_out).c_str(), "w");
    if (f) {
      std::fputs(report.dump(2).c_str(), f);
      std::fclose(f);
    }
  }
  agent.Stop().IgnoreError();
  shunt::e2e::UninstallAgent(bed, bed.node(0)).IgnoreError();
  bed.Teardown();
  return 0;
}
