// shunt-demo: README's first command. A simulated 2-node cluster on this machine, shunt-agent on
// each node, traffic between pods, and what the kernel redirect did with it.
#include <sys/wait.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testbed/testbed.h"

namespace {

using namespace std::chrono_literals;
using shunt::e2e::AgentProcess;
using shunt::e2e::SumSamples;
using shunt::e2e::TestpeerBinary;
using shunt::testbed::Pod;
using shunt::testbed::Testbed;

void Say(const std::string& s) {
  std::printf("%s\n", s.c_str());
  std::fflush(stdout);
}

struct Demo {
  Testbed& bed;

  // Servers on the last CPU, clients on CPU 0: both paths get the same placement.
  std::vector<std::string> server_cpu = {"taskset", "-c",
                                         std::to_string(std::thread::hardware_concurrency() - 1)};
  std::vector<std::string> client_cpu = {"taskset", "-c", "0"};

  shunt::testbed::ProcessPtr Server(const Pod& pod, int port, const std::string& mode) {
    auto p = shunt::e2e::StartTestpeerServer(
        bed, pod, {absl::StrCat("--port=", port), "--mode=" + mode}, server_cpu);
    return p.ok() ? std::move(*p) : nullptr;
  }

  nlohmann::json Client(const Pod& pod, std::vector<std::string> args) {
    auto r = shunt::e2e::RunTestpeer(bed, pod, std::move(args), std::chrono::seconds(120),
                                     client_cpu);
    if (!r.ok()) return {{"error", std::string(r.status().message())}};
    return *r;
  }
};

int RunDemo() {
  Testbed::InstallSignalTeardown();
  shunt::testbed::Options opts;
  opts.nodes = 2;
  opts.pods_per_node = 4;  // pods 0, 1 meshed; 2, 3 not
  Say("== shunt demo: a simulated 2-node cluster on this machine ==");
  auto created = Testbed::Create(opts);
  if (!created.ok()) {
    std::fprintf(stderr, "cannot create the test bed: %s\n",
                 std::string(created.status().message()).c_str());
    return 1;
  }
  Testbed& bed = **created;
  for (const auto& node : bed.nodes()) {
    Say(absl::StrFormat("node %s  (netns %s, cgroup driver %s, cgroup root %s)", node.name,
                        node.netns,
                        node.driver == shunt::testbed::CgroupDriver::kSystemd ? "systemd"
                                                                               : "cgroupfs",
                        node.cgroup_root));
    for (const auto& pod : node.pods) {
      Say(absl::StrFormat("  pod %-8s %-14s %-14s %s", pod.name, pod.ipv4, pod.ipv6,
                          pod.index < 2 ? "meshed" : "not meshed"));
    }
  }
  std::map<std::string, bool> meshed;
  for (const auto& node : bed.nodes()) {
    meshed[node.pods[0].name] = true;
    meshed[node.pods[1].name] = true;
  }
  auto policy = bed.WritePolicyFile("policy.json", meshed);
  if (!policy.ok()) return 1;
  Say("policy file: " + *policy);

  std::vector<std::unique_ptr<AgentProcess>> agents;
  for (const auto& node : bed.nodes()) {
    agents.push_back(std::make_unique<AgentProcess>(bed, node, *policy));
    if (absl::Status s = agents.back()->Start(); !s.ok()) {
      std::fprintf(stderr, "agent on %s failed: %s\n", node.name.c_str(),
                   std::string(s.message()).c_str());
      return 1;
    }
    Say("shunt-agent ready on " + node.name);
  }

  Demo demo{bed};
  const Pod& a = bed.pod(0, 0);
  const Pod& b = bed.pod(0, 1);
  const Pod& c = bed.pod(0, 2);
  const Pod& d = bed.pod(0, 3);
  const Pod& remote = bed.pod(1, 0);

  Say("\n-- 1. same node, meshed -> meshed: 256 MiB, checksummed --");
  auto srv = demo.Server(b, 8080, "verify");
  auto before = bed.PodLinkStats(a);
  auto r = demo.Client(a, {"verify", "--to=" + b.ipv4 + ":8080", "--bytes=268435456", "--seed=1"});
  auto after = bed.PodLinkStats(a);
  Say("result: " + r.dump());
  if (before.ok() && after.ok()) {
    Say(absl::StrFormat("bytes on %s's veth during the transfer: tx %d (payload 268435456)",
                        a.name, after->tx_bytes - before->tx_bytes));
  }

  Say("\n-- 2. other node (" + remote.name + "): the normal path (TPROXY comes next) --");
  auto srv2 = demo.Server(remote, 8080, "verify");
  Say("result: " + demo.Client(a, {"verify", "--to=" + remote.ipv4 + ":8080",
                                   "--bytes=16777216", "--seed=2"})
                       .dump());

  Say("\n-- 3. throughput, 3 s each, client on CPU 0 and server on the last CPU: plain (" +
      c.name + " -> " + d.name + ") vs shunt (" + a.name + " -> " + b.name + ") --");
  auto sink_plain = demo.Server(d, 9000, "sink");
  auto sink_shunt = demo.Server(b, 9000, "sink");
  auto plain = demo.Client(c, {"bulk", "--to=" + d.ipv4 + ":9000", "--seconds=3"});
  auto fast = demo.Client(a, {"bulk", "--to=" + b.ipv4 + ":9000", "--seconds=3"});
  double pg = plain.value("gbit_per_s", 0.0), fg = fast.value("gbit_per_s", 0.0);
  Say(absl::StrFormat("plain %.2f Gbit/s, shunt %.2f Gbit/s, ratio %.2fx", pg, fg,
                      pg > 0 ? fg / pg : 0));

  Say("\n-- 4. the agent's counters on " + bed.node(0).name + " (/metrics) --");
  auto samples = agents[0]->Scrape();
  if (samples.ok()) {
    for (const auto& s : *samples) {
      if (s.name.rfind("shunt_sockmap_", 0) != 0 && s.name != "shunt_sockhash_socket_events_total")
        continue;
      std::string labels;
      for (const auto& [k, v] : s.labels) {
        if (k == "source_workload_namespace" || k == "destination_workload_namespace" ||
            k == "workload_namespace" || k == "source_workload" || k == "destination_workload" ||
            k == "workload")
          continue;
        absl::StrAppend(&labels, labels.empty() ? "" : ",", k, "=", v);
      }
      Say(absl::StrFormat("  %-42s {%s} %.0f", s.name, labels, s.value));
    }
  }
  Say("\n-- 5. uninstall: every program, link, pin and map removed --");
  for (size_t i = 0; i < agents.size(); ++i) {
    agents[i]->Stop().IgnoreError();
    auto out = shunt::e2e::UninstallAgent(bed, bed.node(i));
    Say(absl::StrCat(bed.node(i).name, ": ",
                     out.ok() && out->exit_code == 0 ? "uninstalled" : "uninstall FAILED"));
  }
  bed.Teardown();
  Say("test bed removed. Done.");
  return 0;
}

}  // namespace

int main() { return RunDemo(); }
