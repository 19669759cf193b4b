// What the kernel's L4 metrics (docs/metrics.md, shunt_connection*) cost: two meshed pods of a
// node whose agent measures every connection (the default) against two meshed pods of a second
// node whose agent runs --connection-metrics=false, in the same run, rounds interleaved:
// short connections per second (connect, read a line, close: the events' cost), spliced bulk
// throughput (the per-send byte count) and 1 KiB request/response latency. Prints both and the
// ratio. Not a test: it asserts nothing and is run by hand (see README).
#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testbed/testbed.h"

ABSL_FLAG(int, rounds, 5, "Interleaved rounds per path; the median is reported.");
ABSL_FLAG(int, conns, 3000, "Short connections per connection-rate run.");
ABSL_FLAG(int, seconds, 2, "Duration of each bulk throughput run.");
ABSL_FLAG(int, pingpong_count, 10000, "Request/response exchanges per latency run.");
ABSL_FLAG(bool, swap_nodes, false,
          "Measure on node 1 and leave node 0 unmeasured (the other way round): a check that "
          "the difference is the metrics', not the nodes'.");

namespace {

using shunt::e2e::AgentProcess;
using shunt::testbed::Pod;
using shunt::testbed::Testbed;

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  Testbed::InstallSignalTeardown();
  auto created = shunt::bench::CreateTestbed(2, 2);
  if (!created) return 1;
  Testbed& bed = *created;
  const Pod &a = bed.pod(0, 0), &b = bed.pod(0, 1), &c = bed.pod(1, 0), &d = bed.pod(1, 1);
  auto policy = bed.WritePolicyFile(
      "policy.json", {{a.name, true}, {b.name, true}, {c.name, true}, {d.name, true}});
  if (!policy.ok()) return 1;
  const bool swap = absl::GetFlag(FLAGS_swap_nodes);
  AgentProcess measured(bed, bed.node(swap ? 1 : 0), *policy, {});
  AgentProcess unmeasured(bed, bed.node(swap ? 0 : 1), *policy, {"--connection-metrics=false"});
  for (AgentProcess* ag : {&measured, &unmeasured}) {
    if (absl::Status s = ag->Start(); !s.ok()) {
      std::fprintf(stderr, "agent: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  struct Path {
    const char* name;
    const Pod* client;
    const Pod* server;
  };
  const std::vector<Path> paths = {{"off", swap ? &a : &c, swap ? &b : &d},
                                   {"on", swap ? &c : &a, swap ? &d : &b}};
  std::vector<shunt::testbed::ProcessPtr> servers;
  for (const auto& p : paths) {
    for (const auto& [port, mode] : std::vector<std::pair<int, std::string>>{
             {9100, "ident"}, {9101, "sink"}, {9102, "echo"}}) {
      std::vector<std::string> args = {absl::StrCat("--port=", port), "--mode=" + mode};
      if (mode == "ident") args.push_back("--ident=x");
      auto s = shunt::e2e::StartTestpeerServer(bed, *p.server, args);
      if (!s.ok()) {
        std::fprintf(stderr, "server: %s\n", std::string(s.status().message()).c_str());
        return 1;
      }
      servers.push_back(std::move(*s));
    }
    // Teaches each path's classes (docs/fastpath.md): the runs below are spliced throughout.
    shunt::bench::Client(bed, *p.client, {"bulk", absl::StrCat("--to=", p.server->ipv4, ":9101"),
                                          "--seconds=0.2"});
    shunt::bench::Client(bed, *p.client, {"pingpong", absl::StrCat("--to=", p.server->ipv4, ":9102"),
                                          "--count=100"});
  }
  const int rounds = absl::GetFlag(FLAGS_rounds), conns = absl::GetFlag(FLAGS_conns);
  std::map<std::string, std::vector<double>> cps, gbps, p50;
  for (int r = 0; r < rounds; ++r) {
    // Each round in the other order: neither goes first throughout.
    std::vector<Path> order = paths;
    if (r % 2) std::swap(order[0], order[1]);
    for (const auto& p : order) {
      const auto t0 = std::chrono::steady_clock::now();
      auto probe = shunt::bench::Client(
          bed, *p.client,
          {"probe", absl::StrCat("--to=", p.server->ipv4, ":9100"), absl::StrCat("--conns=", conns)});
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      cps[p.name].push_back(probe.value("connected", 0) / s);
      gbps[p.name].push_back(
          shunt::bench::Client(bed, *p.client,
                               {"bulk", absl::StrCat("--to=", p.server->ipv4, ":9101"),
                                absl::StrCat("--seconds=", absl::GetFlag(FLAGS_seconds))})
              .value("gbit_per_s", 0.0));
      p50[p.name].push_back(
          shunt::bench::Client(bed, *p.client,
                               {"pingpong", absl::StrCat("--to=", p.server->ipv4, ":9102"),
                                "--size=1024",
                                absl::StrCat("--count=", absl::GetFlag(FLAGS_pingpong_count)),
                                "--warmup=500"})
              .value("p50_us", 0.0));
    }
    std::fprintf(stderr, "round %d: off %.0f conn/s %.2f Gbit/s %.1f us | on %.0f conn/s %.2f Gbit/s %.1f us\n",
                 r + 1, cps["off"].back(), gbps["off"].back(), p50["off"].back(), cps["on"].back(),
                 gbps["on"].back(), p50["on"].back());
  }
  using shunt::bench::Median;
  std::printf("kernel L4 metrics on (default) vs --connection-metrics=false, same node shape, %d "
              "interleaved rounds (median), meshed pod to meshed pod (spliced)\n",
              rounds);
  std::printf("%-38s %10s %10s %8s\n", "metric", "off", "on", "on/off");
  auto row = [](const char* name, double off, double on) {
    std::printf("%-38s %10.2f %10.2f %7.3fx\n", name, off, on, off > 0 ? on / off : 0);
  };
  row("short connections per second", Median(cps["off"]), Median(cps["on"]));
  row("bulk throughput (Gbit/s)", Median(gbps["off"]), Median(gbps["on"]));
  row("1 KiB req/resp p50 latency (us)", Median(p50["off"]), Median(p50["on"]));
  // What the measured agent counted: every connection, none lost.
  auto scraped = measured.Scrape();
  if (scraped.ok()) {
    std::printf("measured agent: %.0f connections opened (reporter=source), %.0f events lost\n",
                shunt::e2e::SumSamples(*scraped, "shunt_connections_opened_total",
                                       {{"reporter", "source"}}),
                shunt::e2e::SumSamples(*scraped, "shunt_sockhash_socket_events_total",
                                       {{"event", "connection_event_lost"}}));
  }
  return 0;
}
