// shunt-agent: the node agent of the shunt mesh. See agent/agent.h and docs/agent.md.
#include <cstdio>
#include <algorithm>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "agent/agent.h"
#include "common/log.h"

ABSL_FLAG(std::string, node_name, "", "Name of this node (Kubernetes node name). Required.");
ABSL_FLAG(std::string, cgroup_root, "kubepods.slice",
          "cgroup v2 directory whose subtree holds this node's pods, relative to the cgroup2 "
          "mount (found in /proc/self/mountinfo) or absolute.");
ABSL_FLAG(std::string, bpffs, "/sys/fs/bpf", "bpffs mount point (mounted if absent).");
ABSL_FLAG(std::string, metrics_addr, "0.0.0.0:15090", "Prometheus /metrics listen address.");
ABSL_FLAG(std::string, admin_addr, "0.0.0.0:15021", "/healthz and /readyz listen address.");
ABSL_FLAG(std::string, policy_file, "",
          "Policy file (Workload resources, JSON or YAML; see docs/policy-file.md), re-read when "
          "it changes. Standalone mode.");
ABSL_FLAG(int, policy_poll_ms, 500, "How often the policy file is checked for changes.");
ABSL_FLAG(int, resync_ms, 1000, "How often pod cgroups are rescanned and maps reconciled.");
ABSL_FLAG(uint32_t, sockhash_size, 65536, "Sockets the sockhash can hold; beyond: normal path.");
ABSL_FLAG(uint32_t, pods_map_size, 4096, "Local pods the pods map can hold.");
ABSL_FLAG(uint32_t, endpoints_map_size, 8192, "Local pod IPs the endpoints map can hold.");
ABSL_FLAG(uint32_t, stats_map_size, 16384, "Counter entries (workload pairs x reasons).");
ABSL_FLAG(uint32_t, max_metric_series, 10000, "Cap on workload-pair series; beyond: \"other\".");
ABSL_FLAG(bool, uninstall, false,
          "Remove every program, link, pin and map this node's agent created, then exit.");
ABSL_FLAG(bool, version, false, "Print the version and exit.");
ABSL_FLAG(bool, verbose, false, "Debug logging.");

namespace {

// Flags are spelled with dashes (--node-name) on the command line; Abseil names them with
// underscores. Rewrite "--a-b[=v]" to "--a_b[=v]" before parsing (values are left alone).
std::vector<std::string> DashesToUnderscores(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& a = args[i];
    if (a == "--") break;
    if (a.size() < 3 || a[0] != '-' || a[1] != '-') continue;
    const size_t end = std::min(a.find('='), a.size());
    for (size_t j = 2; j < end; ++j) {
      if (a[j] == '-') a[j] = '_';
    }
  }
  return args;
}

}  // namespace

int main(int argc_in, char** argv_in) {
  std::vector<std::string> args = DashesToUnderscores(argc_in, argv_in);
  std::vector<char*> ptrs;
  for (auto& a : args) ptrs.push_back(a.data());
  int argc = static_cast<int>(ptrs.size());
  char** argv = ptrs.data();
  absl::SetProgramUsageMessage(
      "shunt node agent.\n  shunt-agent --node-name=N [--cgroup-root=kubepods.slice] "
      "[--policy-file=F]\n  shunt-agent --uninstall --node-name=N");
  absl::ParseCommandLine(argc, argv);
  shunt::log::SetProgramName("shunt-agent");
  if (absl::GetFlag(FLAGS_version)) {
    std::printf("shunt-agent %s\n", SHUNT_VERSION);
    return 0;
  }
  if (absl::GetFlag(FLAGS_verbose)) shunt::log::SetMinLevel(shunt::log::Level::kDebug);

  shunt::agent::AgentConfig config;
  config.node_name = absl::GetFlag(FLAGS_node_name);
  config.cgroup_root = absl::GetFlag(FLAGS_cgroup_root);
  config.bpffs = absl::GetFlag(FLAGS_bpffs);
  config.metrics_addr = absl::GetFlag(FLAGS_metrics_addr);
  config.admin_addr = absl::GetFlag(FLAGS_admin_addr);
  config.policy_file = absl::GetFlag(FLAGS_policy_file);
  config.policy_poll = absl::Milliseconds(absl::GetFlag(FLAGS_policy_poll_ms));
  config.resync = absl::Milliseconds(absl::GetFlag(FLAGS_resync_ms));
  config.sockhash_size = absl::GetFlag(FLAGS_sockhash_size);
  config.pods_size = absl::GetFlag(FLAGS_pods_map_size);
  config.endpoints_size = absl::GetFlag(FLAGS_endpoints_map_size);
  config.stats_size = absl::GetFlag(FLAGS_stats_map_size);
  config.max_metric_series = absl::GetFlag(FLAGS_max_metric_series);
  if (config.node_name.empty() || config.node_name.find('/') != std::string::npos ||
      config.node_name == "." || config.node_name == "..") {
    SHUNT_LOG(ERROR) << "--node-name is required (a node name, without '/')";
    return 2;
  }
  if (absl::GetFlag(FLAGS_uninstall)) return shunt::agent::UninstallAgent(config);
  return shunt::agent::RunAgent(config);
}
