// Helpers for end-to-end tests: HTTP GET from inside a node's network namespace (the agent's
// endpoints listen there), Prometheus text parsing, and starting an agent in the test bed.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "tests/testbed/testbed.h"

namespace shunt::e2e {

struct HttpResponse {
  int code = 0;
  std::string body;
};

// GET http://host:port/path from a thread that joined `netns` (only that thread moves).
absl::StatusOr<HttpResponse> HttpGetInNetns(const std::string& netns, const std::string& host,
                                            int port, const std::string& path);

// One sample of Prometheus text exposition.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
std::vector<Sample> ParsePrometheusText(const std::string& text);
// Sum of the samples named `name` whose labels include every pair of `match`.
double SumSamples(const std::vector<Sample>& samples, const std::string& name,
                  const std::map<std::string, std::string>& match = {});

// The fast path's socket events, fallbacks by reason and redirected messages, one line, for
// failure messages.
std::string FastpathCounterSummary(const std::vector<Sample>& samples);

inline constexpr int kMetricsPort = 15090;
inline constexpr int kAdminPort = 15021;

// A shunt-agent running in a node of the test bed.
class AgentProcess {
 public:
  AgentProcess(testbed::Testbed& bed, const testbed::Node& node, std::string policy_file,
               std::vector<std::string> extra_flags = {});
  // Starts the agent and waits (bounded) until /readyz answers 200, or, with `require_ready`
  // false, until the policy it has is applied (shunt_agent_synced 1: e.g. a saved policy while
  // the controller is down).
  absl::Status Start(std::chrono::milliseconds timeout = std::chrono::seconds(20),
                     bool require_ready = true);
  // Start in two steps: the process, then the wait.
  absl::Status Spawn();
  absl::Status WaitReady(std::chrono::milliseconds timeout = std::chrono::seconds(20),
                         bool require_ready = true);
  // SIGKILL, no cleanup: what a crash or an OOM kill does.
  void Kill();
  absl::Status Stop();  // SIGTERM
  absl::StatusOr<std::vector<Sample>> Scrape() const;
  absl::StatusOr<HttpResponse> Get(const std::string& path, int port = kAdminPort) const;
  std::string Stderr() const { return process_ ? process_->Stderr() : ""; }
  std::vector<std::string> Argv() const;
  pid_t pid() const { return process_ ? process_->pid() : -1; }

 private:
  testbed::Testbed& bed_;
  const testbed::Node& node_;
  std::string policy_file_;
  std::vector<std::string> extra_flags_;
  testbed::ProcessPtr process_;
};

// Runs `shunt-agent --uninstall` for the node (used by tests and by fixtures' teardown).
absl::StatusOr<testbed::Output> UninstallAgent(testbed::Testbed& bed, const testbed::Node& node);

// What is wrong with a /metrics page, for a Prometheus server: what `promtool check metrics` says
// (Debian's, unpacked by scripts/setup.sh) and every series that is there more than once
// (promtool 2.42 does not look for that). Empty: nothing.
std::string MetricsProblems(const std::string& text);

// A real Prometheus server (Debian's `prometheus`, unpacked by scripts/setup.sh) in `node`'s
// network namespace, on 127.0.0.1:`port` there, scraping `targets` ("127.0.0.1:15090": host:port
// in that namespace) every second; its data in the test bed's work dir. Stopped at destruction
// (and by the test bed's teardown if the test ends first).
class PrometheusServer {
 public:
  static absl::StatusOr<std::unique_ptr<PrometheusServer>> Start(
      testbed::Testbed& bed, const testbed::Node& node, const std::vector<std::string>& targets,
      int port = 19090);
  ~PrometheusServer();
  // An instant query's result (the API's data.result: a vector of {metric, value}), or the
  // error the API returned.
  absl::StatusOr<nlohmann::json> Query(const std::string& promql) const;
  // Until every target's latest scrape succeeded (up == 1) and was taken after this call.
  absl::Status WaitForFreshScrape(std::chrono::milliseconds timeout) const;
  std::string Stderr() const;

 private:
  PrometheusServer(const testbed::Node& node, int port) : node_(node), port_(port) {}
  const testbed::Node& node_;
  const int port_;
  testbed::ProcessPtr process_;
};
// Percent-encodes `s` for a URL's query.
std::string UrlEncode(const std::string& s);

// Waits (10 s at most) for a program to create `path`, its sign that it is ready.
bool WaitForFile(const std::string& path);

// Whether `agent` holds a receiver's sockmap queue under a quarter of its receive buffer (its
// shunt_sockmap_queue_bound_by_receive_buffer gauge: kernels before 6.18, whose TCP drops
// in-window segments once a receiver's memory is full, docs/fastpath.md). A stream that outruns
// its reader there takes the stack after a few tens of KiB and stays on it while the pipe is full.
bool FastpathQueueBoundByReceiveBuffer(const AgentProcess& agent);
// The agent process a `--supervise`d agent's supervisor runs (its child), -1 while none runs.
pid_t SupervisedAgentPid(pid_t supervisor);
// Bytes of the sockets `match` selects (source_pod, destination_pod...) that the fast path's
// program moved: spliced, or, where the queue is bound by the receive buffer, held to the stack by
// that bound (fallback reasons peer_backlog, then stack_bytes_unread until the reader caught up:
// on 6.1 a stream ahead of its reader is spliced in part, from 0 to 94% of it measured). A test
// that sends a stream between meshed pods expects all of it here, on every kernel.
double SplicedOrBound(const AgentProcess& agent, const std::vector<Sample>& samples,
                      const std::map<std::string, std::string>& match);
// Of `bytes` a test sends in a stream faster than its reader, what may cross the veths: `unbound`
// where the queue is not bound by the receive buffer, else also what was not `spliced` (with its
// headers).
uint64_t MayTakeTheStack(const AgentProcess& agent, uint64_t bytes, double spliced,
                         uint64_t unbound);

// The shunt-agent this build made, or $SHUNT_AGENT_BINARY where set (benchmarks of another build).
std::string AgentBinary();
std::string TestpeerBinary();

// Starts `shunt-testpeer server <args>` in `pod` and waits (bounded) until it listens. `prefix` is
// prepended to the command line (e.g. {"taskset", "-c", "1"}).
absl::StatusOr<testbed::ProcessPtr> StartTestpeerServer(testbed::Testbed& bed,
                                                        const testbed::Pod& pod,
                                                        std::vector<std::string> args,
                                                        std::vector<std::string> prefix = {});
// Runs a `shunt-testpeer <args>` client in `pod` to completion and parses its JSON line. A non-zero
// exit is an error whose message carries the tool's output.
absl::StatusOr<nlohmann::json> RunTestpeer(testbed::Testbed& bed, const testbed::Pod& pod,
                                           std::vector<std::string> args,
                                           std::chrono::seconds timeout = std::chrono::seconds(120),
                                           std::vector<std::string> prefix = {});

}  // namespace shunt::e2e
