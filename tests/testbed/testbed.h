// The simulated cluster: N nodes x M pods on this machine, for tests, the demo and the benchmarks.
//
// Each node is a network namespace with a bridge `br0` (the pods' gateway) and an uplink veth to a
// fabric namespace that links all nodes (one bridge, no route out of the machine). Each pod is a
// network namespace with `eth0` (a veth whose peer is on the node's bridge), IPv4 and IPv6 addresses
// and default routes through its node. Each node has a cgroup v2 subtree laid out as kubelet lays it
// out (systemd or cgroupfs driver), and a pod's processes run in a container cgroup of its pod.
//
// Addresses: IPv4 pods 198.18.<node>.<pod+2>/24 (RFC 2544 benchmarking range), node gateway
// 198.18.<node>.1; fabric 198.19.0.<node+1>/24; IPv6 pods fd5a:<node+1>::<pod+2>/64. Nothing
// outside the test bed is ever routed: no namespace has a default route that leaves it.
//
// Names are unique per run (prefix + pid + random). Teardown runs in the destructor, on SIGINT /
// SIGTERM (InstallSignalTeardown), and stale runs whose creator died are reaped by Create().
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/cgroup.h"  // FindCgroup2Mount

namespace shunt::testbed {

enum class CgroupDriver { kSystemd, kCgroupfs };

struct Options {
  int nodes = 1;
  int pods_per_node = 2;
  // Driver of node i is drivers[i % drivers.size()].
  std::vector<CgroupDriver> drivers = {CgroupDriver::kSystemd, CgroupDriver::kCgroupfs};
  std::string prefix = "shunt";  // names: <prefix>-<pid>-<rand>-...
};

struct Pod {
  int node_index = 0;
  int index = 0;
  std::string uid;        // random RFC 4122 UUID, as kubelet's pod UID
  std::string name;       // "pod-<node>-<index>"
  std::string k8s_namespace = "default";
  std::string netns;      // name under /run/netns
  std::string ipv4;       // "198.18.N.P"
  std::string ipv6;       // "fd5a:N+1::P"
  std::string pod_cgroup;        // absolute path of the pod cgroup dir
  std::string container_cgroup;  // absolute path of the container cgroup (processes run here)
  std::string host_veth;  // node-side veth name
};

struct Node {
  int index = 0;
  std::string name;        // "<prefix>-<pid>-<rand>-n<i>", also used as --node-name
  std::string netns;       // name under /run/netns
  std::string ipv4;        // fabric address 198.19.0.<i+1>
  CgroupDriver driver = CgroupDriver::kSystemd;
  std::string cgroup_root;  // absolute path: the node's kubepods root (pass as --cgroup-root)
  std::vector<Pod> pods;
};

// The cgroup dirs kubelet makes for a pod: the pod's, and one container's below it.
struct PodCgroupPaths {
  std::string pod;
  std::string container;
};

// A process started in a pod or node. Its stdout and stderr are captured to files.
class Process {
 public:
  Process(pid_t pid, std::string stdout_path, std::string stderr_path);
  ~Process();  // kills (SIGKILL) and reaps if still running
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  // Waits for exit; returns the exit status (as from waitpid: use WIFEXITED...) or
  // DeadlineExceeded (the process is left running).
  absl::StatusOr<int> Wait(std::chrono::milliseconds timeout);
  // Sends `sig` (default SIGTERM) and waits up to `timeout`; SIGKILL after that.
  absl::StatusOr<int> Stop(int sig, std::chrono::milliseconds timeout);
  bool Running();
  std::string Stdout() const;  // whole captured stdout so far
  std::string Stderr() const;

 private:
  pid_t pid_;
  std::string stdout_path_, stderr_path_;
  std::optional<int> status_;
};
using ProcessPtr = std::unique_ptr<Process>;

// Result of a finished command.
struct Output {
  int exit_code = -1;  // -signal if killed by a signal
  std::string out;
  std::string err;
};

class Testbed {
 public:
  static absl::StatusOr<std::unique_ptr<Testbed>> Create(const Options& options);
  ~Testbed();  // Teardown()
  Testbed(const Testbed&) = delete;
  Testbed& operator=(const Testbed&) = delete;

  // Removes every namespace, cgroup, and file this run created. Idempotent; never fails loudly
  // (errors are logged). Kills processes still running in the pods' cgroups first.
  void Teardown();

  const std::vector<Node>& nodes() const { return nodes_; }
  const Node& node(int i) const { return nodes_.at(i); }
  const Pod& pod(int node, int pod) const { return nodes_.at(node).pods.at(pod); }
  const std::string& run_id() const { return run_id_; }
  const std::string& work_dir() const { return work_dir_; }  // scratch dir of this run

  // Starts argv[0] (resolved through PATH) in the pod: the child joins the pod's container cgroup
  // *before* it enters the pod's network namespace (setns, no remount of /sys), then execs.
  absl::StatusOr<ProcessPtr> Spawn(const Pod& pod, const std::vector<std::string>& argv);
  // Starts argv in `netns_of`'s network namespace but in `cgroup` (a pod cgroup the caller made
  // under a node's root, e.g. with PodCgroupsFor: a pod kubelet starts while the test runs).
  absl::StatusOr<ProcessPtr> SpawnInCgroup(const Pod& netns_of, const std::string& cgroup,
                                           const std::vector<std::string>& argv);
  // Where kubelet (with the node's driver) puts the cgroups of a pod `uid`; nothing is created.
  // Cgroups made there are removed with the rest at teardown.
  static PodCgroupPaths PodCgroupsFor(const Node& node, const std::string& uid);
  static std::string NewPodUid();  // a random RFC 4122 UUID
  // Starts argv in the node's network namespace, in the caller's cgroup (e.g. the agent).
  absl::StatusOr<ProcessPtr> SpawnOnNode(const Node& node, const std::vector<std::string>& argv);
  // Spawn + Wait; kills the process and returns DeadlineExceeded after `timeout`.
  absl::StatusOr<Output> Run(const Pod& pod, const std::vector<std::string>& argv,
                             std::chrono::milliseconds timeout);
  absl::StatusOr<Output> RunOnNode(const Node& node, const std::vector<std::string>& argv,
                                   std::chrono::milliseconds timeout);

  // Interface byte counters of the pod's eth0 (read through netlink in the pod's namespace).
  struct LinkStats {
    uint64_t rx_bytes = 0, tx_bytes = 0, rx_packets = 0, tx_packets = 0;
  };
  absl::StatusOr<LinkStats> PodLinkStats(const Pod& pod);

  // Writes the policy file (JSON, the --policy-file format) that marks `meshed` pods of `node`
  // (and of every other node, so that remote pods are known) as meshed. Returns its path.
  absl::StatusOr<std::string> WritePolicyFile(const std::string& file_name,
                                              const std::map<std::string, bool>& meshed_by_pod_name);

  // Kills SIGINT/SIGTERM-interrupted runs cleanly: the handler tears down every live Testbed and
  // re-raises the signal.
  static void InstallSignalTeardown();
  // Removes namespaces, cgroups and bpffs pins left by runs whose creating process is dead.
  static void ReapStale(const std::string& prefix);

 private:
  Testbed() = default;
  absl::Status Build(const Options& options);
  // Teardown without touching the live-testbed registry (the signal handler holds it).
  void TeardownResources();
  static void OnSignal(int sig);
  // Forks argv into `netns`; when `cgroup` is non-empty the child joins it first.
  absl::StatusOr<ProcessPtr> SpawnIn(const std::string& netns, const std::string& cgroup,
                                     const std::vector<std::string>& argv, bool on_node);
  absl::StatusOr<Output> Finish(ProcessPtr process, std::chrono::milliseconds timeout);
  absl::Status IpBatch(const std::string& netns, const std::vector<std::string>& lines);

  std::string run_id_;
  std::string work_dir_;
  std::string cgroup_run_dir_;
  std::string fabric_netns_;
  std::vector<Node> nodes_;
  bool torn_down_ = false;
  std::atomic<bool> teardown_started_{false};
  std::atomic<int> seq_{0};  // names of output and batch files
  std::mutex node_procs_mu_;
  // SpawnOnNode processes as (pid, start time in ticks), killed at teardown; also listed in
  // <work_dir>/node-pids so that ReapStale can kill them after a crash.
  std::vector<std::pair<pid_t, uint64_t>> node_procs_;
};

}  // namespace shunt::testbed
