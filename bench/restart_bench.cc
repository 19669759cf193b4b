// What a restart of the agent costs new connections (issue 9, "Restarts and upgrades"), on the
// two-node test bed: a client pod of node 1 opens connections one after another (Python, a
// 5 s connect timeout) to a captured server pod of node 0 that answers each with a line, while
// the agent of node 0 is (1) left alone (the baseline), (2) replaced gracefully (a second agent
// takes the listeners over, the first one gets SIGTERM) and (3) killed with SIGKILL and started
// again at once, as a DaemonSet's pod restarts, and (4) killed under --supervise (its supervisor
// starts it again, on the listeners it kept). Prints, for each: attempts, failures, connect
// latency (p50, max) and the ratio of the max to the baseline's; for the crash, how long from
// the SIGKILL until the new agent captured the pod again and until a new connection was relayed
// again. Not a test: it asserts nothing and is run by hand (README).
#include <signal.h>
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "common/files.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testbed/testbed.h"

ABSL_FLAG(double, seconds, 3, "How long each phase's prober runs.");

namespace {

using shunt::testbed::Pod;
using shunt::testbed::Testbed;

double Monotonic() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

// Python's time.monotonic() is CLOCK_MONOTONIC too: the two sides' times compare.
constexpr char kProber[] = R"PY(
import json, os, socket, sys, time
host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = []
while not os.path.exists(stop):
    t0 = time.monotonic()
    ok = False
    try:
        s = socket.create_connection((host, port), timeout=5)
        ok = s.recv(64).startswith(b"restart")
        s.close()
    except OSError:
        pass
    out.append([t0, time.monotonic() - t0, ok])
    time.sleep(0.005)
print(json.dumps(out))
)PY";

struct Attempt {
  double start, latency;
  bool ok;
};

struct Phase {
  std::string name;
  std::vector<Attempt> attempts;
};

std::thread Probe(Testbed& bed, const Pod& client, const Pod& server, const std::string& stop,
                  Phase* phase) {
  return std::thread([&bed, &client, &server, stop, phase] {
    auto r = bed.Run(client, {"/usr/bin/python3", "-c", kProber, server.ipv4, "8082", stop},
                     std::chrono::seconds(120));
    if (!r.ok()) return;
    auto j = nlohmann::json::parse(r->out, nullptr, false);
    if (!j.is_array()) return;
    for (const auto& a : j) phase->attempts.push_back({a[0], a[1], a[2]});
  });
}

void Report(const Phase& p, double baseline_max) {
  std::vector<double> lat;
  int failed = 0;
  for (const auto& a : p.attempts) {
    lat.push_back(a.latency * 1e3);
    failed += !a.ok;
  }
  for (const auto& a : p.attempts) {
    if (!a.ok || a.latency > 0.5) {
      std::printf("  %s: an attempt at +%.3f s took %.0f ms, %s\n", p.name.c_str(),
                  a.start - p.attempts.front().start, a.latency * 1e3, a.ok ? "served" : "failed");
    }
  }
  std::sort(lat.begin(), lat.end());
  const double p50 = lat.empty() ? 0 : lat[lat.size() / 2];
  const double max = lat.empty() ? 0 : lat.back();
  std::printf("%-10s attempts %5zu  failed %3d  connect+answer p50 %7.2f ms  max %8.2f ms  (max %.1fx baseline)\n",
              p.name.c_str(), p.attempts.size(), failed, p50, max,
              baseline_max > 0 ? max / baseline_max : 0);
}

double MaxLatency(const Phase& p) {
  double m = 0;
  for (const auto& a : p.attempts) m = std::max(m, a.latency * 1e3);
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  Testbed::InstallSignalTeardown();
  auto created = shunt::bench::CreateTestbed(2, 1);
  if (!created) return 1;
  Testbed& bed = *created;
  const Pod &server = bed.pod(0, 0), &client = bed.pod(1, 0);
  auto policy = bed.WritePolicyFile("policy.json", {{server.name, true}});
  if (!policy.ok()) return 1;
  auto srv = shunt::e2e::StartTestpeerServer(bed, server, {"--port=8082", "--mode=ident", "--ident=restart"});
  if (!srv.ok()) return 1;
  const std::vector<std::string> flags = {"--capture"};
  auto agent = std::make_unique<shunt::e2e::AgentProcess>(bed, bed.node(0), *policy, flags);
  if (!agent->Start().ok()) return 1;
  auto captured = [](shunt::e2e::AgentProcess& a) {
    auto m = a.Scrape();
    return m.ok() && shunt::e2e::SumSamples(*m, "shunt_capture_pods") == 1;
  };
  auto relayed = [](shunt::e2e::AgentProcess& a) {
    auto m = a.Scrape();
    return m.ok() ? shunt::e2e::SumSamples(*m, "shunt_relay_connections_total", {{"result", "accepted"}}) : 0;
  };
  while (!captured(*agent)) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto hold = std::chrono::milliseconds(static_cast<int>(absl::GetFlag(FLAGS_seconds) * 1000));
  int n = 0;
  auto run = [&](const std::string& name, const std::function<void()>& during) {
    Phase p{name, {}};
    const std::string stop = bed.work_dir() + absl::StrCat("/stop-", n++);
    std::thread t = Probe(bed, client, server, stop, &p);
    std::this_thread::sleep_for(hold / 3);
    during();
    std::this_thread::sleep_for(hold);
    shunt::WriteFileAtomic(stop, "").IgnoreError();
    t.join();
    return p;
  };

  Phase baseline = run("baseline", [] {});
  Phase graceful = run("handoff", [&] {
    auto next = std::make_unique<shunt::e2e::AgentProcess>(bed, bed.node(0), *policy, flags);
    if (!next->Start().ok()) std::fprintf(stderr, "successor: %s\n", next->Stderr().c_str());
    // Start() waits for the successor's own ports, bound after the handoff.
    agent->Stop().IgnoreError();
    if (getenv("SHUNT_BENCH_TRACE")) {
      std::fprintf(stderr, "--- old agent\n%s\n--- successor\n%s\n", agent->Stderr().c_str(),
                   next->Stderr().c_str());
    }
    agent = std::move(next);
  });
  double killed_at = 0, ready_after = 0, captured_after = 0, relayed_after = 0;
  Phase crash = run("sigkill", [&] {
    killed_at = Monotonic();
    agent->Kill();
    agent = std::make_unique<shunt::e2e::AgentProcess>(bed, bed.node(0), *policy, flags);
    const double before = relayed(*agent);
    if (!agent->Start().ok()) std::fprintf(stderr, "restart: %s\n", agent->Stderr().c_str());
    ready_after = Monotonic() - killed_at;
    while (!captured(*agent) && Monotonic() - killed_at < 10) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    captured_after = Monotonic() - killed_at;
    while (relayed(*agent) <= before && Monotonic() - killed_at < 10) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    relayed_after = Monotonic() - killed_at;
  });
  // (4) The same crash under --supervise: the supervisor's copies of the listeners stay open, so
  // SYNs meet a listening socket while no agent runs and wait in its backlog.
  {
    auto sup = std::make_unique<shunt::e2e::AgentProcess>(
        bed, bed.node(0), *policy, std::vector<std::string>{"--capture", "--supervise"});
    if (!sup->Start().ok()) std::fprintf(stderr, "supervised: %s\n", sup->Stderr().c_str());
    agent->Stop().IgnoreError();
    agent = std::move(sup);
    while (!captured(*agent)) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  double skilled_at = 0, srelayed_after = 0;
  Phase supervised = run("sigkill (supervised)", [&] {
    const pid_t first = shunt::e2e::SupervisedAgentPid(agent->pid());
    skilled_at = Monotonic();
    if (first > 0) kill(first, SIGKILL);
    // The new agent's counters start at 0: relayed again once its own count moved.
    while (Monotonic() - skilled_at < 10) {
      const pid_t now = shunt::e2e::SupervisedAgentPid(agent->pid());
      if (now > 0 && now != first && relayed(*agent) >= 1) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    srelayed_after = Monotonic() - skilled_at;
  });
  const double base = MaxLatency(baseline);
  std::printf("new connections one after another, client pod on node 1 -> captured pod on node 0:\n");
  Report(baseline, base);
  Report(graceful, base);
  Report(crash, base);
  Report(supervised, base);
  int gap_direct = 0;
  for (const auto& a : crash.attempts) {
    if (a.start >= killed_at && a.start < killed_at + captured_after && a.ok) ++gap_direct;
  }
  std::printf("sigkill: the new agent ready (readyz) %.0f ms after the kill, the pod captured again "
              "after %.0f ms, a new connection relayed again after %.0f ms; %d connection(s) "
              "opened in between were served (without a listener the pod's table drops a new "
              "SYN, the client's TCP sends it again after 1 s: none reaches the pod unenforced)\n",
              ready_after * 1e3, captured_after * 1e3, relayed_after * 1e3, gap_direct);
  std::printf(
      "sigkill (supervised): a new connection relayed by the restarted agent %.0f ms after "
      "the kill (the listeners kept by the supervisor: a SYN in between waits in their "
      "backlog, not for its retransmission)\n",
      srelayed_after * 1e3);
  agent->Kill();
  shunt::e2e::UninstallAgent(bed, bed.node(0)).IgnoreError();
  return 0;
}
