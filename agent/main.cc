// shunt-agent: the node agent of the shunt mesh. See agent/agent.h and docs/agent.md.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "agent/agent.h"
#include "agent/supervisor.h"
#include "common/flags.h"
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
ABSL_FLAG(std::string, controller, "",
          "shunt-controller's policy stream, host:port (cluster mode; excludes --policy-file).");
ABSL_FLAG(std::string, controller_ca, "", "CA (PEM) of the controller's certificate.");
ABSL_FLAG(std::string, controller_cert, "", "Client certificate (PEM) for mutual TLS.");
ABSL_FLAG(std::string, controller_key, "", "Client private key (PEM) for mutual TLS.");
ABSL_FLAG(bool, controller_plaintext, false, "Talk to the controller without TLS (tests, demos).");
ABSL_FLAG(int, controller_max_backoff_ms, 30000, "Longest wait between reconnects.");
ABSL_FLAG(int, controller_keepalive_ms, 10000,
          "Keepalive ping interval on the controller stream; unanswered within as long again, the "
          "stream is given up (/readyz 503) and the agent reconnects. 0: none.");
ABSL_FLAG(std::string, state_dir, "/var/lib/shunt",
          "Where the last good policy from the controller is kept (per node), so that a restart "
          "while the controller is down still enforces it.");
ABSL_FLAG(int, policy_poll_ms, 500, "How often the policy file is checked for changes.");
ABSL_FLAG(int, resync_ms, 1000, "How often pod cgroups are rescanned and maps reconciled.");
ABSL_FLAG(uint32_t, sockhash_size, 65536, "Sockets the sockhash can hold; beyond: normal path.");
ABSL_FLAG(uint32_t, pods_map_size, 4096, "Local pods the pods map can hold.");
ABSL_FLAG(uint32_t, listeners_map_size, 16384,
          "Listening sockets of meshed pods remembered (how their accepted sockets read); least "
          "recently used forgotten first.");
ABSL_FLAG(uint32_t, fastpath_max_queued_bytes, 0,
          "Bytes that may wait unread in a spliced socket that is reading before its peer's "
          "sends take the stack (TCP's flow control); 0: 16 x the node's tcp_rmem + tcp_wmem "
          "maxima. A socket that has not read lately may hold what TCP buffers at most for one "
          "connection (those maxima), and none grows while TCP's memory is under pressure.");
ABSL_FLAG(bool, fastpath_protect, true,
          "Splice only sockets whose reads the kernel's sockmap path serves exactly as TCP "
          "(docs/fastpath.md). false: splice every meshed pair whatever its programs do, as "
          "before; for benchmarks only, it breaks blocking, splice(2), SO_RCVLOWAT and "
          "MSG_WAITALL readers.");
ABSL_FLAG(bool, connection_metrics, true,
          "Measure every TCP connection of a meshed pod in the kernel (docs/metrics.md, "
          "shunt_connection*): an event at its start and end, and a per-socket byte count of "
          "what the fast path splices. false: none of it (its cost is in README).");
ABSL_FLAG(bool, capture, false,
          "Capture inbound TCP connections of meshed pods inside their network namespaces "
          "(TPROXY) into the agent's relay, which connects to the pod as the client "
          "(docs/capture.md), which enforces access policy where connections arrive. Off by "
          "default until the proxy meets its performance targets (README).");
ABSL_FLAG(uint32_t, capture_port, 15008,
          "Port of the agent's transparent listener inside each captured pod's namespace.");
ABSL_FLAG(uint32_t, capture_keepalive_s, 60,
          "TCP keepalive of both sockets of every relayed connection: idle seconds before the "
          "first probe (then 6 probes 10 s apart); a peer gone without a FIN or reset is found and "
          "its connection reset. 0: off.");
ABSL_FLAG(uint32_t, capture_user_timeout_ms, 0,
          "TCP_USER_TIMEOUT of both sockets of every relayed connection: bytes unacknowledged for "
          "this long end it (instead of ~15 minutes of retransmissions). Since Linux 5.11 it also "
          "ends a connection whose reader keeps a zero window that long (a paused consumer): "
          "hence off by default. 0: the kernel's.");
ABSL_FLAG(uint32_t, proxy_loops, 0,
          "Event loops (threads) of the relay; each serves every capture listener and keeps the "
          "connections it accepted. 0: one per CPU the agent may run on (its affinity mask).");
ABSL_FLAG(uint32_t, capture_max_connections_per_pod, 16384,
          "Relayed connections one captured pod may have at once; beyond it its new ones are "
          "reset, counted (one pod flooded does not take the others' share).");
ABSL_FLAG(uint64_t, capture_max_buffered_per_pod, 64 << 20,
          "Bytes the relay holds for one captured pod's connections (read, not yet written); "
          "beyond it they read no more until the pod's readers catch up (backpressure).");
ABSL_FLAG(std::string, handoff_socket, "",
          "Unix socket where a running agent hands its capture listeners to the agent replacing "
          "it (docs/capture.md, \"Restarts\"); empty: /run/shunt/<node-name>/handoff.sock; "
          "\"off\": no handoff.");
ABSL_FLAG(int, handoff_wait_ms, 5000,
          "After SIGTERM, when no successor has asked for the listeners yet, how long this agent "
          "goes on serving while one may be starting (a rolling update's new agent) before it "
          "releases the pods' capture; 0: no wait.");
ABSL_FLAG(int, drain_timeout_ms, 25000,
          "After SIGTERM, how long relayed connections may take to end before they are reset.");
ABSL_FLAG(uint32_t, endpoints_map_size, 8192, "Local pod IPs the endpoints map can hold.");
ABSL_FLAG(uint32_t, stats_map_size, 16384, "Counter entries (workload pairs x reasons).");
ABSL_FLAG(uint32_t, lb_services_map_size, 4096,
          "Service VIP:port entries for connect-time load balancing; beyond: normal path.");
ABSL_FLAG(uint32_t, lb_slots_map_size, 65536,
          "Backend slots over all services; beyond: normal path.");
ABSL_FLAG(
    uint32_t, lb_max_slots, 1024,
    "Slot table size cap per VIP:port (weights are reduced by their gcd, then scaled to it).");
ABSL_FLAG(uint32_t, policy_sources_map_size, 4096,
          "Local pods with an access-policy source mask; beyond: not subject to policy.");
ABSL_FLAG(uint32_t, policy_destinations_map_size, 16384,
          "Pod IPs targeted by access policies; beyond: not protected.");
ABSL_FLAG(uint32_t, max_metric_series, 10000, "Cap on workload-pair series; beyond: \"other\".");
ABSL_FLAG(bool, istio_metrics, false,
          "Also export the requests the relay reads under Istio's standard metric names and "
          "units (istio_requests_total, istio_request_duration_milliseconds, ...), for Kiali and "
          "Istio's dashboards (docs/metrics.md).");
ABSL_FLAG(bool, uninstall, false,
          "Remove every program, link, pin and map this node's agent created, then exit.");
ABSL_FLAG(bool, supervise, false,
          "Run the agent as the child of a small supervising process that starts it again at "
          "once when it crashes and keeps its capture listeners open meanwhile (docs/agent.md).");
ABSL_FLAG(int, keeper_fd, -1, "Internal: the supervising process's socket (--supervise).");
ABSL_FLAG(bool, version, false, "Print the version and exit.");
ABSL_FLAG(bool, verbose, false, "Debug logging.");

int main(int argc_in, char** argv_in) {
  return shunt::WithNormalizedFlags(argc_in, argv_in, [](int argc, char** argv) {
    absl::SetProgramUsageMessage(
        "shunt node agent.\n  shunt-agent --node-name=N [--cgroup-root=kubepods.slice] "
        "[--policy-file=F]\n  shunt-agent --uninstall --node-name=N [--cgroup-root=R]");
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
    config.controller = absl::GetFlag(FLAGS_controller);
    config.controller_ca = absl::GetFlag(FLAGS_controller_ca);
    config.controller_cert = absl::GetFlag(FLAGS_controller_cert);
    config.controller_key = absl::GetFlag(FLAGS_controller_key);
    config.controller_plaintext = absl::GetFlag(FLAGS_controller_plaintext);
    config.controller_max_backoff =
        absl::Milliseconds(absl::GetFlag(FLAGS_controller_max_backoff_ms));
    config.controller_keepalive =
        absl::Milliseconds(std::max(0, absl::GetFlag(FLAGS_controller_keepalive_ms)));
    config.state_dir = absl::GetFlag(FLAGS_state_dir);
    config.resync = absl::Milliseconds(absl::GetFlag(FLAGS_resync_ms));
    config.sockhash_size = absl::GetFlag(FLAGS_sockhash_size);
    config.pods_size = absl::GetFlag(FLAGS_pods_map_size);
    config.endpoints_size = absl::GetFlag(FLAGS_endpoints_map_size);
    config.stats_size = absl::GetFlag(FLAGS_stats_map_size);
    config.listeners_size = absl::GetFlag(FLAGS_listeners_map_size);
    config.fastpath_protect = absl::GetFlag(FLAGS_fastpath_protect);
    config.connection_metrics = absl::GetFlag(FLAGS_connection_metrics);
    config.capture = absl::GetFlag(FLAGS_capture);
    if (absl::GetFlag(FLAGS_capture_port) == 0 || absl::GetFlag(FLAGS_capture_port) > 65535) {
      SHUNT_LOG(ERROR) << "--capture-port must be 1-65535";
      return 2;
    }
    config.capture_port = static_cast<uint16_t>(absl::GetFlag(FLAGS_capture_port));
    config.capture_max_connections_per_pod = absl::GetFlag(FLAGS_capture_max_connections_per_pod);
    config.proxy_loops = absl::GetFlag(FLAGS_proxy_loops);
    config.capture_keepalive_s = absl::GetFlag(FLAGS_capture_keepalive_s);
    config.capture_user_timeout_ms = absl::GetFlag(FLAGS_capture_user_timeout_ms);
    config.capture_max_buffered_per_pod = absl::GetFlag(FLAGS_capture_max_buffered_per_pod);
    config.handoff_socket = absl::GetFlag(FLAGS_handoff_socket);
    config.handoff_wait = absl::Milliseconds(std::max(0, absl::GetFlag(FLAGS_handoff_wait_ms)));
    config.drain_timeout = absl::Milliseconds(std::max(0, absl::GetFlag(FLAGS_drain_timeout_ms)));
    config.fastpath_max_queued = absl::GetFlag(FLAGS_fastpath_max_queued_bytes);
    config.max_metric_series = absl::GetFlag(FLAGS_max_metric_series);
    config.istio_metrics = absl::GetFlag(FLAGS_istio_metrics);
    config.lb_services_size = absl::GetFlag(FLAGS_lb_services_map_size);
    config.lb_slots_size = absl::GetFlag(FLAGS_lb_slots_map_size);
    config.lb_max_slots = absl::GetFlag(FLAGS_lb_max_slots);
    config.policy_sources_size = absl::GetFlag(FLAGS_policy_sources_map_size);
    config.policy_dests_size = absl::GetFlag(FLAGS_policy_destinations_map_size);
    if (config.node_name.empty() || config.node_name.find('/') != std::string::npos ||
        config.node_name == "." || config.node_name == "..") {
      SHUNT_LOG(ERROR) << "--node-name is required (a node name, without '/')";
      return 2;
    }
    if (!config.controller.empty() && !config.policy_file.empty()) {
      SHUNT_LOG(ERROR) << "--controller and --policy-file exclude each other";
      return 2;
    }
    if (config.handoff_socket.empty()) {
      config.handoff_socket = "/run/shunt/" + config.node_name + "/handoff.sock";
    } else if (config.handoff_socket == "off") {
      config.handoff_socket.clear();
    }
    if (absl::GetFlag(FLAGS_uninstall)) return shunt::agent::UninstallAgent(config);
    if (absl::GetFlag(FLAGS_supervise) && absl::GetFlag(FLAGS_keeper_fd) < 0) {
      // The same command line for the child, less --supervise (and any --keeper-fd).
      std::vector<std::string> child;
      for (int i = 0; i < argc; ++i) {
        std::string_view a(argv[i]);
        std::string_view name = a;
        while (!name.empty() && name.front() == '-') name.remove_prefix(1);
        name = name.substr(0, name.find('='));
        if (i > 0 && (name == "supervise" || name == "nosupervise" || name == "keeper_fd" ||
                      name == "keeper-fd")) {
          continue;
        }
        child.emplace_back(a);
      }
      // Also when --supervise came from a flag file or the environment: one supervisor only.
      child.emplace_back("--nosupervise");
      return shunt::agent::Supervise(std::move(child));
    }
    config.keeper_fd = absl::GetFlag(FLAGS_keeper_fd);
    return shunt::agent::RunAgent(config);
  });
}
