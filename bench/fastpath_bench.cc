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

shunt::testbed::ProcessPtr Server(Testbed& bed, const Pod& pod, int port, const std::string& mode) {
  const std::string ready = absl::StrCat(bed.work_dir(), "/ready-", pod.name, "-", port);
  auto p = bed.Spawn(pod, {TestpeerBinary(), "server", absl::StrCat("--port=", port),
                           "--mode=" + mode, "--ready-file=" + ready});
  if (!p.ok()) return nullptr;
  for (int i = 0; i < 200 && access(ready.c_str(), F_OK) != 0; ++i) std::this_thread::sleep_for(25ms);
  return std::move(*p);
}

nlohmann::json Client(Testbed& bed, const Pod& pod, std::vector<std::string> argv) {
  argv.insert(argv.begin(), TestpeerBinary());
  auto out = bed.Run(pod, argv, 300s);
  if (!out.ok() || out->exit_code != 0) {
    std::fprintf(stderr, "client failed: %s\n",
                 out.ok() ? out->err.c_str() : std::string(out.status().message()).c_str());
    return {};
  }
  return nlohmann::json::parse(out->out, nullptr, false);
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
  std::vector<shunt::testbed::ProcessPtr> servers;
  servers.push_back(Server(bed, b, 9000, "sink"));
  servers.push_back(Server(bed, d, 9000, "sink"));
  servers.push_back(Server(bed, b, 9001, "echo"));
  servers.push_back(Server(bed, d, 9001, "echo"));

  const int rounds = absl::GetFlag(FLAGS_rounds);
  const std::string secs = absl::StrCat("--seconds=", absl::GetFlag(FLAGS_seconds));
  const std::string count = absl::StrCat("--count=", absl::GetFlag(FLAGS_pingpong_count));
  const std::string size = absl::StrCat("--size=", absl::GetFlag(FLAGS_message_size));
  std::vector<double> plain_gbps, shunt_gbps, plain_p50, shunt_p50, plain_p99, shunt_p99;
  for (int r = 0; r < rounds; ++r) {
    // Interleaved so that drift of the machine hits both paths alike.
    plain_gbps.push_back(
        Client(bed, c, {"bulk", "--to=" + d.ipv4 + ":9000", secs}).value("gbit_per_s", 0.0));
    shunt_gbps.push_back(
        Client(bed, a, {"bulk", "--to=" + b.ipv4 + ":9000", secs}).value("gbit_per_s", 0.0));
    auto pp = Client(bed, c, {"pingpong", "--to=" + d.ipv4 + ":9001", size, count, "--warmup=1000"});
    auto ps = Client(bed, a, {"pingpong", "--to=" + b.ipv4 + ":9001", size, count, "--warmup=1000"});
    plain_p50.push_back(pp.value("p50_us", 0.0));
    plain_p99.push_back(pp.value("p99_us", 0.0));
    shunt_p50.push_back(ps.value("p50_us", 0.0));
    shunt_p99.push_back(ps.value("p99_us", 0.0));
    std::fprintf(stderr, "round %d: plain %.2f Gbit/s p50 %.1f us | shunt %.2f Gbit/s p50 %.1f us\n",
                 r + 1, plain_gbps.back(), plain_p50.back(), shunt_gbps.back(), shunt_p50.back());
  }
  const double tp = Median(plain_gbps), ts = Median(shunt_gbps);
  const double p50p = Median(plain_p50), p50s = Median(shunt_p50);
  const double p99p = Median(plain_p99), p99s = Median(shunt_p99);
  std::printf("same-node pod-to-pod, %d rounds (median), %d B messages, %u CPUs\n", rounds,
              absl::GetFlag(FLAGS_message_size), std::thread::hardware_concurrency());
  std::printf("%-26s %12s %12s %10s\n", "metric", "plain", "shunt", "shunt/plain");
  std::printf("%-26s %12.2f %12.2f %9.2fx\n", "bulk throughput (Gbit/s)", tp, ts, tp > 0 ? ts / tp : 0);
  std::printf("%-26s %12.1f %12.1f %9.2fx\n", "req/resp p50 latency (us)", p50p, p50s,
              p50p > 0 ? p50s / p50p : 0);
  std::printf("%-26s %12.1f %12.1f %9.2fx\n", "req/resp p99 latency (us)", p99p, p99s,
              p99p > 0 ? p99s / p99p : 0);
  if (!absl::GetFlag(FLAGS_json_out).empty()) {
    nlohmann::json j = {{"throughput_gbit_per_s", {{"plain", tp}, {"shunt", ts}}},
                        {"p50_us", {{"plain", p50p}, {"shunt", p50s}}},
                        {"p99_us", {{"plain", p99p}, {"shunt", p99s}}}};
    FILE* f = std::fopen(absl::GetFlag(FLAGS_json_out).c_str(), "w");
    if (f) {
      std::fputs(j.dump(2).c_str(), f);
      std::fclose(f);
    }
  }
  agent.Stop().IgnoreError();
  shunt::e2e::UninstallAgent(bed, bed.node(0)).IgnoreError();
  bed.Teardown();
  return 0;
}
