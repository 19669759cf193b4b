#include "controller/policy_server.h"

#include <algorithm>
#include <thread>

#include "grpcpp/grpcpp.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/resources.h"

namespace shunt::controller {

using shunt::v1::PolicyRequest;
using shunt::v1::PolicyResponse;
using shunt::v1::Resource;

// One agent's stream. Its state is guarded by the server's mutex; gRPC guarantees at most one
// outstanding read and we keep at most one outstanding write.
class AgentStream : public grpc::ServerBidiReactor<PolicyRequest, PolicyResponse> {
 public:
  AgentStream(PolicyServer* server, grpc::CallbackServerContext* context)
      : server_(server), context_(context), peer_(context->peer()) {
    // A verified client certificate (mutual TLS) names the nodes this stream may ask for: its
    // CN and its DNS names (not its IP, URI or e-mail names).
    if (auto auth = context->auth_context(); auth && auth->IsPeerAuthenticated()) {
      for (const char* property : {GRPC_X509_CN_PROPERTY_NAME, GRPC_PEER_DNS_PROPERTY_NAME}) {
        for (const grpc::string_ref& v : auth->FindPropertyValues(property)) {
          if (v.size() > 0) cert_names.emplace_back(v.data(), v.size());
        }
      }
      if (cert_names.empty()) cert_names.push_back("");  // verified, naming no node: none
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the agent closed its side or the connection broke
      FinishOnce(grpc::Status::OK);
      return;
    }
    server_->OnRequest(this, request_);
    server_->NotifyEnforcementListener();
    request_.Clear();  // a first request's versions are kept once, in `initial`
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock l(&server_->mu_);
    writing = false;
    out.reset();
    if (finish_pending) {
      server_->OnWriteDoneLocked(this, false);
      Finish(finish_status);
      return;
    }
    server_->OnWriteDoneLocked(this, ok);
  }

  void OnDone() override {
    // The sweeper may be cancelling this stream's context. On another thread: wait until it is
    // done (the call, and its context, end when OnDone returns). On its own thread (OnDone run
    // inside a TryCancel), the sweeper deletes this stream once it is done with it.
    if (std::this_thread::get_id() != server_->sweeper_.get_id()) {
      absl::MutexLock c(&server_->cancel_mu_);
    }
    PolicyServer* server = server_;
    bool keep = false;
    {
      absl::MutexLock l(&server->mu_);
      server->OnClosedLocked(this);
      if (pinned) {
        done = true;
        keep = true;  // the sweeper deletes it (this is its thread: not before we return)
      }
    }
    server->NotifyEnforcementListener();
    if (!keep) delete this;
  }

  // The sweeper only (cancel_mu_ held): ends the call, as an error, whatever is in flight.
  void Cancel() { context_->TryCancel(); }

  // Finishes now, or after the write in flight completes (Finish must not race a write).
  void FinishOnce(grpc::Status status) {
    absl::MutexLock l(&server_->mu_);
    if (finished) return;
    finished = true;
    if (writing) {
      finish_pending = true;
      finish_status = std::move(status);
    } else {
      Finish(std::move(status));
    }
  }

  std::vector<std::string> cert_names;  // CN and SANs of the client certificate (const)

  // All below: guarded by server_->mu_.
  std::string node;
  const std::string& peer() const { return peer_; }
  bool subscribed = false;
  std::map<std::string, std::string> initial;  // initial_resource_versions of the first request
  bool first_acked = false;
  uint64_t acked_id = 0;  // snapshot version id the agent runs (0: its own initial state)
  std::string acked_name;
  std::string inflight_nonce;
  uint64_t inflight_id = 0;
  uint64_t nacked_id = 0;
  std::string last_nack;
  bool reports_enforcement = false;  // sent a report (older agents do not)
  shunt::v1::EnforcementReport enforcement;  // its last one
  bool writing = false;
  absl::Time write_started;  // of the write in flight
  bool cancelled = false;    // by the sweeper
  absl::Time created = absl::Now();
  bool pinned = false;       // the sweeper is cancelling it: it deletes it if done meanwhile
  bool done = false;         // OnDone ran while pinned
  bool finished = false;
  bool finish_pending = false;
  bool queued = false;          // in the server's waiting_ list
  bool full_in_flight = false;  // the write in flight holds one of the full-state slots
  size_t full_bytes = 0;        // and this many bytes of the full-state budget
  grpc::Status finish_status;
  std::shared_ptr<const PolicyResponse> out;  // kept alive while being written

 private:
  PolicyServer* server_;
  grpc::CallbackServerContext* context_;
  std::string peer_;
  PolicyRequest request_;
};

// A stream that has not named its node by then is ended: it holds a place of --max-streams.
constexpr absl::Duration kSubscribeTimeout = absl::Seconds(30);

// A stream over the server's bound: refused at once.
class RefusedStream : public grpc::ServerBidiReactor<PolicyRequest, PolicyResponse> {
 public:
  explicit RefusedStream(grpc::Status status) { Finish(std::move(status)); }
  void OnDone() override { delete this; }
};

PolicyServer::PolicyServer(prometheus::Registry* registry, int max_concurrent_pushes,
                           size_t max_push_bytes, absl::Duration push_timeout, int max_streams)
    : max_concurrent_pushes_(std::max(1, max_concurrent_pushes)),
      max_push_bytes_(max_push_bytes),
      push_timeout_(push_timeout),
      max_streams_(static_cast<size_t>(std::max(1, max_streams))) {
  current_.set = std::make_shared<ResourceSet>();
  sweeper_ = std::thread([this] { SweepLoop(); });
  if (!registry) return;
  full_pushes_metric_ = &prometheus::BuildGauge()
                             .Name("shunt_controller_full_pushes_in_flight")
                             .Help("Full-state responses being written (each holds a write slot).")
                             .Register(*registry)
                             .Add({});
  refused_metric_ = &prometheus::BuildCounter()
                        .Name("shunt_controller_refused_streams_total")
                        .Help("Policy streams refused: --max-streams were open already.")
                        .Register(*registry)
                        .Add({});
  push_timeouts_metric_ =
      &prometheus::BuildCounter()
           .Name("shunt_controller_push_timeouts_total")
           .Help("Streams ended because a response was not written within --push-timeout-ms.")
           .Register(*registry)
           .Add({});
  connected_ = &prometheus::BuildGauge()
                    .Name("shunt_controller_connected_agents")
                    .Help("Agents with an open policy stream.")
                    .Register(*registry)
                    .Add({});
  pushes_metric_ = &prometheus::BuildCounter()
                        .Name("shunt_controller_pushes_total")
                        .Help("Policy responses sent to agents.")
                        .Register(*registry)
                        .Add({});
  acks_metric_ = &prometheus::BuildCounter()
                      .Name("shunt_controller_acks_total")
                      .Help("Policy responses the agents applied (ACK).")
                      .Register(*registry)
                      .Add({});
  nacks_metric_ = &prometheus::BuildCounter()
                       .Name("shunt_controller_nacks_total")
                       .Help("Policy responses the agents rejected (NACK); see the log for why.")
                       .Register(*registry)
                       .Add({});
  propagation_ =
      &prometheus::BuildHistogram()
           .Name("shunt_controller_propagation_seconds")
           .Help("Time from a source change to an agent's ACK of it.")
           .Register(*registry)
           .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                            0.1, 0.25, 0.5, 1, 2.5, 5, 10});
  resources_ = &prometheus::BuildGauge()
                    .Name("shunt_controller_snapshot_resources")
                    .Help("Resources in the current snapshot.")
                    .Register(*registry)
                    .Add({});
  policies_not_enforced_ =
      &prometheus::BuildGauge()
           .Name("shunt_controller_policies_not_enforced")
           .Help("Policies that some connected agent reports it does not enforce as written "
                 "(their status says where and why).")
           .Register(*registry)
           .Add({});
  nodes_not_enforcing_ =
      &prometheus::BuildGauge()
           .Name("shunt_controller_nodes_not_enforcing")
           .Help("Connected agents that report a part of their policy not enforced (a policy, or "
                 "node-wide: a map full...; the agent's /readyz says what).")
           .Register(*registry)
           .Add({});
}

PolicyServer::~PolicyServer() {
  {
    absl::MutexLock l(&mu_);
    shutting_down_ = true;
  }
  if (sweeper_.joinable()) sweeper_.join();
}

void PolicyServer::SweepLoop() {
  const absl::Duration tick =
      push_timeout_ > absl::ZeroDuration()
          ? std::clamp(push_timeout_ / 4, absl::Milliseconds(10), absl::Seconds(1))
          : absl::Seconds(1);
  while (true) {
    {
      absl::MutexLock l(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutting_down_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stop), tick)) return;
    }
    absl::MutexLock c(&cancel_mu_);
    std::vector<AgentStream*> late;
    std::vector<AgentStream*> silent;  // open for kSubscribeTimeout without a first request
    {
      absl::MutexLock l(&mu_);
      const absl::Time now = absl::Now();
      for (AgentStream* s : streams_) {
        if (!s->subscribed && !s->finished && !s->pinned && now - s->created > kSubscribeTimeout) {
          s->pinned = true;
          silent.push_back(s);
          continue;
        }
        // A full state that is slow only matters while another agent waits for its slot (a
        // dead peer's stream ends by keepalive anyway).
        if (push_timeout_ > absl::ZeroDuration() && s->writing && s->full_in_flight &&
            !waiting_.empty() && !s->cancelled && !s->pinned &&
            now - s->write_started > push_timeout_) {
          s->cancelled = true;
          s->pinned = true;
          late.push_back(s);
          ++push_timeouts_;
          if (push_timeouts_metric_) push_timeouts_metric_->Increment();
          SHUNT_LOG(WARNING) << "agent " << (s->node.empty() ? s->peer() : s->node)
                             << ": a response was not written within "
                             << absl::FormatDuration(push_timeout_)
                             << " (the agent stopped reading, or its path is gone): its stream "
                                "is ended, the agent reconnects";
        }
      }
    }
    // Without mu_ (the reactions it may run take it). A stream cannot end meanwhile on another
    // thread (its OnDone waits for cancel_mu_); on this one, inside a TryCancel, it may.
    for (AgentStream* s : late) {
      {
        absl::MutexLock l(&mu_);
        if (s->done) continue;  // its call is over: no context to cancel
      }
      s->Cancel();
    }
    for (AgentStream* s : silent) {
      s->FinishOnce(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                                 "no PolicyRequest naming a node within 30 s"));
    }
    late.insert(late.end(), silent.begin(), silent.end());
    for (AgentStream* s : late) {
      bool done;
      {
        absl::MutexLock l(&mu_);
        s->pinned = false;
        done = s->done;
      }
      if (done) delete s;
    }
  }
}

void PolicyServer::Publish(std::map<std::string, Resource> resources, absl::Time changed_at) {
  ResourceSet set;
  for (auto& [k, r] : resources) set.emplace(k, std::make_shared<const Resource>(std::move(r)));
  Publish(std::move(set), changed_at);
}

void PolicyServer::Publish(ResourceSet resources, absl::Time changed_at) {
  Fnv1a64 hash;  // of "key=version;" for every resource, in key order
  for (const auto& [k, r] : resources) {
    hash.Update(k);
    hash.Update("=");
    hash.Update(r->version());
    hash.Update(";");
  }
  const std::string name = hash.Hex();
  absl::MutexLock l(&mu_);
  if (name == current_.name) return;  // nothing changed for the agents
  // Both sets are sorted by key: one merge pass, keeping the current pointer of every resource
  // whose version did not change (what deltas and agents already hold).
  auto set = std::make_shared<ResourceSet>();
  auto old = current_.set->begin();
  const auto old_end = current_.set->end();
  for (auto& [k, r] : resources) {
    while (old != old_end && old->first < k) ++old;
    const bool same = old != old_end && old->first == k &&
                      (old->second == r || old->second->version() == r->version());
    set->emplace_hint(set->end(), k, same ? old->second : std::move(r));
  }
  current_ = Version{next_id_++, name, std::move(set), changed_at};
  history_[current_.id] = current_;
  delta_cache_.clear();
  full_state_bytes_ = 0;
  // Forget versions no agent is on any more.
  std::set<uint64_t> used = {current_.id};
  for (AgentStream* s : streams_) {
    used.insert(s->acked_id);
    used.insert(s->inflight_id);
  }
  for (auto it = history_.begin(); it != history_.end();) {
    it = used.count(it->first) ? std::next(it) : history_.erase(it);
  }
  if (resources_) resources_->Set(static_cast<double>(current_.set->size()));
  fanout_start_ = absl::Now();
  fanout_writes_ = fanout_acks_ = 0;
  for (AgentStream* s : streams_) {
    // A stream waiting for a full-state slot gets its turn when one frees (in OnWriteDone):
    // building its response now would be thrown away.
    if (s->queued) continue;
    MaybeSendLocked(s);
    if (s->inflight_id == current_.id && !s->inflight_nonce.empty()) {
      ++fanout_writes_;
      ++fanout_acks_;
    }
  }
  SHUNT_LOG(DEBUG) << "version " << current_.name << ": " << fanout_writes_
                   << " writes started in " << absl::FormatDuration(absl::Now() - fanout_start_);
}

void PolicyServer::ConfigureServer(grpc::ServerBuilder& builder, absl::Duration keepalive) {
  builder.SetMaxReceiveMessageSize(kPolicyRequestMaxBytes);
  builder.SetMaxSendMessageSize(kPolicyResponseMaxBytes);
  if (keepalive <= absl::ZeroDuration()) return;
  const int ms = static_cast<int>(absl::ToInt64Milliseconds(keepalive));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // the stream is idle
  // Agents' own pings (every --controller-keepalive-ms, 10 s by default) are welcome down to one
  // every 500 ms (gRPC's default lets a client ping every 5 minutes); a client pinging faster
  // gets a strike, and after gRPC's default 2 strikes a GOAWAY.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
}

grpc::ServerBidiReactor<PolicyRequest, PolicyResponse>* PolicyServer::Stream(
    grpc::CallbackServerContext* context) {
  absl::MutexLock l(&mu_);
  {
    if (streams_.size() >= max_streams_) {
      ++refused_streams_;
      if (refused_metric_) refused_metric_->Increment();
      SHUNT_LOG_EVERY_N_SEC(WARNING, 10)
          << "policy stream from " << context->peer() << " refused: " << max_streams_
          << " streams are open (--max-streams)";
      return new RefusedStream(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("the controller serves at most ", max_streams_, " streams")));
    }
  }
  auto* stream = new AgentStream(this, context);  // under mu_: the bound holds
  streams_.insert(stream);
  if (connected_) connected_->Increment();
  return stream;
}

void PolicyServer::OnWriteDoneLocked(AgentStream* stream, bool ok) {
  if (stream->inflight_id == current_.id && fanout_writes_ > 0 && --fanout_writes_ == 0) {
    SHUNT_LOG(DEBUG) << "version " << current_.name << ": every write done after "
                     << absl::FormatDuration(absl::Now() - fanout_start_);
  }
  if (stream->full_in_flight) {
    --writes_in_flight_;
    bytes_in_flight_ -= stream->full_bytes;
  }
  stream->full_in_flight = false;
  stream->full_bytes = 0;
  if (full_pushes_metric_) full_pushes_metric_->Set(writes_in_flight_);
  if (ok) MaybeSendLocked(stream);
  while (writes_in_flight_ < max_concurrent_pushes_ && !waiting_.empty()) {
    AgentStream* next = waiting_.front();
    waiting_.pop_front();
    next->queued = false;
    MaybeSendLocked(next);
    if (next->queued) break;  // over the byte budget: wait for the next write to complete
  }
}

void PolicyServer::OnClosedLocked(AgentStream* stream) {
  if (stream->queued) {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), stream));
    stream->queued = false;
  }
  if (streams_.erase(stream) && connected_) connected_->Decrement();
  if (stream->reports_enforcement && stream->enforcement.not_enforced_size() > 0) {
    stream->enforcement.Clear();
    EnforcementChangedLocked();
  }
  if (!stream->node.empty()) SHUNT_LOG(INFO) << "agent " << stream->node << " disconnected";
}

std::shared_ptr<const PolicyResponse> PolicyServer::DeltaLocked(uint64_t from_id) {
  auto cached = delta_cache_.find(from_id);
  if (cached != delta_cache_.end()) return cached->second;
  static const ResourceSet kEmpty;
  const ResourceSet* from = &kEmpty;
  if (auto h = history_.find(from_id); h != history_.end()) from = h->second.set.get();
  auto resp = std::make_shared<PolicyResponse>();
  resp->set_system_version_info(current_.name);
  resp->set_nonce(absl::StrCat("v", current_.id));  // one response per version per stream
  resp->set_full_state(from_id == 0);
  // Both sets are sorted by key: one merge pass. Unchanged resources share their pointer.
  auto a = from->begin();
  for (const auto& [k, r] : *current_.set) {
    for (; a != from->end() && a->first < k; ++a) *resp->add_removed() = a->second->key();
    const bool same = a != from->end() && a->first == k &&
                      (a->second == r || a->second->version() == r->version());
    if (!same) *resp->add_resources() = *r;
    if (a != from->end() && a->first == k) ++a;
  }
  for (; a != from->end(); ++a) *resp->add_removed() = a->second->key();
  delta_cache_[from_id] = resp;
  return resp;
}

void PolicyServer::MaybeSendLocked(AgentStream* s) {
  if (shutting_down_ || s->finished || !s->subscribed || s->writing || !s->inflight_nonce.empty()) {
    return;
  }
  if (current_.id == 0) return;  // no snapshot yet
  if (s->first_acked && (s->acked_id == current_.id || s->nacked_id == current_.id)) return;
  if (!s->first_acked && s->nacked_id == current_.id) return;
  // Only first responses (the full state) are throttled: they are the large ones. Deltas after a
  // change are small and go out at once.
  const bool full = !s->first_acked;
  if (full && writes_in_flight_ >= max_concurrent_pushes_) {
    if (!s->queued) {
      s->queued = true;
      waiting_.push_back(s);
    }
    return;
  }
  std::shared_ptr<const PolicyResponse> resp;
  if (!s->first_acked) {
    if (s->nacked_id == current_.id) return;
    if (s->initial.empty()) {
      resp = DeltaLocked(0);
    } else {
      // The agent kept resources across a restart: send only what differs from them.
      auto r = std::make_shared<PolicyResponse>();
      r->set_system_version_info(current_.name);
      r->set_nonce(absl::StrCat("v", current_.id));
      r->set_full_state(true);
      for (const auto& [k, res] : *current_.set) {
        auto it = s->initial.find(k);
        if (it == s->initial.end() || it->second != res->version()) *r->add_resources() = *res;
      }
      for (const auto& [k, version] : s->initial) {
        if (!current_.set->count(k)) {
          // Rebuild the key from its string form: KIND/namespace/name.
          shunt::v1::ResourceKey key;
          size_t a = k.find('/'), b = k.find('/', a == std::string::npos ? a : a + 1);
          shunt::v1::ResourceKey::Kind kind;
          int number = 0;
          if (a == std::string::npos || b == std::string::npos) continue;
          if (!shunt::v1::ResourceKey::Kind_Parse(k.substr(0, a), &kind)) {
            // A kind the agent had no name for (ResourceKeyString writes its number).
            if (!absl::SimpleAtoi(k.substr(0, a), &number)) continue;
            kind = static_cast<shunt::v1::ResourceKey::Kind>(number);
          }
          key.set_kind(kind);
          key.set_namespace_(k.substr(a + 1, b - a - 1));
          key.set_name(k.substr(b + 1));
          *r->add_removed() = key;
        }
      }
      resp = r;
    }
  } else {
    if (s->acked_id == current_.id || s->nacked_id == current_.id) return;
    resp = DeltaLocked(s->acked_id);
  }
  size_t bytes = 0;
  if (full) {
    auto cached = delta_cache_.find(0);
    const bool shared = cached != delta_cache_.end() && cached->second == resp;
    if (shared && full_state_bytes_ == 0) full_state_bytes_ = resp->ByteSizeLong();
    bytes = shared ? full_state_bytes_ : resp->ByteSizeLong();
    if (writes_in_flight_ > 0 && bytes_in_flight_ + bytes > max_push_bytes_) {
      if (!s->queued) {  // its turn comes when a full-state write completes
        s->queued = true;
        waiting_.push_back(s);
      }
      return;
    }
  }
  s->inflight_nonce = resp->nonce();
  s->inflight_id = current_.id;
  s->writing = true;
  s->full_in_flight = full;
  s->full_bytes = bytes;
  if (full) {
    ++writes_in_flight_;
    bytes_in_flight_ += bytes;
    peak_writes_in_flight_ = std::max(peak_writes_in_flight_, writes_in_flight_);
    if (full_pushes_metric_) full_pushes_metric_->Set(writes_in_flight_);
  }
  s->write_started = absl::Now();
  s->out = resp;
  ++pushes_;
  if (pushes_metric_) pushes_metric_->Increment();
  s->StartWrite(resp.get());
}

void PolicyServer::OnRequest(AgentStream* s, const PolicyRequest& req) {
  absl::MutexLock l(&mu_);
  if (!s->subscribed) {
    if (req.node().empty()) {
      mu_.Unlock();
      s->FinishOnce(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                 "the first PolicyRequest must name the node"));
      mu_.Lock();
      return;
    }
    if (!s->cert_names.empty() && std::find(s->cert_names.begin(), s->cert_names.end(),
                                            req.node()) == s->cert_names.end()) {
      const std::string names = absl::StrJoin(s->cert_names, ", ");
      SHUNT_LOG_EVERY_N_SEC(WARNING, 10)
          << "policy stream from " << s->peer() << " refused: it asks for node " << req.node()
          << ", its client certificate is for " << names;
      mu_.Unlock();
      s->FinishOnce(grpc::Status(
          grpc::StatusCode::PERMISSION_DENIED,
          absl::StrCat("node ", req.node(), " is not a name of this client certificate (", names,
                       "): a certificate gets the policy of its own node only")));
      mu_.Lock();
      return;
    }
    s->node = req.node();
    s->initial.insert(req.initial_resource_versions().begin(),
                      req.initial_resource_versions().end());
    s->subscribed = true;
    SHUNT_LOG(INFO) << "agent " << s->node << " (" << s->peer() << ", " << req.agent_version()
                    << ") subscribed with " << s->initial.size() << " resources held";
    MaybeSendLocked(s);
    return;
  }
  if (req.response_nonce().empty()) {
    // A report alone: what the agent enforces of the version it runs changed.
    if (req.has_enforcement() && s->first_acked) SetEnforcementLocked(s, req.enforcement());
    return;
  }
  if (req.response_nonce() != s->inflight_nonce) return;  // stale
  s->inflight_nonce.clear();
  if (req.has_error_detail()) {
    ++nacks_;
    if (nacks_metric_) nacks_metric_->Increment();
    s->nacked_id = s->inflight_id;
    s->last_nack = req.error_detail().message();
    auto h = history_.find(s->inflight_id);
    SHUNT_LOG(WARNING) << "agent " << s->node << " rejected policy version "
                       << (h != history_.end() ? h->second.name : "?")
                       << " (NACK): " << req.error_detail().message() << "; it stays on "
                       << (req.version_info().empty() ? "its previous state" : req.version_info());
  } else {
    if (!s->first_acked) std::map<std::string, std::string>().swap(s->initial);  // done with it
    s->first_acked = true;
    s->acked_id = s->inflight_id;
    s->acked_name = req.version_info();
    s->last_nack.clear();
    if (req.has_enforcement()) SetEnforcementLocked(s, req.enforcement());
    if (acks_metric_) acks_metric_->Increment();
    // A reporting agent that reached the current version: what it reports now covers it.
    if (s->reports_enforcement && s->acked_id == current_.id) enforcement_changed_ = true;
    if (s->acked_id == current_.id && fanout_acks_ > 0 && --fanout_acks_ == 0) {
      SHUNT_LOG(DEBUG) << "version " << current_.name << ": every ACK in after "
                       << absl::FormatDuration(absl::Now() - fanout_start_);
    }
    auto h = history_.find(s->acked_id);
    if (propagation_ && h != history_.end()) {
      propagation_->Observe(absl::ToDoubleSeconds(absl::Now() - h->second.changed_at));
    }
  }
  MaybeSendLocked(s);
}

void PolicyServer::SetEnforcementLocked(AgentStream* s, const shunt::v1::EnforcementReport& r) {
  const bool was = s->reports_enforcement;
  s->reports_enforcement = true;
  if (was && s->enforcement.SerializeAsString() == r.SerializeAsString()) return;
  if (r.not_enforced_size() > 0 || s->enforcement.not_enforced_size() > 0) {
    SHUNT_LOG(INFO) << "agent " << s->node << " enforces "
                    << (r.not_enforced_size() == 0
                            ? std::string("all of its policy")
                            : absl::StrCat("its policy but ", r.not_enforced_size(), " parts"));
  }
  s->enforcement = r;
  EnforcementChangedLocked();
}

namespace {

// The report that speaks for each node: its newest subscribed stream that reports (an older one
// may linger, half-open, until its keepalive ends it).
template <typename Streams>
std::map<std::string, const AgentStream*> ReportingStreams(const Streams& streams) {
  std::map<std::string, const AgentStream*> out;
  for (const AgentStream* st : streams) {
    if (!st->subscribed || !st->reports_enforcement) continue;
    const AgentStream*& cur = out[st->node];
    if (!cur || st->created > cur->created) cur = st;
  }
  return out;
}

std::string NotEnforcedKey(const shunt::v1::NotEnforced& n) {
  if (n.key().kind() != shunt::v1::ResourceKey::KIND_UNSPECIFIED) return ResourceKeyString(n.key());
  return n.every_access_policy() ? PolicyServer::kEveryAccessPolicy : PolicyServer::kNodeWide;
}

}  // namespace

void PolicyServer::EnforcementChangedLocked() {
  if (policies_not_enforced_ || nodes_not_enforcing_) {
    std::set<std::string> policies, nodes;
    for (const auto& [node, st] : ReportingStreams(streams_)) {
      for (const auto& n : st->enforcement.not_enforced()) {
        nodes.insert(node);
        if (n.key().kind() != shunt::v1::ResourceKey::KIND_UNSPECIFIED) {
          policies.insert(ResourceKeyString(n.key()));
        }
      }
    }
    if (policies_not_enforced_) policies_not_enforced_->Set(static_cast<double>(policies.size()));
    if (nodes_not_enforcing_) nodes_not_enforcing_->Set(static_cast<double>(nodes.size()));
  }
  enforcement_changed_ = true;
}

void PolicyServer::NotifyEnforcementListener() {
  absl::MutexLock listener(&listener_mu_);
  {
    absl::MutexLock l(&mu_);
    if (!enforcement_changed_) return;
    enforcement_changed_ = false;
  }
  if (enforcement_listener_) enforcement_listener_();
}

PolicyServer::Enforcement PolicyServer::NotEnforced() const {
  absl::MutexLock l(&mu_);
  Enforcement out;
  for (const auto& [node, st] : ReportingStreams(streams_)) {
    if (st->acked_id != current_.id) ++out.pending_agents;
    for (const auto& n : st->enforcement.not_enforced()) {
      std::string& reason = out.not_enforced[NotEnforcedKey(n)][node];
      if (reason.find(n.reason()) == std::string::npos) {
        absl::StrAppend(&reason, reason.empty() ? "" : "; ", n.reason());
      }
    }
  }
  return out;
}

void PolicyServer::SetEnforcementListener(std::function<void()> fn) {
  absl::MutexLock l(&listener_mu_);
  enforcement_listener_ = std::move(fn);
}

std::vector<PolicyServer::AgentInfo> PolicyServer::Agents() const {
  absl::MutexLock l(&mu_);
  std::vector<AgentInfo> out;
  for (const AgentStream* s : streams_) {
    if (!s->subscribed) continue;
    out.push_back({s->node, s->peer(), s->acked_name, s->first_acked && s->acked_id == current_.id,
                   s->last_nack});
  }
  return out;
}

std::string PolicyServer::current_version() const {
  absl::MutexLock l(&mu_);
  return current_.name;
}

uint64_t PolicyServer::nacks_total() const {
  absl::MutexLock l(&mu_);
  return nacks_;
}

int PolicyServer::peak_full_pushes() const {
  absl::MutexLock l(&mu_);
  return peak_writes_in_flight_;
}

int PolicyServer::full_pushes_in_flight() const {
  absl::MutexLock l(&mu_);
  return writes_in_flight_;
}

uint64_t PolicyServer::push_timeouts_total() const {
  absl::MutexLock l(&mu_);
  return push_timeouts_;
}

uint64_t PolicyServer::refused_streams_total() const {
  absl::MutexLock l(&mu_);
  return refused_streams_;
}

uint64_t PolicyServer::pushes_total() const {
  absl::MutexLock l(&mu_);
  return pushes_;
}

}  // namespace shunt::controller
