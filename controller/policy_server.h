// The controller's side of the policy stream (proto/shunt/v1/discovery.proto): one reactor per
// agent on gRPC's callback API, delta responses against what each agent last ACKed, one response
// in flight per agent, NACKs recorded and not retried until the snapshot changes.
//
// Snapshots are immutable sets of resources shared between versions; the delta from a version to
// the current one is computed once and reused by every agent on that version, so 1000 agents on
// the same version cost one diff per change, not 1000.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "grpcpp/server_builder.h"
#include "shunt/v1/discovery.grpc.pb.h"

namespace shunt::controller {

using ResourcePtr = std::shared_ptr<const shunt::v1::Resource>;
using ResourceSet = std::map<std::string, ResourcePtr>;  // by ResourceKeyString

class AgentStream;

class PolicyServer : public shunt::v1::PolicyDiscovery::CallbackService {
 public:
  // `registry` may be null (tests); metrics are then not exported. At most
  // `max_concurrent_pushes` full-state responses, and at most `max_push_bytes` of them (the
  // first always goes), are being written at once; other agents wait their turn (each write
  // holds a serialized copy of the response: 1000 agents connecting at once must not hold 1000
  // copies of a 10 MiB full state). Deltas are not throttled.
  // A full state not written within `push_timeout` while another agent waits for a write slot
  // ends its stream (cancelled; the agent reconnects): a peer that stopped reading, or whose
  // path died, holds no slot others need for longer than that. Zero: no timeout.
  // At most `max_streams` streams are open at once; more are refused (RESOURCE_EXHAUSTED,
  // counted) -- each may hold its first request (up to kPolicyRequestMaxBytes) until its first ACK.
  explicit PolicyServer(prometheus::Registry* registry, int max_concurrent_pushes = 64,
                        size_t max_push_bytes = size_t{128} << 20,
                        absl::Duration push_timeout = absl::Seconds(60), int max_streams = 20000);
  ~PolicyServer() override;

  // Makes `resources` the current snapshot; every agent in sync is sent its delta. `changed_at` is
  // when the source change that led to it was seen (propagation time is measured from there).
  void Publish(ResourceSet resources, absl::Time changed_at);
  void Publish(std::map<std::string, shunt::v1::Resource> resources, absl::Time changed_at);

  // What every server of this service must set: message size limits of the policy stream, and
  // keepalive pings every `keepalive` (a peer that does not answer one within `keepalive` is
  // gone: its stream ends); agents may ping as often as every 500 ms.
  static void ConfigureServer(grpc::ServerBuilder& builder,
                              absl::Duration keepalive = absl::Seconds(10));

  grpc::ServerBidiReactor<shunt::v1::PolicyRequest, shunt::v1::PolicyResponse>* Stream(
      grpc::CallbackServerContext* context) override;

  struct AgentInfo {
    std::string node;
    std::string peer;
    std::string acked_version;  // system_version_info the agent last ACKed
    bool in_sync = false;       // ACKed the current snapshot
    std::string last_nack;      // error detail of the last NACK ("" if none)
  };
  std::vector<AgentInfo> Agents() const;
  std::string current_version() const;
  uint64_t nacks_total() const;
  uint64_t pushes_total() const;
  int peak_full_pushes() const;  // most full-state responses ever written at once
  int full_pushes_in_flight() const;
  uint64_t push_timeouts_total() const;  // streams ended for a write over push_timeout
  uint64_t refused_streams_total() const;  // over max_streams

  // What the agents report they do not enforce of the version they run (docs/controller.md,
  // "What an ACK means"), from each node's newest stream: ResourceKeyString of the policy ->
  // node -> reason; node-wide parts under kNodeWide, those that leave every access policy of
  // the node unenforced under kEveryAccessPolicy. Only open streams count: a node's parts go
  // with its stream. `pending_agents`: reporting agents that have not ACKed the current version
  // (their reports may not cover it yet).
  static constexpr char kNodeWide[] = "";
  static constexpr char kEveryAccessPolicy[] = "*";
  using NotEnforcedMap = std::map<std::string, std::map<std::string, std::string>>;
  struct Enforcement {
    NotEnforcedMap not_enforced;
    size_t pending_agents = 0;
  };
  Enforcement NotEnforced() const;
  // Called when that may have changed (a report, a stream closed, an ACK of the current version),
  // on a gRPC thread, without the server's lock; SetEnforcementListener waits for a call in
  // progress, so that the listener's owner may go once it returns.
  void SetEnforcementListener(std::function<void()> fn);
  // Calls the listener if something changed (AgentStream, after each event).
  void NotifyEnforcementListener();

 private:
  friend class AgentStream;
  struct Version {
    uint64_t id = 0;
    std::string name;  // system_version_info: a hash of every resource version
    std::shared_ptr<const ResourceSet> set;
    absl::Time changed_at;
  };

  void OnRequest(AgentStream* stream, const shunt::v1::PolicyRequest& request);
  void OnClosedLocked(AgentStream* stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A report from `stream` (with an ACK, or alone).
  void SetEnforcementLocked(AgentStream* stream, const shunt::v1::EnforcementReport& report)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnforcementChangedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Cancels the streams whose write has been in flight for longer than push_timeout_.
  void SweepLoop();
  void OnWriteDoneLocked(AgentStream* stream, bool ok) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sends `stream` its next response if it has none in flight and is behind. Requires mu_.
  void MaybeSendLocked(AgentStream* stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<const shunt::v1::PolicyResponse> DeltaLocked(uint64_t from_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  Version current_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Version> history_ ABSL_GUARDED_BY(mu_);  // versions some agent is on
  std::map<uint64_t, std::shared_ptr<const shunt::v1::PolicyResponse>> delta_cache_
      ABSL_GUARDED_BY(mu_);  // from version id -> delta to current_
  size_t full_state_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // of delta_cache_[0] (0: not known yet)
  std::set<AgentStream*> streams_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_nonce_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t nacks_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t pushes_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  const int max_concurrent_pushes_;
  const size_t max_push_bytes_;
  const absl::Duration push_timeout_;
  const size_t max_streams_;
  uint64_t refused_streams_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t push_timeouts_ ABSL_GUARDED_BY(mu_) = 0;
  // Held while the sweeper cancels streams: a stream's OnDone (on a gRPC thread) waits for it,
  // so that no context is cancelled after its call ended. Taken before mu_.
  absl::Mutex cancel_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::thread sweeper_;
  int writes_in_flight_ ABSL_GUARDED_BY(mu_) = 0;      // full-state responses being written
  size_t bytes_in_flight_ ABSL_GUARDED_BY(mu_) = 0;    // their serialized size
  int peak_writes_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<AgentStream*> waiting_ ABSL_GUARDED_BY(mu_);  // behind, waiting for a write slot
  // Fan-out of the current version (debug log): when it was published, writes and ACKs pending.
  absl::Time fanout_start_ ABSL_GUARDED_BY(mu_);
  int fanout_writes_ ABSL_GUARDED_BY(mu_) = 0;
  int fanout_acks_ ABSL_GUARDED_BY(mu_) = 0;
  bool enforcement_changed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex listener_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // held while the listener runs
  std::function<void()> enforcement_listener_ ABSL_GUARDED_BY(listener_mu_);

  // Metrics (null without a registry).
  prometheus::Gauge* connected_ = nullptr;
  prometheus::Counter* pushes_metric_ = nullptr;
  prometheus::Counter* acks_metric_ = nullptr;
  prometheus::Counter* nacks_metric_ = nullptr;
  prometheus::Histogram* propagation_ = nullptr;
  prometheus::Gauge* resources_ = nullptr;
  prometheus::Gauge* full_pushes_metric_ = nullptr;
  prometheus::Counter* push_timeouts_metric_ = nullptr;
  prometheus::Counter* refused_metric_ = nullptr;
  prometheus::Gauge* policies_not_enforced_ = nullptr;
  prometheus::Gauge* nodes_not_enforcing_ = nullptr;
};

}  // namespace shunt::controller
