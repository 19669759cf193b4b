#include "agent/agent.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "agent/bpf/fastpath.h"
#include "agent/bpf/kernel_probe.h"
#include "agent/bpf/socklb.h"
#include "agent/capture/capture_reconciler.h"
#include "agent/metrics/cost_metrics.h"
#include "agent/metrics/l4_metrics.h"
#include "agent/metrics/families.h"
#include "agent/metrics/l4_reader.h"
#include "agent/metrics/request_metrics.h"
#include "agent/capture/handoff.h"
#include "agent/dataplane/enforcement.h"
#include "agent/dataplane/local_dataplane.h"
#include "agent/dataplane/service_policy.h"
#include "agent/metrics/fastpath_collector.h"
#include "agent/metrics/socklb_collector.h"
#include "agent/policy/controller_source.h"
#include "agent/policy/file_source.h"
#include "agent/policy/policy_store.h"
#include "agent/proxy/tcp_relay.h"
#include "agent/supervisor.h"
#include "common/admin_server.h"
#include "common/cgroup.h"
#include "common/files.h"
#include "common/log.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace shunt::agent {
namespace {

// Agent-level series: build info, policy state. Read at scrape time from their owners.
// The relay's request metrics (metrics/request_metrics.h), at scrape time.
class RequestCollector : public prometheus::Collectable {
 public:
  // The relay's three (null without the capture) and the kernel's L4 metrics.
  RequestCollector(std::shared_ptr<const metrics::RequestMetrics> requests,
                   std::shared_ptr<const metrics::ConnectionMetrics> connections,
                   std::shared_ptr<const metrics::CostMetrics> costs,
                   std::shared_ptr<const metrics::L4Metrics> l4)
      : requests_(std::move(requests)),
        connections_(std::move(connections)),
        costs_(std::move(costs)),
        l4_(std::move(l4)) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out;
    if (requests_) {
      out = requests_->Collect();
      for (auto& f : connections_->Collect()) out.push_back(std::move(f));
      for (auto& f : costs_->Collect()) out.push_back(std::move(f));
    }
    // Istio's TCP families come from both: the relay's destination view, the kernel's source one.
    for (auto& f : l4_->Collect()) out.push_back(std::move(f));
    return metrics::MergeFamilies(std::move(out));
  }

 private:
  std::shared_ptr<const metrics::RequestMetrics> requests_;
  std::shared_ptr<const metrics::ConnectionMetrics> connections_;
  std::shared_ptr<const metrics::CostMetrics> costs_;
  std::shared_ptr<const metrics::L4Metrics> l4_;
};

class AgentCollector : public prometheus::Collectable {
 public:
  AgentCollector(const AgentConfig& config, const PolicyStore& store, const Reconciler& reconciler,
                 const ControllerPolicySource* controller_source,
                 std::function<Enforcement()> enforcement)
      : config_(config),
        store_(store),
        reconciler_(reconciler),
        controller_source_(controller_source),
        enforcement_(std::move(enforcement)) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::ClientMetric;
    using prometheus::MetricFamily;
    using prometheus::MetricType;
    auto gauge = [](std::string name, std::string help, double v,
                    std::vector<ClientMetric::Label> labels = {}) {
      MetricFamily f{std::move(name), std::move(help), MetricType::Gauge, {}};
      ClientMetric m;
      m.label = std::move(labels);
      m.gauge.value = v;
      f.metric.push_back(std::move(m));
      return f;
    };
    auto snapshot = store_.Current();
    double local = 0, meshed = 0;
    if (snapshot) {
      for (const auto& w : snapshot->bundle.workloads()) {
        if (w.node() != config_.node_name) continue;
        ++local;
        if (w.meshed()) ++meshed;
      }
    }
    MetricFamily errors{"shunt_policy_errors_total",
                        "Policy updates rejected (malformed or invalid); the previous policy "
                        "stayed in force.",
                        MetricType::Counter,
                        {}};
    ClientMetric e;
    e.counter.value = static_cast<double>(store_.errors_total());
    errors.metric.push_back(e);
    const Enforcement enforcement = enforcement_();
    MetricFamily not_enforced{
        "shunt_agent_policy_not_enforced",
        "1 for each policy (namespace/name; \"node\": the node as a whole) of the version in "
        "force that this agent does not enforce as written (/readyz says why).",
        MetricType::Gauge,
        {}};
    {
      std::set<std::string> seen;
      for (const auto& part : enforcement.not_enforced) {
        const std::string policy = part.policy.empty() ? "node" : part.policy;
        if (!seen.insert(policy).second) continue;
        if (seen.size() > config_.max_metric_series) break;  // names from policy: bounded anyway
        ClientMetric m;
        m.label = {{"policy", policy}};
        m.gauge.value = 1;
        not_enforced.metric.push_back(std::move(m));
      }
    }
    std::vector<MetricFamily> relay_families;
    if (capture_ && relay_) {
      const RelayStats st = relay_->stats();
      relay_families.push_back(gauge("shunt_capture_pods",
                                     "Meshed pods of this node whose inbound connections are "
                                     "captured into the relay.",
                                     static_cast<double>(capture_->captured_pods())));
      relay_families.push_back(gauge("shunt_relay_active_connections",
                                     "Connections the relay carries now.",
                                     static_cast<double>(st.active)));
      relay_families.push_back(gauge("shunt_relay_buffered_bytes",
                                     "Bytes the relay holds now (read, not yet written).",
                                     static_cast<double>(st.buffered)));
      // One family, a series per value of `label`.
      auto by_label = [](std::string name, std::string help, MetricType type, std::string label,
                         const std::vector<std::pair<std::string, uint64_t>>& values) {
        MetricFamily f{std::move(name), std::move(help), type, {}};
        for (const auto& [value, v] : values) {
          ClientMetric m;
          if (!label.empty()) m.label = {{label, value}};
          (type == MetricType::Gauge ? m.gauge.value : m.counter.value) = static_cast<double>(v);
          f.metric.push_back(std::move(m));
        }
        return f;
      };
      relay_families.push_back(by_label(
          "shunt_relay_pipes",
          "Splice pipes of the relay: in_use (held by connections with bytes in flight), pooled "
          "(empty, kept for the next ones).",
          MetricType::Gauge, "state", {{"in_use", st.pipes_in_use}, {"pooled", st.pipes_pooled}}));
      relay_families.push_back(by_label(
          "shunt_relay_pipe_failures_total",
          "Times no splice pipe could be made (the descriptor limit): those bytes were copied "
          "through user space instead.",
          MetricType::Counter, "", {{"", st.pipe_failures}}));
      relay_families.push_back(by_label(
          "shunt_relay_buffer_budget_waits_total",
          "Times a connection stopped reading because its pod held --capture-max-buffered-per-pod "
          "bytes in the relay.",
          MetricType::Counter, "", {{"", st.buffer_budget_waits}}));
      relay_families.push_back(by_label("shunt_relay_connections_total",
                                        "Connections handed to the relay, by outcome.",
                                        MetricType::Counter, "result",
                                        {{"accepted", st.accepted},
                                         {"refused", st.refused},
                                         {"over_capacity", st.over_capacity},
                                         {"over_pod_budget", st.over_pod_budget},
                                         {"upstream_failed", st.upstream_failed},
                                         {"connect_timeout", st.connect_timeouts},
                                         {"half_close_timeout", st.half_close_timeouts},
                                         {"idle_timeout", st.idle_timeouts},
                                         {"reset", st.resets},
                                         {"policy_closed", st.policy_closed}}));
      std::vector<std::pair<std::string, uint64_t>> per_loop[2];
      for (size_t i = 0; i < st.accepted_by_loop.size(); ++i) {
        per_loop[0].emplace_back(std::to_string(i), st.accepted_by_loop[i]);
        per_loop[1].emplace_back(std::to_string(i), st.active_by_loop[i]);
      }
      relay_families.push_back(by_label(
          "shunt_relay_loop_connections_total",
          "Connections each of the relay's event loops (--proxy-loops) took and relayed (refused "
          "and failed ones not counted): how the kernel spread them.",
          MetricType::Counter, "loop", per_loop[0]));
      relay_families.push_back(by_label("shunt_relay_loop_active_connections",
                                        "Connections each event loop carries now.",
                                        MetricType::Gauge, "loop", per_loop[1]));
      relay_families.push_back(by_label("shunt_relay_bytes_total",
                                        "Bytes the relay moved, by direction.", MetricType::Counter,
                                        "direction",
                                        {{"to_upstream", st.bytes_to_upstream},
                                         {"to_downstream", st.bytes_to_downstream}}));
      relay_families.push_back(by_label(
          "shunt_relay_l7_total",
          "Connections to ports that need L7 (access policies with L7 rules) and their HTTP "
          "requests, by outcome.",
          MetricType::Counter, "result",
          {{"http1_connection", st.http1_connections},
           {"http2_connection", st.http2_connections},
           {"opaque_connection", st.opaque_l7},
           {"opaque_refused", st.opaque_refused},
           {"empty", st.empty_l7},
           {"not_http", st.not_http},
           {"tunnel", st.tunnels},
           {"request", st.http_requests},
           {"request_denied", st.http_denied},
           {"request_refused", st.http_refused},
           {"bad_response", st.http_bad_responses}}));
      relay_families.push_back(by_label(
          "shunt_relay_usage_drains_total",
          "Responses to priced requests read on after their client went (the upstream bills "
          "them; their usage comes at their end), by outcome: started, complete (charged as "
          "any), cut (its time or byte bound ran out), broken (the server ended or was reset "
          "first: its tokens are not charged).",
          MetricType::Counter, "result",
          {{"started", st.usage_drains},
           {"complete", st.usage_drains_complete},
           {"cut", st.usage_drains_cut},
           {"broken", st.usage_drains_broken}}));
      // By source (namespace, workload), destination pod and policy.
      auto by_policy = [](const char* name, const char* help,
                          const std::map<CaptureReconciler::DeniedKey, uint64_t>& counts) {
        MetricFamily f{name, help, MetricType::Counter, {}};
        for (const auto& [k, v] : counts) {
          ClientMetric m;
          m.label = {{"source_workload_namespace", std::get<0>(k)},
                     {"source_workload", std::get<1>(k)},
                     {"destination_pod", std::get<2>(k)},
                     {"policy", std::get<3>(k)}};
          m.counter.value = static_cast<double>(v);
          f.metric.push_back(std::move(m));
        }
        return f;
      };
      relay_families.push_back(by_policy("shunt_arrival_denied_connections_total",
                                         "Captured connections refused (reset) where they "
                                         "arrived, by access policy; the source by its IP "
                                         "(unknown: empty names).",
                                         capture_->denied()));
      relay_families.push_back(by_policy("shunt_policy_closed_connections_total",
                                         "Open relayed connections closed (reset both ways) "
                                         "because a policy change denied them; the source by "
                                         "its IP (unknown: empty names).",
                                         capture_->closed_by_policy()));
      relay_families.push_back(by_policy("shunt_policy_denied_requests_total",
                                         "HTTP requests answered 403 by an access policy's L7 "
                                         "rules where they arrived; the source by its IP "
                                         "(unknown: empty names).",
                                         capture_->denied_requests()));
    }
    std::vector<MetricFamily> out = {
        gauge("shunt_agent_info", "Build and node of this agent.", 1,
              {{"version", SHUNT_VERSION}, {"node", config_.node_name}}),
        gauge("shunt_policy_version", "Version of the policy in force (0: none yet).",
              snapshot ? static_cast<double>(snapshot->version) : 0),
        gauge("shunt_policy_local_workloads", "Pods of this node known to the policy.", local),
        gauge("shunt_policy_meshed_local_workloads", "Meshed pods of this node.", meshed),
        gauge("shunt_agent_synced",
              "1 when the policy in force is applied to the kernel and enforced as written "
              "(shunt_agent_policy_not_enforced lists what is not).",
              reconciler_.synced() && reconciler_.last_error().ok() &&
                      enforcement.not_enforced.empty()
                  ? 1
                  : 0),
        not_enforced,
        errors,
        gauge("shunt_agent_unknown_resources",
              "Resources from the controller of kinds this agent does not know (a newer "
              "controller): ignored.",
              controller_source_ ? static_cast<double>(controller_source_->unknown_resources())
                                 : 0),
        gauge("shunt_agent_policy_saved",
              "1 when the policy in force is saved in --state-dir: an agent restarted while the "
              "controller is unreachable enforces it.",
              controller_source_ && controller_source_->saved() ? 1 : 0),
    };
    for (auto& f : relay_families) out.push_back(std::move(f));
    return out;
  }

 private:
  const AgentConfig& config_;
  const PolicyStore& store_;
  const Reconciler& reconciler_;
  const ControllerPolicySource* controller_source_;  // null without --controller
  const std::function<Enforcement()> enforcement_;
  const CaptureReconciler* capture_ = nullptr;  // null without --capture
  const TcpRelay* relay_ = nullptr;

 public:
  void SetCapture(const CaptureReconciler* capture, const TcpRelay* relay) {
    capture_ = capture;
    relay_ = relay;
  }
};

// The source is made before the reconcilers (it reports the saved policy at Start), its ACKs
// wait for them: through this, which says "not applied yet" until they exist and after they go.
class LateEnforcement {
 public:
  using Fn = std::function<Enforcement(absl::Duration)>;
  void Set(Fn fn) {
    absl::MutexLock l(&mu_);  // waits for a call in progress: the reconcilers outlive it
    closed_ = fn_ != nullptr && fn == nullptr;
    fn_ = std::move(fn);
  }
  // A response that comes before the reconcilers exist waits for them (at start-up).
  shunt::v1::EnforcementReport Report(absl::Duration wait) {
    const absl::Time deadline = absl::Now() + wait;
    absl::MutexLock l(&mu_);
    auto set = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return fn_ != nullptr || closed_; };
    mu_.AwaitWithDeadline(absl::Condition(&set), deadline);
    if (!fn_) {
      Enforcement e;
      e.not_enforced.push_back({"", "the agent's reconcilers are not running", true});
      return ToReport(e);
    }
    return ToReport(fn_(std::max(deadline - absl::Now(), absl::ZeroDuration())));
  }

 private:
  absl::Mutex mu_;
  Fn fn_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;  // the reconcilers went
};

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ControllerCredentials(
    const AgentConfig& config) {
  if (config.controller_plaintext) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions opts;
  if (!config.controller_ca.empty()) {
    auto ca = ReadFileToString(config.controller_ca);
    if (!ca.ok()) return ca.status();
    opts.pem_root_certs = *ca;
  }
  if (!config.controller_cert.empty() || !config.controller_key.empty()) {
    auto cert = ReadFileToString(config.controller_cert);
    auto key = ReadFileToString(config.controller_key);
    if (!cert.ok() || !key.ok()) {
      return absl::InvalidArgumentError(
          "--controller-cert and --controller-key go together and must be readable");
    }
    opts.pem_cert_chain = *cert;
    opts.pem_private_key = *key;
  }
  return grpc::SslCredentials(opts);
}

}  // namespace

std::string PinDir(const AgentConfig& config) {
  return absl::StrCat(config.bpffs, "/shunt/", config.node_name);
}

int UninstallAgent(const AgentConfig& config) {
  // The pods' capture tables and routes first: no new connection is handed to a listener that
  // no agent serves any more (without one TPROXY finds no socket and lets it through anyway).
  absl::Status s;
  if (auto mount = FindCgroup2Mount(); mount.ok()) {
    if (auto root = ResolveCgroupRoot(*mount, config.cgroup_root); root.ok()) {
      CaptureOptions co;
      co.port = config.capture_port;
      s = CaptureReconciler::RemoveFromAllPods(*root, co);
    }
  }
  // socklb first: the fast path's uninstall removes the pin directory, which must be empty.
  if (absl::Status f = SockLb::Uninstall(PinDir(config)); s.ok()) s = f;
  if (absl::Status f = Fastpath::Uninstall(PinDir(config)); s.ok()) s = f;
  if (!s.ok()) {
    SHUNT_LOG(ERROR) << "uninstall incomplete: " << s.message();
    return 1;
  }
  SHUNT_LOG(INFO) << "uninstalled: removed the programs, links, pins and maps under "
                  << PinDir(config);
  return 0;
}

int RunAgent(const AgentConfig& config) {
  // Block the stop signals before any thread starts, so that only sigwait below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // A write (or a splice, in the relay) to a socket its peer reset is an EPIPE to handle, not a
  // signal that ends the agent.
  signal(SIGPIPE, SIG_IGN);

  // The agent this one replaces, if one runs, stops its policy work and its HTTP endpoints and
  // hands over its capture listeners before this one starts its own (docs/capture.md, "Restarts").
  std::vector<HandedListener> inherited;
  bool predecessor = false;  // an agent answered on the handoff socket
  if (!config.handoff_socket.empty()) {
    // Long enough for a predecessor that is stopping for good to release its pods first.
    auto taken = TakeOver(config.handoff_socket, absl::Seconds(30), &predecessor);
    if (!taken.ok()) {
      SHUNT_LOG(WARNING) << taken.status().message() << ": starting without its listeners";
    } else if (!taken->empty()) {
      SHUNT_LOG(INFO) << "took over " << taken->size() << " capture listener(s) from the agent "
                      << "this one replaces";
      inherited = std::move(*taken);
    }
  }

  // Under --supervise: the listeners of the agent before this one, if it crashed (a predecessor
  // that handed over had them, and the supervisor's copies are then stale).
  std::unique_ptr<KeeperClient> keeper;
  if (config.keeper_fd >= 0) {
    keeper = std::make_unique<KeeperClient>(config.keeper_fd);
    auto kept = keeper->Take();
    if (!kept.ok()) {
      SHUNT_LOG(WARNING) << kept.status().message() << ": starting without them";
    } else if (!predecessor && inherited.empty() && !kept->empty()) {
      SHUNT_LOG(INFO) << "took " << kept->size() << " capture listener(s) the supervisor kept "
                      << "across the restart";
      inherited = std::move(*kept);
    }
  }

  if (absl::Status s = CheckKernel(); !s.ok()) {
    SHUNT_LOG(ERROR) << s.message();
    return 2;
  }
  auto mount = FindCgroup2Mount();
  if (!mount.ok()) {
    SHUNT_LOG(ERROR) << mount.status().message();
    return 2;
  }
  auto cgroup_root = ResolveCgroupRoot(*mount, config.cgroup_root);
  if (!cgroup_root.ok()) {
    SHUNT_LOG(ERROR) << "--cgroup-root: " << cgroup_root.status().message();
    return 2;
  }
  if (absl::Status s = EnsureBpffs(config.bpffs); !s.ok()) {
    SHUNT_LOG(ERROR) << s.message();
    return 2;
  }

  FastpathConfig fc;
  fc.pin_dir = PinDir(config);
  fc.cgroup_root = *cgroup_root;
  fc.sockhash_size = config.sockhash_size;
  fc.pods_size = config.pods_size;
  fc.endpoints_size = config.endpoints_size;
  fc.stats_size = config.stats_size;
  fc.listeners_size = config.listeners_size;
  fc.protect = config.fastpath_protect;
  fc.connection_metrics = config.connection_metrics;
  fc.max_queued = config.fastpath_max_queued;
  auto fastpath = Fastpath::Install(fc);
  if (!fastpath.ok()) {
    SHUNT_LOG(ERROR) << "install fast path: " << fastpath.status().message();
    return 1;
  }
  SHUNT_LOG(INFO) << "fast path attached to " << fc.cgroup_root << ", pinned under " << fc.pin_dir;

  SockLbConfig lc;
  lc.pin_dir = fc.pin_dir;
  lc.cgroup_root = fc.cgroup_root;
  lc.pods_size = fc.pods_size;
  lc.services_size = config.lb_services_size;
  lc.slots_size = config.lb_slots_size;
  lc.policy_sources_size = config.policy_sources_size;
  lc.policy_dests_size = config.policy_dests_size;
  lc.stats_size = config.stats_size;
  auto socklb = SockLb::Install(lc);
  if (!socklb.ok()) {
    SHUNT_LOG(ERROR) << "install connect-time load balancing: " << socklb.status().message();
    return 1;
  }

  PolicyStore store;
  FastpathWriter writer(**fastpath);
  Reconciler reconciler({config.node_name, fc.cgroup_root, config.resync}, store, writer);

  LateEnforcement late_enforcement;  // outlives the source
  std::unique_ptr<PolicySource> source;
  ControllerPolicySource* controller_source = nullptr;
  if (!config.controller.empty()) {
    auto creds = ControllerCredentials(config);
    if (!creds.ok()) {
      SHUNT_LOG(ERROR) << creds.status().message();
      return 2;
    }
    ControllerSourceOptions o;
    o.address = config.controller;
    o.node = config.node_name;
    o.credentials = *creds;
    o.tls = !config.controller_plaintext;
    o.client_certificate = !config.controller_cert.empty();
    o.state_dir = config.state_dir.empty() ? "" : absl::StrCat(config.state_dir, "/", config.node_name);
    o.max_backoff = config.controller_max_backoff;
    o.keepalive = config.controller_keepalive;
    o.agent_version = SHUNT_VERSION;
    o.enforcement = [&late_enforcement](absl::Duration wait) {
      return late_enforcement.Report(wait);
    };
    auto cs = std::make_unique<ControllerPolicySource>(std::move(o));
    controller_source = cs.get();
    source = std::move(cs);
  } else if (!config.policy_file.empty()) {
    source = std::make_unique<FilePolicySource>(config.policy_file, config.policy_poll);
  }
  if (source) {
    // The store logs and counts a rejected update; the previous policy stays in force.
    absl::Status s = source->Start([&store, &source](absl::StatusOr<shunt::v1::PolicyBundle> u) {
      store.Apply(source->name(), std::move(u));
    });
    if (!s.ok()) {
      SHUNT_LOG(ERROR) << "policy source: " << s.message();
    }
  } else {
    SHUNT_LOG(WARNING) << "no policy source (--controller or --policy-file): no pod is meshed";
  }
  SockLbWriter lb_writer(**socklb);
  ServicePolicyReconciler::Options lb_options;
  lb_options.node_name = config.node_name;
  lb_options.cgroup_root = fc.cgroup_root;
  lb_options.resync = config.resync;
  lb_options.limits.services = config.lb_services_size;
  lb_options.limits.slots = config.lb_slots_size;
  lb_options.limits.policy_sources = config.policy_sources_size;
  lb_options.limits.pending_sources = fc.pods_size;
  lb_options.limits.policy_dests = config.policy_dests_size;
  lb_options.limits.max_slots_per_service = config.lb_max_slots;
  lb_options.limits.l7_proxy = config.capture;
  // Which of the node's pods the capture covers (made below): an L7 DENY at a pod it does not
  // cover is enforced on whole connections at connect(). Until the capture's first pass, the
  // pods whose listeners this agent inherits count as covered (a restart takes over its
  // predecessor's capture), no other; once this agent is going away, every pod does (its
  // successor's capture takes them over, or, stopped for good, they are released: fail open,
  // as documented).
  struct CaptureView {
    absl::Mutex mu;
    const CaptureReconciler* capture ABSL_GUARDED_BY(mu) = nullptr;
    enum class State { kStarting, kRunning, kLeaving } state ABSL_GUARDED_BY(mu) =
        State::kStarting;
    std::set<std::string> inherited ABSL_GUARDED_BY(mu);
  } capture_view;
  {
    absl::MutexLock l(&capture_view.mu);
    for (const HandedListener& h : inherited) capture_view.inherited.insert(h.pod_uid);
  }
  lb_options.captured = [&capture_view](const std::string& uid,
                                        const std::vector<std::string>& l7_ports) {
    absl::MutexLock l(&capture_view.mu);
    switch (capture_view.state) {
      case CaptureView::State::kStarting:
        return capture_view.inherited.count(uid) > 0;
      case CaptureView::State::kLeaving:
        return true;
      case CaptureView::State::kRunning:
        break;
    }
    return capture_view.capture != nullptr && capture_view.capture->IsCaptured(uid, l7_ports);
  };
  lb_options.directory = [&reconciler] { return reconciler.directory(); };
  ServicePolicyReconciler service_policy(lb_options, store, lb_writer);
  late_enforcement.Set([&](absl::Duration wait) {
    Enforcement e = AwaitEnforcement(store, reconciler, service_policy, wait);
    // And the ApiCostPolicies this node does not keep in force (for their CR status only:
    // /readyz and shunt_agent_synced are about access policy).
    if (auto snapshot = store.Current()) {
      for (auto& part : CostPoliciesNotEnforced(*snapshot, config.node_name, config.capture,
                                                lb_options.captured)) {
        e.not_enforced.push_back(std::move(part));
      }
    }
    return e;
  });
  absl::Cleanup unhook_enforcement = [&late_enforcement] { late_enforcement.Set(nullptr); };
  if (absl::Status s = service_policy.Start(); !s.ok()) {
    SHUNT_LOG(WARNING) << "first service/policy reconcile: " << s.message();
  }
  // A pod's pending policy sources are written before the pods map learns of it: no pod is
  // meshed at its cgroup's creation without its policy (docs/kernel-policy.md).
  reconciler.SetBeforePendingPods([&service_policy](const PolicySnapshotPtr& snapshot) {
    bool applied = false;
    if (absl::Status s = service_policy.ReconcileOnce(snapshot, &applied); !s.ok()) {
      SHUNT_LOG_EVERY_N_SEC(WARNING, 30) << "service/policy pass: " << s.message();
    }
    return applied;
  });
  // Every exit from here on stops the fast path's loop before service_policy goes away.
  absl::Cleanup stop_fast_path = [&reconciler] { reconciler.Stop(); };
  // After the policy pass (started first for the same reason).
  if (absl::Status s = reconciler.Start(); !s.ok()) {
    SHUNT_LOG(WARNING) << "first reconcile: " << s.message();
  }

  // In-pod capture and the relay behind it (docs/capture.md). Each relayed connection takes two
  // descriptors (its sockets), four more while bytes are in flight (its pipes, pooled between
  // uses): the soft limit goes up to the hard one.
  if (config.capture) {
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
      lim.rlim_cur = lim.rlim_max;
      setrlimit(RLIMIT_NOFILE, &lim);
    }
  }
  std::unique_ptr<TcpRelay> relay;
  std::unique_ptr<CaptureReconciler> capture;
  // What the relay reads at L7 (held by the relay's decisions too: they may outlive `capture`).
  auto request_metrics = std::make_shared<metrics::RequestMetrics>(config.max_metric_series,
                                                                   config.istio_metrics);
  auto connection_metrics = std::make_shared<metrics::ConnectionMetrics>(config.max_metric_series,
                                                                         config.istio_metrics);
  auto cost_metrics = std::make_shared<metrics::CostMetrics>(config.max_metric_series);
  // The kernel's L4 metrics of every connection of a meshed pod (metrics/l4_metrics.h), read
  // from the fast path's ring buffer ten times a second; a local pod's series go when it left.
  auto l4_metrics =
      std::make_shared<metrics::L4Metrics>(config.max_metric_series, config.istio_metrics);
  std::unique_ptr<metrics::L4EventReader> l4_reader;
  absl::StatusOr<std::unique_ptr<metrics::L4EventReader>> l4_started =
      absl::FailedPreconditionError("--connection-metrics=false");
  if (config.connection_metrics) l4_started = metrics::L4EventReader::Start(
      (*fastpath)->l4_events_fd(),
      [&store, &reconciler, l4_metrics, last_retain = absl::InfinitePast(),
       last_snapshot = PolicySnapshotPtr(), last_dir = std::shared_ptr<const WorkloadDirectory>(),
       generation = uint64_t{0}](const std::vector<shunt_l4_event>& events) mutable {
        auto dir = reconciler.directory();
        static const WorkloadDirectory kNone;
        PolicySnapshotPtr snapshot = store.Current();
        auto key_of = [&](const shunt_l4_event& e) {
          return metrics::L4KeyOf(e, snapshot.get(), dir ? *dir : kNone);
        };
        // Label sets made once per policy snapshot and directory (held here: a new one is never
        // taken for the old at its address).
        if (snapshot != last_snapshot || dir != last_dir) {
          last_snapshot = snapshot;
          last_dir = dir;
          ++generation;
        }
        for (const auto& e : events) l4_metrics->Record(e, key_of, generation);
        if (dir && absl::Now() - last_retain > absl::Seconds(5)) {
          std::set<std::pair<std::string, std::string>> pods;
          for (const auto& [id, w] : *dir) pods.emplace(w.k8s_namespace, w.name);
          l4_metrics->Retain(pods);
          last_retain = absl::Now();
        }
      },
      absl::Milliseconds(100));
  if (l4_started.ok()) {
    l4_reader = std::move(*l4_started);
  } else {
    SHUNT_LOG(WARNING) << "connection metrics off: " << l4_started.status().message();
  }
  if (config.capture) {
    RelayOptions ro;
    ro.max_connections_per_group = std::max<uint32_t>(1, config.capture_max_connections_per_pod);
    ro.max_buffered_per_group = std::max<uint64_t>(64 << 10, config.capture_max_buffered_per_pod);
    ro.loops = config.proxy_loops;
    ro.keepalive_idle = absl::Seconds(config.capture_keepalive_s);
    ro.user_timeout = absl::Milliseconds(config.capture_user_timeout_ms);
    if (ro.loops == 0) {
      cpu_set_t cpus;
      CPU_ZERO(&cpus);
      ro.loops = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
    }
    ro.loops = std::clamp<size_t>(ro.loops, 1, 64);
    auto r = TcpRelay::Start(ro);
    if (!r.ok()) {
      SHUNT_LOG(ERROR) << "relay: " << r.status().message();
      return 1;
    }
    relay = std::move(*r);
    SHUNT_LOG(INFO) << "relay: " << relay->loops() << " event loop(s)";
    CaptureReconciler::Options co;
    co.node_name = config.node_name;
    co.cgroup_root = fc.cgroup_root;
    co.resync = config.resync;
    co.capture.port = config.capture_port;
    co.inherited = std::move(inherited);
    if (keeper) co.on_listeners = [k = keeper.get()](std::vector<HandedListener> l) { k->Set(l); };
    co.requests = request_metrics;
    co.connections = connection_metrics;
    co.costs = cost_metrics;
    capture = std::make_unique<CaptureReconciler>(std::move(co), store, *relay);
    if (absl::Status s = capture->Start(); !s.ok()) {
      SHUNT_LOG(WARNING) << "first capture pass: " << s.message();
    }
    absl::MutexLock l(&capture_view.mu);
    capture_view.capture = capture.get();
    capture_view.state = CaptureView::State::kRunning;
  }
  absl::Cleanup stop_capture = [&capture, &capture_view] {
    {
      absl::MutexLock l(&capture_view.mu);
      // Going away: a last service/policy pass leaves the L7 DENYs to the successor's capture
      // (or, stopped for good, released: fail open, as documented).
      capture_view.capture = nullptr;
      capture_view.state = CaptureView::State::kLeaving;
    }
    if (capture) capture->Stop();
  };

  auto ready = [&]() -> absl::Status {
    if (!store.has_policy()) return absl::UnavailableError("no policy received yet");
    if (absl::Status s = store.last_error(); !s.ok()) {
      return absl::UnavailableError(absl::StrCat("last policy update rejected: ", s.message()));
    }
    if (!reconciler.synced()) return absl::UnavailableError("policy not applied yet");
    if (absl::Status s = reconciler.last_error(); !s.ok()) return s;
    // ACKed means enforced: what is not, is said here too.
    if (Enforcement e = CurrentEnforcement(store, reconciler, service_policy, kEnforcementGrace);
        !e.not_enforced.empty()) {
      return absl::UnavailableError(
          absl::StrCat("policy not enforced as written: ", DescribeNotEnforced(e.not_enforced)));
    }
    // With a controller: ready means in sync with it (the saved policy is enforced meanwhile).
    if (controller_source) return controller_source->InSync();
    return absl::OkStatus();
  };

  std::unique_ptr<prometheus::Exposer> exposer;
  auto registry_collector = std::make_shared<FastpathCollector>(
      **fastpath, [&reconciler] { return reconciler.directory(); }, config.max_metric_series);
  auto agent_collector =
      std::make_shared<AgentCollector>(config, store, reconciler, controller_source, [&] {
        return CurrentEnforcement(store, reconciler, service_policy, kEnforcementGrace);
      });
  agent_collector->SetCapture(capture.get(), relay.get());
  auto socklb_collector = std::make_shared<SockLbCollector>(
      **socklb, [&reconciler] { return reconciler.directory(); },
      [&service_policy] { return service_policy.status(); }, config.max_metric_series);
  // A predecessor that was stopping already when this agent asked (draining its connections)
  // holds its ports until it sees the ask (it then closes them, below): retried a while.
  const absl::Time bind_deadline =
      absl::Now() + (predecessor ? absl::Seconds(10) : absl::ZeroDuration());
  while (true) {
    try {
      exposer = std::make_unique<prometheus::Exposer>(config.metrics_addr);
      break;
    } catch (const std::exception& e) {
      if (absl::Now() >= bind_deadline) {
        SHUNT_LOG(ERROR) << "metrics endpoint " << config.metrics_addr << ": " << e.what();
        return 1;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  exposer->RegisterCollectable(registry_collector);
  exposer->RegisterCollectable(agent_collector);
  exposer->RegisterCollectable(socklb_collector);
  // (The exposer holds collectables by weak pointers: this one lives as long as the others.)
  auto request_collector =
      capture ? std::make_shared<RequestCollector>(request_metrics, connection_metrics,
                                                   cost_metrics, l4_metrics)
              : std::make_shared<RequestCollector>(nullptr, nullptr, nullptr, l4_metrics);
  exposer->RegisterCollectable(request_collector);
  auto admin = AdminServer::Start(config.admin_addr, ready);
  while (!admin.ok() && absl::Now() < bind_deadline) {
    absl::SleepFor(absl::Milliseconds(100));
    admin = AdminServer::Start(config.admin_addr, ready);
  }
  if (!admin.ok()) {
    SHUNT_LOG(ERROR) << admin.status().message();
    return 1;
  }
  SHUNT_LOG(INFO) << "shunt-agent " << SHUNT_VERSION << " on node " << config.node_name
                  << ": metrics on " << config.metrics_addr << ", admin on " << config.admin_addr;

  // Until SIGTERM/SIGINT (seen by a thread of its own), or a successor asking for the handoff.
  struct Wait {
    absl::Mutex mu;
    int signal ABSL_GUARDED_BY(mu) = 0;
    bool asked ABSL_GUARDED_BY(mu) = false;        // a successor asked for the listeners
    bool surrendered ABSL_GUARDED_BY(mu) = false;  // `handed` is ready
    // Stopping for good, the pods released (policy work stopped, capture tables gone): a successor
    // asking now gets no listener, and starts after the release, never racing it in the pods'
    // namespaces.
    bool released ABSL_GUARDED_BY(mu) = false;
    std::vector<HandedListener> handed ABSL_GUARDED_BY(mu);
  } w;
  std::thread signals([&w, &stop_signals] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    absl::MutexLock l(&w.mu);
    w.signal = sig;
  });
  absl::Cleanup join_signals = [&] {
    bool signalled;
    {
      absl::MutexLock l(&w.mu);
      signalled = w.signal != 0;
    }
    if (!signalled) pthread_kill(signals.native_handle(), SIGTERM);  // blocked: sigwait takes it
    signals.join();
  };
  std::unique_ptr<HandoffServer> handoff;
  if (!config.handoff_socket.empty()) {
    auto h = HandoffServer::Start(config.handoff_socket, [&w] {
      absl::MutexLock l(&w.mu);
      w.asked = true;
      w.mu.Await(absl::Condition(
          +[](Wait* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu) { return w->surrendered || w->released; },
          &w));
      return std::move(w.handed);
    });
    if (!h.ok()) {
      SHUNT_LOG(WARNING) << h.status().message() << ": no handoff to a successor";
    } else {
      handoff = std::move(*h);
    }
  }
  auto stop_policy_work = [&] {
    // The connection events' ring takes one reader: a successor's (what comes meanwhile waits in
    // the pinned ring for it).
    l4_reader.reset();
    if (source) source->Stop();
    reconciler.Stop();  // before the policy pass its hook runs (stop_fast_path does it again)
    service_policy.Stop();
  };

  bool handed_over = false;
  int sig = 0;
  absl::Duration waited;  // for a successor, after the signal: taken from the drain's time
  while (true) {
    {
      absl::MutexLock l(&w.mu);
      w.mu.Await(absl::Condition(
          +[](Wait* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu) {
            return w->signal != 0 || (w->asked && !w->surrendered);
          },
          &w));
      sig = w.signal;
      // A stop signal before any successor asked: one may be starting (a rolling update stops
      // the old agent once the new pod is ready, and the new pod's readiness probe may have been
      // answered by this agent, which still held the admin port; the new agent asks first thing,
      // but only once its process is up). Still serving everything, this agent waits a moment
      // for it: handed over, the pods' capture never lapses; released, new connections would
      // reach their pods unenforced until the new agent captures them again.
      if (sig != 0 && !w.asked && handoff != nullptr && config.handoff_wait > absl::ZeroDuration()) {
        SHUNT_LOG(INFO) << "signal " << sig << ": waiting up to " << config.handoff_wait
                        << " for a successor to take over";
        const absl::Time since = absl::Now();
        w.mu.AwaitWithTimeout(absl::Condition(&w.asked), config.handoff_wait);
        waited = absl::Now() - since;
      }
      if (sig != 0 && (!w.asked || w.surrendered)) break;
    }
    // A successor takes over: it writes the maps from now on, serves the HTTP ports and the
    // capture listeners; this agent relays what it has until it ends, then waits for SIGTERM.
    stop_policy_work();
    admin->reset();
    exposer.reset();
    std::vector<HandedListener> handed;
    if (capture) handed = capture->Surrender();
    if (keeper) keeper->Set({});  // the successor's now
    {
      absl::MutexLock l(&w.mu);
      w.handed = std::move(handed);
      w.surrendered = true;
    }
    handed_over = true;
    SHUNT_LOG(INFO) << "handed over to a new agent: relaying the open connections until they end";
  }
  SHUNT_LOG(INFO) << "signal " << sig << ": stopping; programs and maps stay pinned so that "
                  << "established connections are not disturbed";
  if (!handed_over) {
    stop_policy_work();
    // No new connection (those go to their pod directly until an agent captures it again: the
    // pods' capture chains go, their drop of SYNs without a listener with them); the open ones
    // are drained.
    if (capture) {
      capture->Stop();
      capture->ReleaseAll();
    }
    if (keeper) keeper->Set({});
  }
  // A successor that asks from now on gets no listener (they are released), but the ports: it
  // serves its own metrics and probes while this one drains.
  auto give_ports = [&] {
    bool asked;
    {
      absl::MutexLock l(&w.mu);
      asked = w.asked;
    }
    if (asked && admin.ok() && *admin != nullptr) {
      admin->reset();
      exposer.reset();
    }
  };
  give_ports();
  {
    absl::MutexLock l(&w.mu);
    w.released = true;
  }
  if (relay) {
    // HTTP connections end after their current response ("Connection: close"), idle ones once
    // idle a second, HTTP/2 ones after a GOAWAY:
    // their clients' next requests go to the next agent. Opaque ones end when their peers end them.
    // The wait for a successor came out of the drain's time: the whole stop fits the pod's
    // termination grace period as before.
    relay->Drain();
    const absl::Time deadline =
        absl::Now() + std::max(absl::ZeroDuration(), config.drain_timeout - waited);
    while (relay->stats().active > 0 && absl::Now() < deadline) {
      give_ports();
      absl::SleepFor(absl::Milliseconds(50));
    }
    if (const uint64_t left = relay->stats().active; left > 0) {
      SHUNT_LOG(WARNING) << left << " relayed connection(s) still open after the drain timeout: reset";
    }
  }
  return 0;
}

}  // namespace shunt::agent
