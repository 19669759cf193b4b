// Compiles Services, TrafficRoutes and AccessPolicies into the socklb maps (connect-time load
// balancing and access policy, bpf/socklb.bpf.c) and keeps the kernel in step with them.
//
// CompileServicePolicy is pure (no file descriptors): policy snapshot + this node's pod cgroups +
// map capacities -> desired map contents, with what did not fit counted rather than failed.
// ServicePolicyWriter is what the kernel side implements (SockLbWriter over SockLb) and what unit
// tests fake. ServicePolicyReconciler runs the loop (on every policy change and every resync tick).
//
// Caps: 64 access policies per node (a bit each; more is a reconcile error and the extra policies
// are not enforced), 8 port ranges per policy, `max_slots_per_service` slots per VIP:port.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/bpf/fastpath.h"  // IpKey, ParseIpKey
#include "agent/bpf/socklb.h"
#include "agent/cost/cost_policy.h"
#include "agent/dataplane/local_dataplane.h"  // WorkloadDirectory
#include "agent/dataplane/reconcile_loop.h"
#include "agent/policy/policy_store.h"
#include "shunt/socklb_abi.h"

namespace shunt::agent {

struct ServicePolicyLimits {
  uint32_t services = 4096;        // VIP:port entries
  uint32_t slots = 65536;          // slot entries over all services
  uint32_t policy_sources = 4096;  // local pods with a non-empty source mask
  uint32_t pending_sources = 4096;  // the same by uid (the pods map's size)
  uint32_t policy_dests = 16384;   // pod IPs targeted by a policy
  uint32_t max_slots_per_service = 1024;
  // The agents' proxy captures meshed pods (--capture): L7 rules at meshed targets are decided
  // there per request, not at connect().
  bool l7_proxy = false;
  // Meshed pods of this node whose capture is not in place (not yet, or it failed: a namespace
  // gone, the capture port taken): no proxy decides their requests, so an L7 DENY targeting them
  // refuses whole connections at connect(), as without --capture. (A target on another node is
  // trusted to be captured by its agent.)
  std::set<std::string> uncaptured;
};

struct LbKey {
  IpKey vip;
  uint16_t port = 0;
  friend bool operator<(const LbKey& a, const LbKey& b) {
    if (a.vip == b.vip) return a.port < b.port;
    return a.vip < b.vip;
  }
};

struct LbBackend {
  IpKey ip;
  uint16_t port = 0;
  friend bool operator==(const LbBackend& a, const LbBackend& b) {
    return a.ip == b.ip && a.port == b.port;
  }
};

// Map names as used in metrics labels and overflow counts.
inline constexpr char kLbMapServices[] = "services";
inline constexpr char kLbMapSlots[] = "slots";
inline constexpr char kLbMapPolicySources[] = "policy_sources";
inline constexpr char kLbMapPolicyPending[] = "policy_pending_sources";
inline constexpr char kLbMapPolicyDests[] = "policy_destinations";
inline constexpr char kLbMapPolicies[] = "policies";

// A part of the policy in force that this agent does not enforce as written, and why: reported
// to the controller with the ACK (CR status), on /readyz and on /metrics.
struct NotEnforcedPart {
  std::string policy;  // "namespace/name" of the AccessPolicy; empty: the node as a whole
  std::string reason;
  // Node-wide, and no access policy of the node is known enforced (maps not written, not yet).
  bool every_access_policy = false;
  bool cost = false;  // `policy` names an ApiCostPolicy (not an AccessPolicy)
  auto operator<=>(const NotEnforcedPart&) const = default;
};

struct DesiredServicePolicy {
  std::map<LbKey, uint32_t> service_ids;          // VIP:port -> service id
  std::map<LbKey, std::vector<LbBackend>> slots;  // VIP:port -> slot table (index = slot)
  std::map<uint64_t, uint64_t> policy_sources;    // pod cgroup id -> policy mask
  std::map<std::string, uint64_t> pending_sources;  // pod uid -> policy mask (with or without cgroup)
  std::map<IpKey, shunt_ap_dst> policy_dests;     // pod IP -> {deny, allow}
  std::array<shunt_ap_ports, SHUNT_AP_MAX_POLICIES> policy_ports{};  // by policy bit
  std::map<uint32_t, std::string> service_names;  // service id -> "namespace/name"
  std::map<uint32_t, std::string> policy_names;   // policy bit -> "namespace/name"
  std::map<std::string, uint64_t> overflow;       // map -> entries that did not fit
  std::vector<std::string> errors;                // reconcile errors (policy over cap...)
  std::vector<NotEnforcedPart> not_enforced;      // the same, by policy (sorted, unique)
  uint64_t not_understood = 0;  // access policies this agent cannot fully read (enforced closed)
};

// Stable small ids for names: a policy keeps its bit and a service port its id while it exists.
class StableIds {
 public:
  // `first`..`last` inclusive; `reuse`: lowest free id (policy bits) or next unused (ids that
  // label counters, so a new service does not inherit a dead one's counters).
  StableIds(uint32_t first, uint32_t last, bool reuse)
      : first_(first), last_(last), reuse_(reuse) {}
  // nullopt when every id is taken.
  std::optional<uint32_t> IdFor(const std::string& name);
  // Forgets every name not in `keep`.
  void Retain(const std::set<std::string>& keep);
  // Forgets `name` (its id is free); false if it had none.
  bool Release(const std::string& name) { return ids_.erase(name) > 0; }
  // Gives `name` the id `id` (recovered after a restart) unless either is taken already.
  void Adopt(const std::string& name, uint32_t id);

 private:
  uint32_t first_, last_;
  bool reuse_;
  uint32_t next_ = 0;
  std::map<std::string, uint32_t> ids_;
};

// The policy bit shared by the ALLOW policies no source of this node matches: such a policy only
// makes its targets allow-listed (a source of this node must match another ALLOW to reach them),
// so they need no bit each. The highest bit, so that `not_allowed` counts (lowest allow bit of
// the destination) name a policy of the destination's own where there is one.
inline constexpr uint32_t kSharedAllowBit = SHUNT_AP_MAX_POLICIES - 1;

struct ServicePolicyIds {
  // Only policies that some source of this node matches get a bit of their own.
  StableIds policy_bits{0, kSharedAllowBit - 1, /*reuse=*/true};
  StableIds service_ids{1, 0xffffffffu, /*reuse=*/false};
  // VIP:port -> service id found in the pinned map at start (agent restart): adopted by the
  // first compile so that counters keep their service.
  std::map<LbKey, uint32_t> recovered_service_ids;
};

// `pod_cgroup_ids`: uid -> cgroup id of the pod cgroups on this node.
DesiredServicePolicy CompileServicePolicy(const PolicySnapshot& snapshot, const std::string& node,
                                          const std::map<std::string, uint64_t>& pod_cgroup_ids,
                                          const ServicePolicyLimits& limits, ServicePolicyIds& ids);

// Slot counts for weights: reduced by their gcd; scaled down to `max_slots` (largest remainder)
// when the reduced total is larger. Zero weights get no slot.
std::vector<uint32_t> WeightsToSlots(const std::vector<uint64_t>& weights, uint32_t max_slots);

// Parses "a.b.c.d/n" or "v6/n" into the 16-byte form and a prefix length over 128 bits.
absl::StatusOr<std::pair<IpKey, int>> ParseCidr(const std::string& cidr);
bool CidrContains(const std::pair<IpKey, int>& cidr, const IpKey& ip);

class ServicePolicyWriter {
 public:
  using Bytes = std::string;
  virtual ~ServicePolicyWriter() = default;
  virtual absl::StatusOr<std::map<Bytes, Bytes>> List(SockLbMap map) const = 0;
  virtual absl::Status Upsert(SockLbMap map, const Bytes& key, const Bytes& value) = 0;
  virtual absl::Status Delete(SockLbMap map, const Bytes& key) = 0;
  // Drops the counters of a workload that left the node (its series disappear).
  virtual absl::Status DeleteStatsOf(uint32_t workload_id) = 0;
  // Drops the counters of a service id / policy bit that was freed: its series disappear rather
  // than be shown as "unknown", or be counted for whatever gets the id next.
  virtual absl::Status DeleteServiceStats(const std::set<uint32_t>& service_ids) = 0;
  virtual absl::Status DeletePolicyStats(const std::set<uint32_t>& policy_bits) = 0;
};

class SockLbWriter : public ServicePolicyWriter {
 public:
  explicit SockLbWriter(SockLb& lb) : lb_(lb) {}
  absl::StatusOr<std::map<Bytes, Bytes>> List(SockLbMap map) const override {
    return lb_.List(map);
  }
  absl::Status Upsert(SockLbMap map, const Bytes& key, const Bytes& value) override {
    return lb_.Upsert(map, key, value);
  }
  absl::Status Delete(SockLbMap map, const Bytes& key) override { return lb_.Delete(map, key); }
  absl::Status DeleteStatsOf(uint32_t id) override { return lb_.DeleteStatsOf(id); }
  absl::Status DeleteServiceStats(const std::set<uint32_t>& ids) override {
    return lb_.DeleteStatsOfDetail({SHUNT_LB_REWRITTEN}, ids);
  }
  absl::Status DeletePolicyStats(const std::set<uint32_t>& bits) override {
    return lb_.DeleteStatsOfDetail({SHUNT_LB_DENIED, SHUNT_LB_NOT_ALLOWED}, bits);
  }

 private:
  SockLb& lb_;
};

// Map contents as bytes, in the ABI layout.
using EncodedServicePolicy = std::map<SockLbMap, std::map<std::string, std::string>>;
EncodedServicePolicy EncodeServicePolicy(const DesiredServicePolicy& desired);

// Brings the maps to `desired`. Order keeps every intermediate state usable: slots before the
// services that point into them, deletes of services before their slots. `known`: what the maps
// hold (the previous successful pass, or ListServicePolicy), to diff against without listing
// them; null: list them. On success, `*applied` (if given) becomes what the maps now hold.
// A source entry that `known` lacks and `desired` has no cgroup for is left alone: one the
// cgroup_mkdir program wrote after the maps were listed belongs to a cgroup newer than them.
absl::Status ApplyServicePolicy(const DesiredServicePolicy& desired, ServicePolicyWriter& writer,
                                const EncodedServicePolicy* known = nullptr,
                                EncodedServicePolicy* applied = nullptr);

// What the maps ApplyServicePolicy writes hold now. Listed before the cgroups are scanned, so
// that an entry the cgroup_mkdir program writes afterwards is either in the scan or not seen
// at all (never taken for a stale one and deleted).
absl::StatusOr<EncodedServicePolicy> ListServicePolicy(const ServicePolicyWriter& writer);

// The policy names map (SockLbMap::kPolicyNames) for `names` (bit -> name), and back: a restarted
// agent gives each policy the bit it had (its counters keep their policy, and its first pass
// rewrites little); `known` learns what each bit meant.
std::map<std::string, std::string> EncodePolicyNames(const std::map<uint32_t, std::string>& names);
void RecoverPolicyBits(const std::map<std::string, std::string>& encoded, ServicePolicyIds& ids,
                       std::map<uint32_t, std::string>* known);

// Access policy where a captured connection arrives (docs/capture.md): the source by its IP (the
// workload that has it, else only ipBlocks can match it), the destination the captured pod
// `dest_uid`, port `port`. Denied when a DENY policy targeting the pod on that port matches the
// source, or when ALLOW policies target it there and none matches the source. Policies this
// agent cannot fully read fail closed as at connect() (an unknown action is a DENY, an ALLOW
// with unknown fields admits no one).
// Policies with L7 rules (methods, paths) depend on how the connection is read: as opaque bytes
// (kOpaque) they fail closed: a DENY refuses the whole connection of a source it matches, an
// ALLOW admits none; read as HTTP (kHttp) only their sources count at arrival, and each request
// is then decided by DecideRequest.
enum class ArrivalView { kOpaque, kHttp };
struct ArrivalDecision {
  bool allowed = true;
  std::string policy;  // the deciding policy, "namespace/name" (denied: the DENY or an ALLOW)
  std::string source_namespace, source_workload;  // of the source's workload ("" unknown)
  std::string source_pod;                         // its pod's name ("" unknown)
  std::string destination_pod;                    // the captured pod's name
  // A policy with L7 rules targets the pod on that port, or an ApiCostPolicy prices a Service
  // it serves there: read it as HTTP.
  bool l7 = false;
};
ArrivalDecision DecideArrival(const PolicySnapshot& snapshot, const std::string& dest_uid,
                              const IpKey& source, uint16_t port,
                              ArrivalView view = ArrivalView::kOpaque);
// One HTTP request on a connection admitted with kHttp: its method and path (the target without
// query; gRPC: "/package.Service/Method") against the L7 rules, on every reading of the path a
// server may make (PathViewsForPolicy: the request goes to the server as the client wrote it):
// a DENY rule matches when one reading does, an ALLOW rule admits only when all of them do. A
// rule path ending in "*" is a prefix. A DENY also matches whatever the letters' case and a
// trailing "/" of either side (servers that fold case or route "/admin/" as "/admin" are many):
// stricter than written, never looser.
ArrivalDecision DecideRequest(const PolicySnapshot& snapshot, const std::string& dest_uid,
                              const IpKey& source, uint16_t port, std::string_view method,
                              std::string_view path);
// The path as policy compares it: percent-escapes decoded (all of them, "%2F" too), "\" as "/",
// empty and "." segments dropped, ".." resolved (never above the root). A server may read a path
// more literally than this, never less: what a rule names cannot be reached around it.
std::string NormalizePathForPolicy(std::string_view path);
// The readings of a path policy checks: the normalised one, the same with each segment's
// parameters (";...") cut first (Tomcat and Jetty resolve "/x/..;/admin" to "/admin"), and the
// path as written (a server that decodes nothing); without repeats.
std::vector<std::string> PathViewsForPolicy(std::string_view path);
// The Kubernetes appProtocol of pod `uid`'s port `port`, from the Service ports whose endpoints
// name that pod on that port, lower-cased ("" when none says, or when two say different
// things).
std::string AppProtocolOf(const PolicySnapshot& snapshot, const std::string& uid, uint16_t port);
// The Services that have pod `uid` on `port` among their endpoints, as (namespace, name), sorted.
std::vector<std::pair<std::string, std::string>> ServicesOf(const PolicySnapshot& snapshot,
                                                            const std::string& uid,
                                                            uint16_t port);
// The workload of pod `uid` in the snapshot (nullptr: none); valid as long as the snapshot is.
const shunt::v1::Workload* WorkloadOf(const PolicySnapshot& snapshot, const std::string& uid);
// The workload whose pod has IP `ip` (nullptr: none; hostNetwork pods are not found by their
// node's IP); valid as long as the snapshot is.
const shunt::v1::Workload* WorkloadByIp(const PolicySnapshot& snapshot, const IpKey& ip);
// The Service whose address `vip` and port `port` are, as (namespace, name) (empty: none).
std::pair<std::string, std::string> ServiceAt(const PolicySnapshot& snapshot, const IpKey& vip,
                                              uint16_t port);
// The ports of workload `w` that access policies with L7 rules cover, and those where it serves
// a Service an ApiCostPolicy prices, for the capture (nft syntax: "8081", "9000-9010"; "*":
// every port), sorted, without repeats.
// The ApiCostPolicy that prices Service `name` of `ns`, compiled (null: none, or it does not
// compile; of several for one Service, the first by name). Kept alive by the snapshot's index
// and shared with whoever holds it.
std::shared_ptr<const cost::CostPolicy> CostPolicyOf(const PolicySnapshot& snapshot,
                                                     const std::string& ns,
                                                     const std::string& name);
// The ApiCostPolicies of `snapshot` not in force on `node`, and why (the CR's status, through
// the ACK): one this agent cannot read (fields it does not know: a newer controller's; prices
// that do not compile), one that another policy of its Service shadows (the first by name
// prices it), and one whose Service has meshed pods of this node among its endpoints that are
// not captured with their L7 ports (`captured`, false for all where the relay is off: their
// calls are not read, nobody is charged for them). A policy whose Service has no pod here has
// nothing to do here: in force.
using CapturedFn =
    std::function<bool(const std::string& uid, const std::vector<std::string>& l7_ports)>;
std::vector<NotEnforcedPart> CostPoliciesNotEnforced(const PolicySnapshot& snapshot,
                                                     std::string_view node, bool capture,
                                                     const CapturedFn& captured);
std::vector<std::string> L7PortsOf(const shunt::v1::PolicyBundle& bundle,
                                   const shunt::v1::Workload& w);

// What the last pass produced, for metrics.
struct ServicePolicyStatus {
  std::map<std::string, uint64_t> entries;   // map -> entries written
  std::map<std::string, uint64_t> capacity;  // map -> size
  std::map<std::string, uint64_t> overflow;  // map -> entries that did not fit
  std::map<uint32_t, std::string> service_names;
  std::map<uint32_t, std::string> policy_names;
  uint64_t errors_total = 0;  // passes that ended in an error
  uint64_t policies_not_understood = 0;
  uint64_t version = 0;  // of the snapshot the pass was for (0: none yet)
  // What of that snapshot is not enforced (a failed map write: a node-wide part).
  std::vector<NotEnforcedPart> not_enforced;
};

class ServicePolicyReconciler {
 public:
  struct Options {
    std::string node_name;
    std::string cgroup_root;
    absl::Duration resync = absl::Seconds(1);
    ServicePolicyLimits limits;
    // Whether the capture covers this node's pod `uid` now, with each of `l7_ports` (as
    // L7PortsOf says for the pass's policy) sent to the proxy by its table (--capture; unset:
    // every pod is taken as covered). Asked on every pass for the meshed pods of the node
    // (ServicePolicyLimits uncaptured): until the capture applied a new L7 port, its DENYs stay
    // whole-connection ones at connect().
    std::function<bool(const std::string& uid, const std::vector<std::string>& l7_ports)>
        captured;
    // The fast path reconciler's workload ids (the counters' source dimension): the counters of
    // ids that leave it are deleted. Optional.
    std::function<std::shared_ptr<const WorkloadDirectory>()> directory;
  };
  ServicePolicyReconciler(Options options, PolicyStore& store, ServicePolicyWriter& writer);
  ~ServicePolicyReconciler();

  absl::Status Start();
  void Stop();
  absl::Status ReconcileOnce();
  // One pass for `snapshot` (the fast path's, when it runs this first); `*applied`: the maps
  // now hold its policy (possibly with errors of policies not enforced).
  absl::Status ReconcileOnce(PolicySnapshotPtr snapshot, bool* applied = nullptr);
  absl::Status last_error() const;
  std::shared_ptr<const ServicePolicyStatus> status() const;

 private:

  Options options_;
  PolicyStore& store_;
  ServicePolicyWriter& writer_;
  ReconcileLoop loop_;

  mutable absl::Mutex mu_;
  absl::Status last_error_ ABSL_GUARDED_BY(mu_);
  uint64_t errors_total_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<const ServicePolicyStatus> status_ ABSL_GUARDED_BY(mu_);

  absl::Mutex pass_mu_;
  ServicePolicyIds ids_ ABSL_GUARDED_BY(pass_mu_);
  std::set<uint32_t> known_workloads_ ABSL_GUARDED_BY(pass_mu_);
  // What each service id / policy bit meant after the last pass (to drop the counters of freed
  // or reassigned ones).
  std::map<uint32_t, std::string> known_services_ ABSL_GUARDED_BY(pass_mu_);
  std::map<uint32_t, std::string> known_policies_ ABSL_GUARDED_BY(pass_mu_);
  // What the policy names map holds (written after each pass that applied).
  std::map<std::string, std::string> written_names_ ABSL_GUARDED_BY(pass_mu_);
  // What the maps hold after the last successful pass (empty optional: list them next time).
  std::optional<EncodedServicePolicy> applied_ ABSL_GUARDED_BY(pass_mu_);
  // Pod cgroups of the last pass that applied (a new one may have a source entry made at mkdir).
  std::set<uint64_t> scanned_cgroups_ ABSL_GUARDED_BY(pass_mu_);
  uint64_t applied_version_ ABSL_GUARDED_BY(pass_mu_) = 0;  // snapshot version of applied_
};

}  // namespace shunt::agent
