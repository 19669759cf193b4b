// shunt-agent's top level: wires the kernel fast path, the policy sources, the reconciler and the
// HTTP endpoints together, and runs until SIGINT/SIGTERM. Flags are read in main.cc only.
#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace shunt::agent {

struct AgentConfig {
  std::string node_name;
  std::string cgroup_root;  // --cgroup-root as given (relative to the cgroup2 mount, or absolute)
  std::string bpffs = "/sys/fs/bpf";
  std::string metrics_addr = "0.0.0.0:15090";
  std::string admin_addr = "0.0.0.0:15021";
  std::string policy_file;
  // The controller's policy stream (cluster mode); exclusive with policy_file.
  std::string controller;       // host:port
  std::string controller_ca;    // CA of the controller's certificate (default: system roots)
  std::string controller_cert;  // client certificate for mutual TLS
  std::string controller_key;
  bool controller_plaintext = false;
  absl::Duration controller_max_backoff = absl::Seconds(30);
  absl::Duration controller_keepalive = absl::Seconds(10);
  std::string state_dir = "/var/lib/shunt";  // last good policy, per node, survives restarts
  absl::Duration policy_poll = absl::Milliseconds(500);
  absl::Duration resync = absl::Seconds(1);
  uint32_t sockhash_size = 65536;
  uint32_t pods_size = 4096;
  uint32_t endpoints_size = 8192;
  uint32_t stats_size = 16384;
  uint32_t listeners_size = 16384;
  bool fastpath_protect = true;
  bool connection_metrics = true;  // the kernel's L4 metrics (docs/metrics.md)
  // In-pod capture of inbound connections into the agent's relay (docs/capture.md).
  bool capture = false;
  uint16_t capture_port = 15008;
  uint32_t capture_max_connections_per_pod = 16384;
  uint32_t capture_keepalive_s = 60;        // relayed sockets' TCP keepalive idle; 0: off
  uint32_t capture_user_timeout_ms = 0;  // their TCP_USER_TIMEOUT; 0: the kernel's
  uint32_t proxy_loops = 0;  // the relay's event loops (threads); 0: one per CPU it may use
  uint64_t capture_max_buffered_per_pod = 64 << 20;
  // Where this agent hands its capture listeners to its successor (empty: no handoff).
  std::string handoff_socket;
  // The socket pair end of the supervising process (--supervise, supervisor.h); -1: none.
  int keeper_fd = -1;
  absl::Duration drain_timeout = absl::Seconds(25);  // after SIGTERM, for relayed connections
  // After SIGTERM with no successor yet, how long to go on serving while one may be starting.
  absl::Duration handoff_wait = absl::Seconds(5);
  uint32_t fastpath_max_queued = 0;  // 0: from the node's TCP sysctls
  // Connect-time load balancing and access policy (socklb).
  uint32_t lb_services_size = 4096;
  uint32_t lb_slots_size = 65536;
  uint32_t lb_max_slots = 1024;  // per VIP:port
  uint32_t policy_sources_size = 4096;
  uint32_t policy_dests_size = 16384;
  size_t max_metric_series = 10000;
  // Also export the relay's request metrics under Istio's names and units (docs/metrics.md).
  bool istio_metrics = false;
};

// <bpffs>/shunt/<node-name>: where this agent pins its maps, links and programs.
std::string PinDir(const AgentConfig& config);

// Runs the agent; returns the process exit code (0 after a clean SIGTERM, 2 for a missing kernel
// feature or bad configuration, 1 for other start-up failures).
int RunAgent(const AgentConfig& config);
// Removes everything the agent installed in the kernel for this node. Exit code.
int UninstallAgent(const AgentConfig& config);

}  // namespace shunt::agent
