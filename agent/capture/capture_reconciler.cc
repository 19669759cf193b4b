#include "agent/capture/capture_reconciler.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/capture/netns.h"
#include "agent/cost/cost_observer.h"
#include "agent/dataplane/service_policy.h"
#include "agent/policy/pod_cgroups.h"
#include "common/log.h"

namespace shunt::agent {

pid_t AnyProcessOf(const std::string& dir) {
  {
    std::ifstream procs(dir + "/cgroup.procs");
    pid_t pid = 0;
    if (procs >> pid && pid > 0) return pid;
  }
  DIR* d = opendir(dir.c_str());
  if (!d) return 0;
  pid_t found = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_type != DT_DIR || e->d_name[0] == '.') continue;
    found = AnyProcessOf(dir + "/" + e->d_name);
    if (found) break;
  }
  closedir(d);
  return found;
}

std::vector<pid_t> ProcessesOf(const std::string& dir, size_t max) {
  std::vector<pid_t> out;
  std::vector<std::string> dirs = {dir};
  while (!dirs.empty() && out.size() < max) {
    const std::string d = dirs.back();
    dirs.pop_back();
    std::ifstream procs(d + "/cgroup.procs");
    for (pid_t pid = 0; out.size() < max && procs >> pid;) {
      if (pid > 0) out.push_back(pid);
    }
    if (DIR* h = opendir(d.c_str())) {
      while (dirent* e = readdir(h)) {
        if (e->d_type == DT_DIR && e->d_name[0] != '.') dirs.push_back(d + "/" + e->d_name);
      }
      closedir(h);
    }
  }
  return out;
}

std::vector<std::string> LocalAddresses() {
  std::vector<std::string> out;
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) != 0) return out;
  for (ifaddrs* i = ifs; i; i = i->ifa_next) {
    if (!i->ifa_addr) continue;
    char buf[INET6_ADDRSTRLEN] = {};
    if (i->ifa_addr->sa_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof(buf));
    } else if (i->ifa_addr->sa_family == AF_INET6) {
      auto* a6 = reinterpret_cast<sockaddr_in6*>(i->ifa_addr);
      if (IN6_IS_ADDR_LINKLOCAL(&a6->sin6_addr)) continue;
      inet_ntop(AF_INET6, &a6->sin6_addr, buf, sizeof(buf));
    } else {
      continue;
    }
    const std::string s = buf;
    if (s == "127.0.0.1" || s == "::1") continue;
    out.push_back(s);
  }
  freeifaddrs(ifs);
  return out;
}

CaptureReconciler::CaptureReconciler(Options options, PolicyStore& store, TcpRelay& relay)
    : options_(std::move(options)),
      store_(store),
      relay_(relay),
      loop_("capture", store, options_.resync, [this] { return ReconcileOnce(); }) {
  for (auto& a : LocalAddresses()) options_.capture.skip_sources.push_back(a);
}

CaptureReconciler::~CaptureReconciler() { Stop(); }

namespace {

// A metrics key's destination: the captured pod's namespace, workload (its owner) and name.
template <typename Key>
void SetDestination(Key& key, const PolicySnapshot& snapshot, const std::string& uid) {
  if (const auto* w = WorkloadOf(snapshot, uid)) {
    key.destination_namespace = w->namespace_();
    key.destination_workload = w->owner().empty() ? w->name() : w->owner();
    key.destination_pod = w->name();
  }
}

}  // namespace

std::pair<std::string, std::string> ServiceByAuthority(
    const std::vector<std::pair<std::string, std::string>>& services, std::string_view authority) {
  if (services.empty()) return {};
  // The host, without its port (and an IPv6 literal's brackets: then no Service name).
  std::string host = absl::AsciiStrToLower(std::string(authority));
  if (!host.empty() && host[0] == '[') {
    host.clear();
  } else if (size_t colon = host.rfind(':'); colon != std::string::npos) {
    host.resize(colon);
  }
  if (!host.empty() && host.back() == '.') host.pop_back();
  for (const auto& [ns, name] : services) {
    const std::string in_ns = absl::StrCat(name, ".", ns);
    if (host == name || host == in_ns || host == absl::StrCat(in_ns, ".svc") ||
        absl::StartsWith(host, absl::StrCat(in_ns, ".svc."))) {
      return {ns, name};
    }
  }
  return services.front();
}

absl::Status CaptureReconciler::Start() {
  absl::Status s = ReconcileOnce();
  loop_.Start();
  return s;
}

void CaptureReconciler::Stop() { loop_.Stop(); }

std::map<CaptureReconciler::DeniedKey, uint64_t> CaptureReconciler::denied() const {
  absl::MutexLock l(&denied_->mu);
  return denied_->counts;
}

std::map<CaptureReconciler::DeniedKey, uint64_t> CaptureReconciler::closed_by_policy() const {
  absl::MutexLock l(&denied_->mu);
  return denied_->closed;
}

std::map<CaptureReconciler::DeniedKey, uint64_t> CaptureReconciler::denied_requests() const {
  absl::MutexLock l(&denied_->mu);
  return denied_->requests;
}

size_t CaptureReconciler::captured_pods() const {
  absl::MutexLock l(&mu_);
  return captured_;
}

bool CaptureReconciler::IsCaptured(const std::string& uid,
                                   const std::vector<std::string>& l7_ports) const {
  absl::MutexLock l(&mu_);
  auto it = captured_uids_.find(uid);
  if (it == captured_uids_.end()) return false;
  for (const std::string& p : l7_ports) {
    if (!it->second.count(p)) return false;
  }
  return true;
}

absl::Status CaptureReconciler::Capture(const std::string& uid, const std::string& cgroup,
                                        const std::vector<std::string>& ips, Pod& pod) {
  // The pod's namespace is the one that holds its IP: a process of the pod in a namespace of its
  // own (a sandbox, unshare), or a pid reused by another process between the read of
  // cgroup.procs and the open, is not taken for it.
  std::optional<UniqueFd> found;
  struct stat st{};
  for (pid_t pid : ProcessesOf(cgroup)) {
    auto ns = OpenNetns(absl::StrCat("/proc/", pid, "/ns/net"));
    if (!ns.ok() || fstat(ns->get(), &st) != 0) continue;
    if (pod.netns && pod.netns_ino == st.st_ino) return absl::OkStatus();  // as it is
    std::vector<std::string> addrs;
    {
      NetnsScope in(ns->get());
      if (!in.ok()) continue;
      addrs = LocalAddresses();
    }
    bool holds_ip = false;
    for (const auto& a : addrs) holds_ip |= std::find(ips.begin(), ips.end(), a) != ips.end();
    if (holds_ip) {
      found = std::move(*ns);
      break;
    }
  }
  if (!found) return absl::OkStatus();  // no process in the pod's namespace yet: next pass
  auto* ns = &*found;
  if (pod.netns && pod.netns_ino == st.st_ino) return absl::OkStatus();  // as it is
  if (pod.netns) Release(uid, pod);  // a new sandbox
  auto shared = std::make_shared<UniqueFd>(std::move(*ns));
  const uint64_t group = next_group_++;
  if (absl::Status s = InstallCapture(shared->get(), ForPod(pod)); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("pod ", uid, ": ", s.message()));
  }
  std::vector<int> listeners, families;
  for (int family : {AF_INET, AF_INET6}) {
    absl::StatusOr<UniqueFd> l = absl::NotFoundError("");
    for (auto& h : options_.inherited) {
      if (h.fd.valid() && h.pod_uid == uid && h.netns_ino == st.st_ino && h.family == family &&
          h.port == options_.capture.port) {
        l = std::move(h.fd);  // the old agent's, with its backlog
        SHUNT_LOG(INFO) << "pod " << uid << ": serving the listener handed over ("
                        << (family == AF_INET ? "IPv4" : "IPv6") << ")";
      }
    }
    if (!l.ok()) l = OpenTransparentListener(shared->get(), family, options_.capture.port);
    if (!l.ok() && family == AF_INET6 && !listeners.empty() &&
        (absl::IsUnimplemented(l.status()) || l.status().message().find("not supported") !=
                                                  std::string::npos ||
         l.status().message().find("not available") != std::string::npos)) {
      continue;  // no IPv6 in this namespace: IPv4 only
    }
    if (!l.ok()) {
      for (int fd : listeners) relay_.RemoveListener(fd);
      RemoveCapture(shared->get(), options_.capture).IgnoreError();
      return absl::Status(l.status().code(), absl::StrCat("pod ", uid, ": ", l.status().message()));
    }
    const int fd = l->get();
    const uint32_t mark = options_.capture.agent_mark;
    const uint16_t port = options_.capture.port;
    // Opaque TCP, allowed (policy where traffic arrives comes with the proxy's next part): an
    // upstream to where the client connected, as the client. Never to the listener's own port
    // (a connection to it, from outside or from the pod, would be relayed to itself, again and
    // again).
    // Access policy where the connection arrives (the source by its IP): refused with a reset,
    // counted, what a policy denies -- also what came around the connect-time check (another
    // node, an unmeshed pod, a NodePort).
    PolicyStore* store = &store_;
    std::shared_ptr<Denied> denied = denied_;
    std::string pod_name = uid;
    std::shared_ptr<metrics::RequestMetrics> requests = options_.requests;
    std::shared_ptr<metrics::ConnectionMetrics> connections = options_.connections;
    std::shared_ptr<metrics::CostMetrics> costs = options_.costs;
    auto decide = [shared, mark, port, store, denied, uid, pod_name, requests, connections, costs](
                      const sockaddr_storage& peer, const sockaddr_storage& local,
                      RelayCheck when) {
      RelayDecision d;
      const uint16_t to_port =
          ntohs(local.ss_family == AF_INET ? reinterpret_cast<const sockaddr_in*>(&local)->sin_port
                                           : reinterpret_cast<const sockaddr_in6*>(&local)->sin6_port);
      if (to_port == port) {
        d.reason = "the capture listener's own port";
        return d;
      }
      if (auto snapshot = store->Current()) {
        IpKey src{};
        if (peer.ss_family == AF_INET) {
          src.addr[2] = htonl(0xffff);
          src.addr[3] = reinterpret_cast<const sockaddr_in*>(&peer)->sin_addr.s_addr;
        } else {
          std::memcpy(src.addr, &reinterpret_cast<const sockaddr_in6*>(&peer)->sin6_addr, 16);
        }
        // Read as HTTP where its port needs L7 (then each request is decided), else as bytes
        // (without L7 rules at the port both views are one).
        const ArrivalDecision a = DecideArrival(*snapshot, uid, src, to_port, ArrivalView::kHttp);
        const std::string dest = a.destination_pod.empty() ? pod_name : a.destination_pod;
        if (!a.allowed) {
          absl::MutexLock l(&denied->mu);
          denied->Count(when == RelayCheck::kArrival ? denied->counts : denied->closed,
                        {a.source_namespace, a.source_workload, dest, a.policy});
          d.reason = a.policy;
          return d;
        }
        // Its L4 counters (metrics/request_metrics.h), shared by the connections of one source
        // and destination; a policy change's decision keeps the connection's own.
        if (connections && when == RelayCheck::kArrival) {
          metrics::ConnectionKey k;
          k.source_namespace = a.source_namespace;
          k.source_workload = a.source_workload;
          SetDestination(k, *snapshot, uid);
          const auto services = ServicesOf(*snapshot, uid, to_port);
          if (!services.empty()) std::tie(k.service_namespace, k.service_name) = services.front();
          d.counters = connections->For(k);
        }
        if (a.l7) {
          d.l7 = true;
          const std::string app = AppProtocolOf(*snapshot, uid, to_port);
          if (app == "http" || app == "grpc-web") {
            d.protocol = RelayDecision::Protocol::kHttp;
          } else if (app == "http2" || app == "grpc" || app == "kubernetes.io/h2c" || app == "h2c") {
            d.protocol = RelayDecision::Protocol::kHttp2;
          }
          const ArrivalDecision opaque =
              DecideArrival(*snapshot, uid, src, to_port, ArrivalView::kOpaque);
          d.opaque_allow = opaque.allowed;
          const DeniedKey opaque_key{opaque.source_namespace, opaque.source_workload, dest,
                                     opaque.policy};
          d.opaque_refused = [denied, opaque_key] {
            absl::MutexLock l(&denied->mu);
            denied->Count(denied->counts, opaque_key);
          };
          // Each request against the policy in force when it comes.
          d.authorize = [store, uid, src, to_port](const L7Request& r) {
            L7Verdict v{.allow = false, .policy = ""};  // no policy (cannot happen): closed
            if (auto now = store->Current()) {
              const ArrivalDecision q = DecideRequest(*now, uid, src, to_port, r.method, r.path);
              v.allow = q.allowed;
              v.policy = q.policy;
            }
            return v;
          };
          const DeniedKey who{a.source_namespace, a.source_workload, dest, ""};
          // Every request read, by source, destination and response (metrics/request_metrics.h).
          metrics::RequestKey base;
          base.source_namespace = a.source_namespace;
          base.source_workload = a.source_workload;
          SetDestination(base, *snapshot, uid);
          auto services = ServicesOf(*snapshot, uid, to_port);
          // The Services of the port an ApiCostPolicy prices: each request to one of them is
          // read for its cost (agent/cost/), charged to the calling pod.
          std::map<std::pair<std::string, std::string>, std::shared_ptr<const cost::CostPolicy>>
              priced;
          if (costs) {
            for (const auto& sn : services) {
              if (auto p = CostPolicyOf(*snapshot, sn.first, sn.second)) priced[sn] = std::move(p);
            }
          }
          if (!priced.empty()) {
            // Priced by the Service its Host names, if that one is priced; else by the first
            // priced one (a Host naming another Service of the same port, or none, does not
            // make a request free: the pod serves the priced API whatever the name).
            d.observe = [services, priced](const L7Request& r) -> std::unique_ptr<BodyObserver> {
              auto it = priced.find(ServiceByAuthority(services, r.authority));
              if (it == priced.end()) it = priced.begin();
              return std::make_unique<cost::CostObserver>(it->second, it->first);
            };
          }
          metrics::CostKey payer;
          payer.source_namespace = a.source_namespace;
          payer.source_workload = a.source_workload;
          payer.source_pod = a.source_pod;
          d.exchanges = [denied, who, requests, costs, payer = std::move(payer),
                         base = std::move(base),
                         services = std::move(services)](const ExchangeRecord& r) {
            auto* o = costs ? dynamic_cast<cost::CostObserver*>(r.observer.get()) : nullptr;
            if (o && !r.not_forwarded) {  // (a stream refused before the server saw it: retried)
              const cost::Charge charge = o->Finish(r);
              metrics::CostKey k = payer;
              std::tie(k.service_namespace, k.service_name) = o->service();
              k.route = charge.route;
              k.model = charge.model;
              k.currency = o->policy().currency();
              costs->Record(k, charge);
              if (!charge.model.empty()) {  // an LLM call: the GenAI conventions' metrics too
                metrics::GenAiKey g{.source_namespace = k.source_namespace,
                                    .source_workload = k.source_workload,
                                    .service_namespace = k.service_namespace,
                                    .service_name = k.service_name,
                                    .model = charge.model,
                                    .operation = metrics::GenAiOperation(r.request.path)};
                costs->RecordGenAi(g, metrics::GenAiCallOf(charge, r.start, r.end,
                                                           o->first_event()));
              }
            }
            if (requests) {
              metrics::RequestKey k = base;
              std::tie(k.service_namespace, k.service_name) =
                  ServiceByAuthority(services, r.request.authority);
              k.grpc = r.request.grpc;
              k.response_code = r.status;
              k.grpc_status = r.grpc_status;
              requests->Record(k, r);
            }
            if (!r.denied) return;
            DeniedKey key = who;
            std::get<3>(key) = r.policy;
            absl::MutexLock l(&denied->mu);
            denied->Count(denied->requests, std::move(key));
          };
        }
      }
      d.allow = true;
      d.netns_fd = shared->get();
      d.as = peer;
      d.to = local;
      d.mark = mark;
      return d;
    };
    if (absl::Status s = relay_.AddListener(std::move(*l), decide, group); !s.ok()) {
      // (a dup for one of the relay's loops failed: out of descriptors) As for a listener that
      // could not be opened: nothing of the pod's capture left, so that the next pass retries.
      for (int added : listeners) relay_.RemoveListener(added);
      RemoveCapture(shared->get(), options_.capture).IgnoreError();
      return absl::Status(s.code(), absl::StrCat("pod ", uid, ": ", s.message()));
    }
    listeners.push_back(fd);
    families.push_back(family);
  }
  pod.netns = std::move(shared);
  pod.netns_ino = st.st_ino;
  pod.mesh_sources = options_.capture.mesh_sources;
  pod.l7_ports = pod.want_l7_ports;
  pod.listeners = std::move(listeners);
  pod.families = std::move(families);
  pod.group = group;
  SHUNT_LOG(INFO) << "pod " << uid << ": inbound connections captured (port "
                  << options_.capture.port << ")";
  return absl::OkStatus();
}

CaptureOptions CaptureReconciler::ForPod(const Pod& pod) const {
  CaptureOptions o = options_.capture;
  o.l7_ports = pod.want_l7_ports;
  return o;
}

absl::Status CaptureReconciler::Refresh(const std::string& uid, Pod& pod) {
  if (!pod.netns || (pod.mesh_sources == options_.capture.mesh_sources &&
                     pod.l7_ports == pod.want_l7_ports)) {
    return absl::OkStatus();
  }
  // The table replaced in one transaction: no moment without capture.
  if (absl::Status s = InstallCapture(pod.netns->get(), ForPod(pod)); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("pod ", uid, ": ", s.message()));
  }
  pod.mesh_sources = options_.capture.mesh_sources;
  pod.l7_ports = pod.want_l7_ports;
  return absl::OkStatus();
}

void CaptureReconciler::Release(const std::string& uid, Pod& pod) {
  if (!pod.netns) return;
  // New connections first (none for listeners about to go); open ones go on, their replies
  // still routed to the relay until they end (FinishReleases).
  if (absl::Status s = StopCapturing(pod.netns->get(), options_.capture); !s.ok()) {
    SHUNT_LOG_EVERY_N_SEC(WARNING, 10) << "pod " << uid << ": release the capture: " << s.message();
  }
  for (int fd : pod.listeners) relay_.RemoveListener(fd);
  pod.listeners.clear();
  releasing_.emplace_back(uid, std::move(pod));
  pod = Pod{};
}

void CaptureReconciler::FinishReleases() {
  for (auto it = releasing_.begin(); it != releasing_.end();) {
    if (relay_.ActiveIn(it->second.group) > 0) {
      ++it;
      continue;
    }
    if (absl::Status s = RemoveCapture(it->second.netns->get(), options_.capture); !s.ok()) {
      SHUNT_LOG_EVERY_N_SEC(WARNING, 10)
          << "pod " << it->first << ": remove the capture: " << s.message();
    }
    if (options_.requests) options_.requests->ForgetDestinationPod(it->second.ns, it->second.name);
    if (options_.connections) {
      options_.connections->ForgetDestinationPod(it->second.ns, it->second.name);
    }
    it = releasing_.erase(it);
  }
}

absl::Status CaptureReconciler::ReconcileOnce() {
  absl::MutexLock pass(&pass_mu_);
  auto snapshot = store_.Current();
  if (!snapshot) return absl::OkStatus();
  if (options_.costs && snapshot->version != costs_retained_version_) {
    // The calling pods gone from the cluster: their cost series go (once per policy version).
    std::set<std::pair<std::string, std::string>> pods, workloads;
    for (const auto& w : snapshot->bundle.workloads()) {
      pods.emplace(w.namespace_(), w.name());
      workloads.emplace(w.namespace_(), w.owner().empty() ? w.name() : w.owner());
    }
    options_.costs->RetainSourcePods(pods, workloads);
    costs_retained_version_ = snapshot->version;
  }
  auto cgroups = FindPodCgroups(options_.cgroup_root);
  if (!cgroups.ok()) return cgroups.status();
  std::map<std::string, std::vector<std::string>> want;  // uid -> its IPs
  std::map<std::string, std::vector<std::string>> want_l7;  // uid -> its ports that need L7
  // The node's meshed pods (also those without a cgroup yet: enforced from their first
  // connect(), issue 8) are the fast path's sources: their connections are not relayed.
  std::set<std::string> mesh;
  for (const auto& w : snapshot->bundle.workloads()) {
    if (w.node() != options_.node_name || !w.meshed() || w.host_network()) continue;
    for (const auto& ip : w.ips()) {
      unsigned char a[sizeof(in6_addr)];
      // Not an address (policy is not trusted to be well formed): left out, not the table.
      if (inet_pton(AF_INET, ip.c_str(), a) == 1 || inet_pton(AF_INET6, ip.c_str(), a) == 1) {
        mesh.insert(ip);
      }
    }
    if (cgroups->count(w.uid()) && w.ips_size() > 0) {
      want[w.uid()] = std::vector<std::string>(w.ips().begin(), w.ips().end());
      want_l7[w.uid()] = L7PortsOf(snapshot->bundle, w);
    }
  }
  options_.capture.mesh_sources.assign(mesh.begin(), mesh.end());
  absl::Status first;
  for (auto it = pods_.begin(); it != pods_.end();) {
    if (!want.count(it->first)) {
      Release(it->first, it->second);
      it = pods_.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [uid, ips] : want) {
    Pod& pod = pods_[uid];
    pod.want_l7_ports = want_l7[uid];
    if (const auto* w = WorkloadOf(*snapshot, uid)) {
      pod.ns = w->namespace_();
      pod.name = w->name();
    }
    absl::Status s = Capture(uid, cgroups->at(uid), ips, pod);
    if (s.ok()) s = Refresh(uid, pod);
    if (!s.ok() && first.ok()) first = s;
  }
  FinishReleases();
  // Handed-over listeners of pods this pass did not capture in the same namespace: closed.
  options_.inherited.clear();
  // A new policy applies to the connections already open too (as ztunnel does): the relay
  // decides each again, and closes what it now denies.
  if (snapshot->version != rechecked_version_) {
    if (rechecked_version_ != 0) relay_.Recheck();
    rechecked_version_ = snapshot->version;
  }
  if (options_.on_listeners) {
    std::vector<std::tuple<std::string, ino_t, int, int>> now;
    for (const auto& [uid, p] : pods_) {
      for (size_t i = 0; i < p.listeners.size(); ++i) {
        now.emplace_back(uid, p.netns_ino, p.families[i], p.listeners[i]);
      }
    }
    if (!published_ || now != *published_) {
      options_.on_listeners(DuplicateListeners());
      published_ = std::move(now);
    }
  }
  std::map<std::string, std::set<std::string>> uids;
  for (const auto& [uid, p] : pods_) {
    if (p.netns != nullptr) uids[uid] = std::set<std::string>(p.l7_ports.begin(), p.l7_ports.end());
  }
  absl::MutexLock l(&mu_);
  captured_ = uids.size();
  captured_uids_ = std::move(uids);
  return first;
}

std::vector<HandedListener> CaptureReconciler::DuplicateListeners() {
  std::vector<HandedListener> out;
  for (auto& [uid, p] : pods_) {
    for (size_t i = 0; i < p.listeners.size(); ++i) {
      HandedListener h;
      h.pod_uid = uid;
      h.netns_ino = p.netns_ino;
      h.family = p.families[i];
      h.port = options_.capture.port;
      h.fd = UniqueFd(fcntl(p.listeners[i], F_DUPFD_CLOEXEC, 0));
      if (!h.fd.valid()) {
        SHUNT_LOG(ERROR) << "pod " << uid << ": duplicate a listener: " << std::strerror(errno);
      } else {
        out.push_back(std::move(h));
      }
    }
  }
  return out;
}

std::vector<HandedListener> CaptureReconciler::Surrender() {
  loop_.Stop();
  absl::MutexLock pass(&pass_mu_);
  std::vector<HandedListener> out = DuplicateListeners();
  for (auto& [uid, p] : pods_) {
    // The relay's copy; the socket lives on in `out`.
    for (int fd : p.listeners) relay_.RemoveListener(fd);
  }
  pods_.clear();
  releasing_.clear();  // the successor's to finish (their pods are not meshed: not captured)
  absl::MutexLock l(&mu_);
  captured_ = 0;
  // captured_uids_ kept: the pods stay captured (by the successor's listeners), so that a last
  // service/policy pass of this agent does not turn their L7 DENYs into whole-connection ones.
  return out;
}

void CaptureReconciler::ReleaseAll() {
  absl::MutexLock pass(&pass_mu_);
  for (auto& [uid, p] : pods_) Release(uid, p);
  pods_.clear();
  FinishReleases();
  absl::MutexLock l(&mu_);
  captured_ = 0;
  captured_uids_.clear();
}

absl::Status CaptureReconciler::RemoveFromAllPods(const std::string& cgroup_root,
                                                  const CaptureOptions& o) {
  auto cgroups = FindPodCgroups(cgroup_root);
  if (!cgroups.ok()) return cgroups.status();
  absl::Status first;
  for (const auto& [uid, dir] : *cgroups) {
    const pid_t pid = AnyProcessOf(dir);
    if (pid == 0) continue;
    auto ns = OpenNetns(absl::StrCat("/proc/", pid, "/ns/net"));
    if (!ns.ok()) continue;  // gone meanwhile
    absl::Status s = RemoveCapture(ns->get(), o);
    if (!s.ok() && first.ok()) first = s;
  }
  return first;
}

}  // namespace shunt::agent
