#include "agent/proxy/tcp_relay.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/capture/pod_capture.h"
#include "agent/proxy/sniff.h"
#include "common/errno_status.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace shunt::agent {

// Side 0: the accepted (downstream) socket; side 1: the upstream one. pipe[d] carries direction
// d, from fd[d] to fd[1 - d].
struct RelayLoop::Conn {
  UniqueFd fd[2];
  UniqueFd pipe_r[2], pipe_w[2];
  size_t pending[2] = {0, 0};     // bytes in pipe[d]
  bool eof[2] = {false, false};   // fd[d] ended its stream
  bool shut[2] = {false, false};  // direction d is done (shutdown(fd[1 - d], SHUT_WR) sent)
  bool connecting = true;
  uint32_t events[2] = {0, 0};  // registered with epoll
  bool in_epoll[2] = {false, false};
  bool hup[2] = {false, false};  // a hang-up was seen (level-triggered: it cannot be masked)
  // fd[d] may have bytes (or its end) to read: set by epoll's report, cleared when a read found
  // its receive queue empty (EAGAIN, or fewer bytes than asked). Epoll is level-triggered, so a
  // read skipped on false costs at most one more epoll_wait, never a lost wake-up; it saves the
  // read that would fail with EAGAIN after each message (half the relay's syscalls for small
  // request/response exchanges).
  bool readable[2] = {true, true};
  bool closed = false;  // freed after the current batch of events
  // fd[x] was reset (or failed otherwise): nothing more is written to it, and what it sent
  // before its reset is still read and passed on (a server's last response before it reset, as
  // its client would have had it directly); then the other side is reset (FinishAbort).
  bool aborted[2] = {false, false};
  bool abort_waiting = false;        // ... waiting for the other side to send what it was given
  std::string tuples[2];             // the client's 4-tuple, the upstream's (TupleKey)
  uint64_t group = 0;                // its listener's
  sockaddr_storage peer{}, local{};  // the client, where it connected
  std::shared_ptr<const RelayDecide> decide;  // its listener's (Recheck)
  absl::Time connect_deadline;
  absl::Time last_activity;
  absl::Time half_closed_at = absl::InfiniteFuture();
  struct End {
    Conn* conn;
    int side;
  } ends[2];

  // Read in user space (an L7 port): sniffing its first bytes, then through its session; kRaw:
  // what was read and not passed on yet, written out before the kernel moves the rest.
  enum class Mode : uint8_t { kSplice, kSniff, kSession, kRaw } mode = Mode::kSplice;
  bool l7 = false;  // decided as a connection to an L7 port (Recheck: viewed as it is read now)
  std::unique_ptr<L7Session> session;
  std::string unsent[2];  // read from fd[d], not taken yet
  bool told_closed[2] = {false, false};
  // Its client is gone and its session reads the server on for a priced response's usage
  // (LoseClient): nothing more is read from or written to fd[0].
  bool client_gone = false;
  absl::Time gone_deadline;
  uint64_t gone_read = 0;  // bytes read from the server since
  bool drain_counted = false;  // its end is in usage_drains_complete, _cut or _broken
  L7Authorize authorize;
  ExchangeSink exchanges;
  // What its session's sink calls: replaced by a policy change's decision (RecheckOpen).
  std::shared_ptr<ExchangeSink> live_exchanges;
  ObserverFactory observe;
  std::function<void()> opaque_refused;
  std::shared_ptr<ConnectionCounters> l4;  // its decision's (null: none)
  bool opaque_allow = true;
  RelayDecision::Protocol protocol = RelayDecision::Protocol::kSniff;
  bool http2 = false;   // its session is HTTP/2
  size_t buffered = 0;  // as last accounted in its group
};

struct RelayLoop::Counters {
  std::atomic<uint64_t> accepted{0}, refused{0}, over_capacity{0}, over_pod_budget{0},
      upstream_failed{0}, connect_timeouts{0}, half_close_timeouts{0}, idle_timeouts{0}, resets{0},
      policy_closed{0}, active{0}, bytes_to_upstream{0}, bytes_to_downstream{0}, buffered{0},
      buffer_budget_waits{0}, http1_connections{0}, http2_connections{0}, pipes_in_use{0},
      pipes_pooled{0}, pipes_created{0}, pipe_failures{0}, opaque_l7{0}, opaque_refused{0},
      empty_l7{0}, not_http{0}, tunnels{0}, http_requests{0}, http_denied{0}, http_refused{0},
      http_bad_responses{0}, usage_drains{0}, usage_drains_complete{0}, usage_drains_cut{0},
      usage_drains_broken{0};
};

struct RelayShared {
  RelayLoop::Counters counters;
  mutable absl::Mutex mu;
  std::map<uint64_t, size_t> active_by_group ABSL_GUARDED_BY(mu);
  absl::Mutex tuples_mu;
  std::set<std::string> tuples ABSL_GUARDED_BY(tuples_mu);
};

namespace {

constexpr uint64_t kWakeTag = 0;      // epoll data of the eventfd
constexpr uint64_t kListenerTag = 1;  // listeners: (fd << 1) | 1
constexpr size_t kChunk = 1 << 20;    // a pipe of 1 MiB (F_SETPIPE_SZ), moved per splice
// A drained HTTP/1.1 connection idle this long is closed.
constexpr absl::Duration kDrainIdleGrace = absl::Seconds(1);

uint16_t PortOf(const sockaddr_storage& ss) {
  return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<const sockaddr_in*>(&ss)->sin_port
                                       : reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port);
}

void SetPort(sockaddr_storage& ss, uint16_t port) {
  if (ss.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&ss)->sin_port = htons(port);
  } else {
    reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port = htons(port);
  }
}

// "source address:port > destination address:port", as bytes.
std::string TupleKey(const sockaddr_storage& from, const sockaddr_storage& to) {
  auto part = [](const sockaddr_storage& ss) {
    if (ss.ss_family == AF_INET) {
      const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
      return std::string(reinterpret_cast<const char*>(&a->sin_addr), 4) +
             std::string(reinterpret_cast<const char*>(&a->sin_port), 2);
    }
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    return std::string(reinterpret_cast<const char*>(&a->sin6_addr), 16) +
           std::string(reinterpret_cast<const char*>(&a->sin6_port), 2);
  };
  return part(from) + ">" + part(to);
}

// TCP keepalive and TCP_USER_TIMEOUT of a relayed socket (RelayOptions).
void SetLiveness(int fd, const RelayOptions& o) {
  constexpr int64_t kMaxKeepaliveSeconds = 32767;  // MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL
  const int secs =
      static_cast<int>(std::min(absl::ToInt64Seconds(o.keepalive_idle), kMaxKeepaliveSeconds));
  bool ok = true;
  if (secs > 0) {
    const int one = 1;
    const int interval = static_cast<int>(
        std::clamp<int64_t>(absl::ToInt64Seconds(o.keepalive_interval), 1, kMaxKeepaliveSeconds));
    const int count = std::clamp(o.keepalive_count, 1, 127);  // MAX_TCP_KEEPCNT
    ok = setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) == 0 &&
         setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &secs, sizeof(secs)) == 0 &&
         setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval)) == 0 &&
         setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count)) == 0;
  }
  const unsigned ms = static_cast<unsigned>(absl::ToInt64Milliseconds(o.user_timeout));
  if (ms > 0) ok = setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms)) == 0 && ok;
  if (!ok) {
    SHUNT_LOG_EVERY_N_SEC(WARNING, 60) << ErrnoStatus(errno, "relay: TCP keepalive options");
  }
}

// Closes with a reset: what a peer that went away abruptly gets from the kernel too.
void ResetFd(UniqueFd& fd) {
  if (!fd.valid()) return;
  linger l{1, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  fd.Reset();
}

}  // namespace

TcpRelay::TcpRelay() : shared_(std::make_unique<RelayShared>()) {}

TcpRelay::~TcpRelay() { Stop(); }

absl::StatusOr<std::unique_ptr<TcpRelay>> TcpRelay::Start(RelayOptions options) {
  std::unique_ptr<TcpRelay> r(new TcpRelay());
  const size_t n = std::max<size_t>(1, options.loops);
  // Each loop its share of a pod's buffer budget and of the pipe pool.
  RelayOptions each = options;
  // A share is at least a few pipes' worth (or the whole budget, if smaller): a pod whose
  // connections the kernel gave to one loop is not starved on a node of many CPUs.
  each.max_buffered_per_group =
      std::max<size_t>(options.max_buffered_per_group / n,
                       std::min<size_t>(options.max_buffered_per_group, 4 * kChunk));
  each.pipe_pool = options.pipe_pool / n;
  for (size_t i = 0; i < n; ++i) {
    auto loop = RelayLoop::Start(each, r->shared_.get());
    if (!loop.ok()) return loop.status();
    r->loops_.push_back(std::move(*loop));
  }
  return r;
}

void TcpRelay::Stop() {
  for (auto& l : loops_) l->RequestStop();  // all at once, then each joined
  for (auto& l : loops_) l->Stop();
}

absl::Status TcpRelay::AddListener(UniqueFd listener, RelayDecide decide, uint64_t group) {
  if (!listener.valid()) return absl::InvalidArgumentError("relay: no listener");
  const int fd = listener.get();
  // One descriptor per loop (of one socket: its wake-ups go to one waiting loop at a time).
  std::vector<UniqueFd> fds;
  fds.push_back(std::move(listener));
  for (size_t i = 1; i < loops_.size(); ++i) {
    UniqueFd dup(fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!dup.valid()) return ErrnoStatus(errno, "relay: dup a listener for a loop");
    fds.push_back(std::move(dup));
  }
  auto shared_decide = std::make_shared<const RelayDecide>(std::move(decide));
  std::vector<int> raw;
  for (auto& f : fds) raw.push_back(f.get());
  {
    absl::MutexLock l(&mu_);
    listener_fds_[fd] = raw;
  }
  for (size_t i = 0; i < loops_.size(); ++i) {
    RETURN_IF_ERROR(loops_[i]->AddListener(std::move(fds[i]), shared_decide, group));
  }
  return absl::OkStatus();
}

void TcpRelay::RemoveListener(int listener_fd) {
  std::vector<int> fds;
  {
    absl::MutexLock l(&mu_);
    auto it = listener_fds_.find(listener_fd);
    if (it == listener_fds_.end()) return;
    fds = std::move(it->second);
    listener_fds_.erase(it);
  }
  std::vector<uint64_t> tickets;
  for (size_t i = 0; i < loops_.size() && i < fds.size(); ++i) {
    tickets.push_back(loops_[i]->RemoveListener(fds[i]));
  }
  // Synchronous: a stopping agent that surrendered its listeners then waits for stats().active
  // to fall to 0; a connection a loop accepts after that check would be reset at its exit.
  for (size_t i = 0; i < tickets.size(); ++i) loops_[i]->WaitRemoved(tickets[i], absl::Seconds(5));
}

void TcpRelay::Recheck() {
  for (auto& l : loops_) l->Recheck();
}

void TcpRelay::Drain() {
  for (auto& l : loops_) l->Drain();
}

size_t TcpRelay::ActiveIn(uint64_t group) const {
  absl::MutexLock l(&shared_->mu);
  auto it = shared_->active_by_group.find(group);
  return it == shared_->active_by_group.end() ? 0 : it->second;
}

absl::StatusOr<std::unique_ptr<RelayLoop>> RelayLoop::Start(RelayOptions options,
                                                            RelayShared* shared) {
  std::unique_ptr<RelayLoop> r(new RelayLoop(options, shared));
  r->epoll_ = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
  if (!r->epoll_.valid()) return ErrnoStatus(errno, "relay: epoll_create1");
  r->wake_ = UniqueFd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!r->wake_.valid()) return ErrnoStatus(errno, "relay: eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  if (epoll_ctl(r->epoll_.get(), EPOLL_CTL_ADD, r->wake_.get(), &ev) != 0) {
    return ErrnoStatus(errno, "relay: epoll_ctl");
  }
  r->thread_ = std::thread([p = r.get()] { p->Loop(); });
  return r;
}

RelayLoop::RelayLoop(RelayOptions options, RelayShared* shared)
    : options_(options), shared_(shared), counters_(shared->counters) {}

RelayLoop::~RelayLoop() { Stop(); }

void RelayLoop::RequestStop() {
  stop_ = true;
  const uint64_t one = 1;
  if (write(wake_.get(), &one, sizeof(one)) < 0) {
  }
}

void RelayLoop::Stop() {
  RequestStop();
  if (thread_.joinable()) thread_.join();
}

absl::Status RelayLoop::AddListener(UniqueFd listener, std::shared_ptr<const RelayDecide> decide,
                                    uint64_t group) {
  if (!listener.valid()) return absl::InvalidArgumentError("relay: no listener");
  const int fd = listener.get();
  {
    absl::MutexLock l(&mu_);
    pending_add_[fd] =
        std::make_shared<Listener>(Listener{std::move(listener), std::move(decide), group});
  }
  const uint64_t one = 1;
  if (write(wake_.get(), &one, sizeof(one)) < 0) {
  }
  return absl::OkStatus();
}

uint64_t RelayLoop::RemoveListener(int listener_fd) {
  uint64_t ticket;
  {
    absl::MutexLock l(&mu_);
    pending_remove_.push_back(listener_fd);
    ticket = ++removal_ticket_;
  }
  const uint64_t one = 1;
  if (write(wake_.get(), &one, sizeof(one)) < 0) {
  }
  return ticket;
}

void RelayLoop::WaitRemoved(uint64_t ticket, absl::Duration timeout) {
  absl::MutexLock l(&mu_);
  auto done = [this, ticket]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return removals_done_ >= ticket || stop_.load();
  };
  mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
}

void RelayLoop::Recheck() {
  recheck_ = true;
  const uint64_t one = 1;
  if (write(wake_.get(), &one, sizeof(one)) < 0) {
  }
}

void RelayLoop::Drain() {
  drain_ = true;
  const uint64_t one = 1;
  if (write(wake_.get(), &one, sizeof(one)) < 0) {
  }
}

void RelayLoop::RecheckOpen() {
  std::vector<Conn*> denied;
  for (auto& [p, c] : conns_) {
    if (!c->decide) continue;
    RelayDecision d = (*c->decide)(c->peer, c->local, RelayCheck::kPolicyChange);
    // Read as HTTP, a connection is admitted as its source is (its requests are decided one by
    // one); read as opaque bytes, L7 rules at its port fail closed.
    const bool as_http = c->mode == Conn::Mode::kSniff || c->mode == Conn::Mode::kSession;
    const bool ok = d.allow && (as_http || !d.l7 || d.opaque_allow);
    if (!ok) {
      denied.push_back(p);
      continue;
    }
    c->opaque_allow = d.opaque_allow;
    if (c->session) c->session->SetTunnelsAllowed(d.opaque_allow);
    c->l7 = c->l7 || d.l7;
    if (d.authorize) {
      c->authorize = d.authorize;
      if (c->session) c->session->SetAuthorize(d.authorize);
    }
    if (as_http) {
      // What its requests are recorded and priced by from now on (an ApiCostPolicy added,
      // changed or removed applies to the next request of an open connection).
      c->observe = d.observe;
      c->exchanges = d.exchanges;
      if (c->session) c->session->observe = d.observe;
      if (c->live_exchanges) *c->live_exchanges = d.exchanges;
    }
  }
  for (Conn* c : denied) {
    ++counters_.policy_closed;
    Close(c, /*reset=*/true);
  }
  if (!denied.empty()) {
    SHUNT_LOG(INFO) << "relay: " << denied.size() << " open connection(s) closed: a policy change "
                    << "denies them";
  }
}

void RelayLoop::GroupAdded(uint64_t group) {
  absl::MutexLock l(&shared_->mu);
  ++shared_->active_by_group[group];
}

void RelayLoop::GroupRemoved(uint64_t group) {
  absl::MutexLock l(&shared_->mu);
  auto g = shared_->active_by_group.find(group);
  if (g != shared_->active_by_group.end() && --g->second == 0) shared_->active_by_group.erase(g);
}

bool RelayLoop::GroupFull(uint64_t group) const {
  absl::MutexLock l(&shared_->mu);
  auto g = shared_->active_by_group.find(group);
  return g != shared_->active_by_group.end() && g->second >= options_.max_connections_per_group;
}

bool RelayLoop::TakeTuple(const std::string& key) {
  absl::MutexLock l(&shared_->tuples_mu);
  return shared_->tuples.insert(key).second;
}

void RelayLoop::FreeTuple(const std::string& key) {
  absl::MutexLock l(&shared_->tuples_mu);
  shared_->tuples.erase(key);
}

RelayStats TcpRelay::stats() const {
  RelayStats s;
  const RelayLoop::Counters& c = shared_->counters;
  s.accepted = c.accepted.load();
  s.refused = c.refused.load();
  s.over_capacity = c.over_capacity.load();
  s.over_pod_budget = c.over_pod_budget.load();
  s.upstream_failed = c.upstream_failed.load();
  s.connect_timeouts = c.connect_timeouts.load();
  s.half_close_timeouts = c.half_close_timeouts.load();
  s.idle_timeouts = c.idle_timeouts.load();
  s.resets = c.resets.load();
  s.policy_closed = c.policy_closed.load();
  s.active = c.active.load();
  s.bytes_to_upstream = c.bytes_to_upstream.load();
  s.bytes_to_downstream = c.bytes_to_downstream.load();
  s.buffered = c.buffered.load();
  s.buffer_budget_waits = c.buffer_budget_waits.load();
  s.http1_connections = c.http1_connections.load();
  s.http2_connections = c.http2_connections.load();
  s.opaque_l7 = c.opaque_l7.load();
  s.opaque_refused = c.opaque_refused.load();
  s.empty_l7 = c.empty_l7.load();
  s.not_http = c.not_http.load();
  s.tunnels = c.tunnels.load();
  s.http_requests = c.http_requests.load();
  s.http_denied = c.http_denied.load();
  s.http_refused = c.http_refused.load();
  s.http_bad_responses = c.http_bad_responses.load();
  s.usage_drains = c.usage_drains.load();
  s.usage_drains_complete = c.usage_drains_complete.load();
  s.usage_drains_cut = c.usage_drains_cut.load();
  s.usage_drains_broken = c.usage_drains_broken.load();
  s.pipes_in_use = c.pipes_in_use.load();
  s.pipes_pooled = c.pipes_pooled.load();
  s.pipes_created = c.pipes_created.load();
  s.pipe_failures = c.pipe_failures.load();
  for (const auto& l : loops_) {
    s.accepted_by_loop.push_back(l->accepted());
    s.active_by_loop.push_back(l->active());
  }
  return s;
}

void RelayLoop::Loop() {
  epoll_event events[256];
  absl::Time last_sweep = absl::Now();
  while (!stop_.load()) {
    const int n = epoll_wait(epoll_.get(), events, 256, again_.empty() ? 1000 : 0);
    if (n < 0 && errno != EINTR) {
      SHUNT_LOG_EVERY_N_SEC(ERROR, 10) << ErrnoStatus(errno, "relay: epoll_wait");
      continue;
    }
    for (int i = 0; i < n; ++i) {
      const uint64_t tag = events[i].data.u64;
      if (tag == kWakeTag) {
        uint64_t v;
        while (read(wake_.get(), &v, sizeof(v)) > 0) {
        }
        std::vector<int> removed;
        uint64_t removals_upto = 0;
        {
          absl::MutexLock l(&mu_);
          for (auto& [fd, lst] : pending_add_) {
            epoll_event ev{};
            ev.events = EPOLLIN | EPOLLEXCLUSIVE;  // one loop woken per arrival
            ev.data.u64 = (static_cast<uint64_t>(fd) << 1) | kListenerTag;
            if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) == 0) {
              live_listeners_[fd] = lst;
            } else {
              SHUNT_LOG(ERROR) << ErrnoStatus(errno, "relay: add a listener");
            }
          }
          pending_add_.clear();
          removed.swap(pending_remove_);
          removals_upto = removal_ticket_;
        }
        for (int fd : removed) {
          epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
          // What waits in its queue is taken now: with EPOLLEXCLUSIVE the kernel may have woken
          // only this loop for it (another process's epoll on the same socket, a successor
          // agent's, was not), and once out of this epoll no one would be told of it until the
          // next arrival; if this was the socket's last descriptor, it would be reset.
          Accept(fd, /*batch=*/1 << 16);
          live_listeners_.erase(fd);  // closes it
          paused_listeners_.erase(std::remove_if(paused_listeners_.begin(), paused_listeners_.end(),
                                                 [fd](const auto& p) { return p.first == fd; }),
                                  paused_listeners_.end());
        }
        if (!removed.empty()) {
          absl::MutexLock l(&mu_);
          removals_done_ = std::max(removals_done_, removals_upto);
        }
      } else if (tag & kListenerTag) {
        Accept(static_cast<int>(tag >> 1));
      } else {
        auto* end = reinterpret_cast<Conn::End*>(events[i].data.ptr);
        OnEvent(end->conn, end->side, events[i].events);
      }
    }
    if (recheck_.exchange(false)) RecheckOpen();
    for (std::vector<Conn*> again = std::exchange(again_, {}); Conn * c : again) {
      if (!conns_.count(c) || c->closed) continue;  // (freed only after the batch)
      if (c->mode == Conn::Mode::kSplice) {
        OnEvent(c, 0, 0);
      } else if (PumpUser(c)) {
        if (c->mode == Conn::Mode::kSplice) {
          OnEvent(c, 0, 0);
        } else {
          InterestUser(c);
          Account(c);
        }
      }
    }
    if (drain_.exchange(false)) {
      draining_ = true;
      std::vector<Conn*> sessions;
      for (auto& [p, c] : conns_) {
        if (c->session) sessions.push_back(p);
      }
      for (Conn* c : sessions) {
        c->session->Drain();
        if (PumpUser(c) && c->mode != Conn::Mode::kSplice) InterestUser(c);
        Account(c);
      }
    }
    closed_.clear();
    const absl::Time now = absl::Now();
    for (auto it = paused_listeners_.begin(); it != paused_listeners_.end();) {
      if (it->second > now) {
        ++it;
        continue;
      }
      if (live_listeners_.count(it->first)) {
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLEXCLUSIVE;
        ev.data.u64 = (static_cast<uint64_t>(it->first) << 1) | kListenerTag;
        epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, it->first, &ev);
      }
      it = paused_listeners_.erase(it);
    }
    if (now - last_sweep >= absl::Seconds(1)) {
      Sweep(now);
      last_sweep = now;
    }
  }
  for (auto& [p, c] : conns_) {
    if (c->l4 && !c->connecting) c->l4->closed.fetch_add(1, std::memory_order_relaxed);
    ResetFd(c->fd[0]);
    ResetFd(c->fd[1]);
    --counters_.active;
    --active_here_;
    GroupRemoved(c->group);
    FreeTuple(c->tuples[0]);
    FreeTuple(c->tuples[1]);
  }
  conns_.clear();
  live_listeners_.clear();
}

void RelayLoop::Accept(int listener_fd, int batch) {
  auto it = live_listeners_.find(listener_fd);
  if (it == live_listeners_.end()) return;
  std::shared_ptr<Listener> lst = it->second;
  for (int i = 0; i < batch; ++i) {  // then the others' turn
    UniqueFd down(accept4(listener_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!down.valid()) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: the listener stays readable. Not watched for a while (else the
        // loop spins on it); the connections wait in its backlog.
        SHUNT_LOG_EVERY_N_SEC(WARNING, 10) << ErrnoStatus(errno, "relay: accept") << ": paused";
        // The pooled pipes' descriptors are worth more as connections now.
        counters_.pipes_pooled -= pipe_pool_.size();
        pipe_pool_.clear();
        epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listener_fd, nullptr);
        paused_listeners_.push_back({listener_fd, absl::Now() + absl::Milliseconds(100)});
      } else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        SHUNT_LOG_EVERY_N_SEC(WARNING, 10) << ErrnoStatus(errno, "relay: accept");
      }
      return;
    }
    ++counters_.accepted;
    if (counters_.active.load() >= options_.max_connections) {
      ++counters_.over_capacity;
      ResetFd(down);
      continue;
    }
    if (GroupFull(lst->group)) {
      ++counters_.over_pod_budget;
      ResetFd(down);
      continue;
    }
    sockaddr_storage peer{}, local{};
    socklen_t len = sizeof(peer);
    getpeername(down.get(), reinterpret_cast<sockaddr*>(&peer), &len);
    len = sizeof(local);
    getsockname(down.get(), reinterpret_cast<sockaddr*>(&local), &len);
    RelayDecision d = (*lst->decide)(peer, local, RelayCheck::kArrival);
    if (!d.allow) {
      ++counters_.refused;
      ResetFd(down);
      continue;
    }
    // The upstream's port: chosen here, never the port of a client connection the relay
    // carries from that address to that destination (nor its own upstreams'): the kernel does
    // not see those 4-tuples (its sockets hold their mirror images), and one upstream with a
    // live client connection's tuple would share its conntrack entry and break both. Below the
    // usual ephemeral range (32768-60999), where clients' ports come from.
    absl::StatusOr<UniqueFd> up = absl::UnavailableError("no free port");
    const std::string client_tuple = TupleKey(peer, local);
    // Taken first, so that no loop picks it for an upstream meanwhile. Taken already: another
    // loop's upstream has it (the client reused a port an upstream of ours holds), reset.
    if (!TakeTuple(client_tuple)) {
      ++counters_.upstream_failed;
      ResetFd(down);
      continue;
    }
    for (int attempt = 0; attempt < 32; ++attempt) {
      const uint16_t port = static_cast<uint16_t>(1024 + rng_() % (32768 - 1024));
      sockaddr_storage as = d.as;
      SetPort(as, port);
      if (port == PortOf(peer) || !TakeTuple(TupleKey(as, d.to))) continue;
      up = ConnectTransparent(d.netns_fd, as, d.to, d.mark);
      if (up.ok()) {
        d.as = as;
        break;
      }
      FreeTuple(TupleKey(as, d.to));
      // EADDRINUSE (a listener of the pod on that port, say): another port.
      if (up.status().message().find("in use") == std::string::npos) break;
    }
    if (!up.ok()) {
      ++counters_.upstream_failed;
      SHUNT_LOG_EVERY_N_SEC(WARNING, 10) << "relay: " << up.status().message();
      FreeTuple(client_tuple);
      ResetFd(down);
      continue;
    }
    auto c = std::make_unique<Conn>();
    c->fd[0] = std::move(down);
    c->fd[1] = std::move(*up);
    // Its pipes come when it has bytes to move (AcquirePipe).
    const absl::Time now = absl::Now();
    c->connect_deadline = now + options_.connect_timeout;
    c->last_activity = now;
    Conn* raw = c.get();
    for (int side = 0; side < 2; ++side) {
      raw->ends[side] = {raw, side};
      epoll_event ev{};
      ev.events = 0;
      ev.data.ptr = &raw->ends[side];
      raw->in_epoll[side] = epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, raw->fd[side].get(), &ev) == 0;
      // Urgent data inline: splice stops at an urgent mark, recv (below) steps over it.
      const int one = 1;
      setsockopt(raw->fd[side].get(), SOL_SOCKET, SO_OOBINLINE, &one, sizeof(one));
      // Bytes go on as they come, as a router would pass them: the endpoints' own Nagle already
      // shaped their segments, and a second one here would hold a small write back until the
      // previous one is acknowledged (an HTTP/2 connection's interleaved frames, a small reply
      // behind a large one).
      setsockopt(raw->fd[side].get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      SetLiveness(raw->fd[side].get(), options_);
    }
    raw->group = lst->group;
    if (d.l7) {
      raw->mode = Conn::Mode::kSniff;
      raw->l7 = true;
      raw->authorize = std::move(d.authorize);
      raw->exchanges = std::move(d.exchanges);
      raw->observe = std::move(d.observe);
      raw->opaque_refused = std::move(d.opaque_refused);
      raw->opaque_allow = d.opaque_allow;
      raw->protocol = d.protocol;
    }
    raw->l4 = std::move(d.counters);
    raw->peer = peer;
    raw->local = local;
    raw->decide = lst->decide;
    GroupAdded(raw->group);
    raw->tuples[0] = client_tuple;
    raw->tuples[1] = TupleKey(d.as, d.to);  // both taken above
    conns_[raw] = std::move(c);
    ++counters_.active;
    ++accepted_here_;
    ++active_here_;
    if (raw->mode == Conn::Mode::kSplice) {
      Interest(raw);
    } else {
      InterestUser(raw);
    }
  }
}

void RelayLoop::OnEvent(Conn* c, int side, uint32_t events) {
  if (c->closed) return;  // by an earlier event of this batch (freed after it)
  HandleEvent(c, side, events);
  Account(c);
}

void RelayLoop::HandleEvent(Conn* c, int side, uint32_t events) {
  if (events & EPOLLHUP) c->hup[side] = true;
  if (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP | EPOLLERR)) c->readable[side] = true;
  if (!c->connecting && (events & EPOLLERR)) {
    // A reset (or another error) on one side: passed on to the other once what it sent before
    // is (reads of it return its queued bytes first, then the error).
    // On a connection read in user space (an L7 port) a reset is passed on at once (its
    // session's state is not drained through: docs/capture.md, Known gaps).
    if (c->mode != Conn::Mode::kSplice) {
      if (side == 0 && c->session) {
        if (!LoseClient(c)) return;  // else the server is read on (a priced response's usage)
      } else {
        ++counters_.resets;
        Close(c, /*reset=*/true);
        return;
      }
    } else if (!Aborted(c, side)) {
      return;
    }
  }
  if (c->client_gone && side == 0) {
    Watch(c, 0, 0, /*keep=*/false);  // (an event of the batch it was dropped in)
    return;
  }
  if (c->connecting) {
    if (side != 1 && !(events & (EPOLLERR | EPOLLHUP))) return;
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(c->fd[1].get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (side == 1 && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
      if (err != 0 || (events & EPOLLERR)) {
        ++counters_.upstream_failed;
        Close(c, /*reset=*/true);
        return;
      }
      c->connecting = false;
      if (c->l4) c->l4->opened.fetch_add(1, std::memory_order_relaxed);
    } else if (side == 0) {  // the client went away before the upstream was up
      Close(c, true);
      return;
    }
  }
  if (c->mode != Conn::Mode::kSplice) {
    if (!PumpUser(c)) return;
    if (c->mode != Conn::Mode::kSplice) {
      InterestUser(c);
      return;
    }
  }
  if (!Pump(c, 0) || !Pump(c, 1)) return;
  if (c->shut[0] && c->shut[1]) {
    Close(c, /*reset=*/false);
    return;
  }
  Interest(c);
}

bool RelayLoop::StepOverUrgent(Conn* c, int d) {
  const int src = c->fd[d].get(), dst = c->fd[1 - d].get();
  int at_mark = 0;
  char byte;
  if (ioctl(src, SIOCATMARK, &at_mark) != 0 || !at_mark || recv(src, &byte, 1, MSG_DONTWAIT) != 1) {
    return false;
  }
  // Nothing waits in the pipe (this side is read only then): sent on as urgent data, in its
  // place in the stream; where the other side cannot take it now, as a byte.
  c->last_activity = absl::Now();
  if (send(dst, &byte, 1, MSG_OOB | MSG_DONTWAIT | MSG_NOSIGNAL) != 1) {
    c->unsent[d].push_back(byte);  // Pump writes it out first
  }
  return true;
}

bool RelayLoop::AcquirePipe(Conn* c, int d) {
  if (c->pipe_w[d].valid()) return true;
  if (!pipe_pool_.empty()) {
    c->pipe_r[d] = std::move(pipe_pool_.back().first);
    c->pipe_w[d] = std::move(pipe_pool_.back().second);
    pipe_pool_.pop_back();
    --counters_.pipes_pooled;
    ++counters_.pipes_in_use;
    return true;
  }
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
    ++counters_.pipe_failures;
    SHUNT_LOG_EVERY_N_SEC(WARNING, 10)
        << ErrnoStatus(errno, "relay: pipe2") << ": bytes copied through user space meanwhile";
    return false;
  }
  // Larger than the default 64 KiB where allowed (fs.pipe-max-size, 1 MiB by default): fewer
  // splices per byte. Pages are only referenced (splice), not allocated up front.
  fcntl(p[1], F_SETPIPE_SZ, static_cast<int>(kChunk));
  c->pipe_r[d] = UniqueFd(p[0]);
  c->pipe_w[d] = UniqueFd(p[1]);
  ++counters_.pipes_created;
  ++counters_.pipes_in_use;
  return true;
}

void RelayLoop::ReleasePipe(Conn* c, int d) {
  if (!c->pipe_w[d].valid() || c->pending[d] != 0) return;
  --counters_.pipes_in_use;
  if (pipe_pool_.size() < options_.pipe_pool) {
    pipe_pool_.emplace_back(std::move(c->pipe_r[d]), std::move(c->pipe_w[d]));
    ++counters_.pipes_pooled;
  }
  c->pipe_r[d].Reset();
  c->pipe_w[d].Reset();
}

bool RelayLoop::Pump(Conn* c, int d) {
  const bool alive = PumpPipe(c, d);
  // Empty: back to the pool (an idle connection holds no pipe).
  if (alive && c->pending[d] == 0) ReleasePipe(c, d);
  return alive;
}

bool RelayLoop::Aborted(Conn* c, int x) {
  if (!c->aborted[x]) {
    c->aborted[x] = true;
    c->readable[x] = true;  // its queue, up to the error
    // Bounded as a half-closed connection is (Sweep), also while its rest waits for room.
    if (c->half_closed_at == absl::InfiniteFuture()) c->half_closed_at = absl::Now();
    // What was on its way to it will never be read: dropped, and its sender no longer read.
    c->unsent[1 - x].clear();
    if (c->pending[1 - x] > 0) {
      c->pending[1 - x] = 0;
      c->pipe_r[1 - x].Reset();
      c->pipe_w[1 - x].Reset();
      --counters_.pipes_in_use;
    }
  }
  // Both gone, or x had ended its stream already (its FIN passed on: nothing of it is left to
  // pass on): the other side is reset now, whichever event told of it first (a failed write
  // towards x is seen while moving the other direction).
  if (c->aborted[1 - x] || c->closed || c->shut[x]) {
    if (!c->closed) {
      ++counters_.resets;
      Close(c, /*reset=*/true);
    }
    return false;
  }
  return true;
}

bool RelayLoop::FinishAbort(Conn* c, int x) {
  // Everything fd[x] sent before its reset is in the other side's send queue: reset it once that
  // queue is on the wire (the reset follows the bytes, as it would have followed them from fd[x]
  // directly); until then its EPOLLOUT says when (TCP_NOTSENT_LOWAT 1: writable once nothing is
  // unsent). Bounded by the half-close timeout (Sweep).
  const int live = c->fd[1 - x].get();
  int unsent = 0;
  if (ioctl(live, SIOCOUTQNSD, &unsent) == 0 && unsent > 0) {
    if (!c->abort_waiting) {
      const int one = 1;
      setsockopt(live, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &one, sizeof(one));
      c->abort_waiting = true;
    }
    return true;
  }
  ++counters_.resets;
  Close(c, /*reset=*/true);
  return false;
}

bool RelayLoop::PumpPipe(Conn* c, int d) {
  if (c->connecting) return true;
  if (c->shut[d]) {
    // Its end passed on already (a FIN, then a reset): the other side, shut for writing, is
    // reset at once (its EPOLLOUT would be ready for ever: nothing to wait on).
    if (c->aborted[d]) {
      ++counters_.resets;
      Close(c, /*reset=*/true);
      return false;
    }
    return true;
  }
  if (c->aborted[1 - d]) return true;  // towards a reset side: nothing more (Aborted dropped it)
  const int src = c->fd[d].get(), dst = c->fd[1 - d].get();
  for (int i = 0; i < 16; ++i) {
    bool read_blocked = false;
    // Bytes of this direction in user space (read without a pipe, an urgent byte): out first,
    // in their place in the stream.
    while (!c->unsent[d].empty()) {
      const ssize_t n =
          send(dst, c->unsent[d].data(), c->unsent[d].size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        c->unsent[d].erase(0, static_cast<size_t>(n));
        c->last_activity = absl::Now();
        Moved(c, d, n);
      } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        return true;  // the other side's buffer is full: wait until it is writable
      } else {
        return Aborted(c, 1 - d);  // the other side is gone
      }
    }
    if (c->pending[d] == 0 && !c->eof[d] && !MayRead(c)) return true;
    if (c->pending[d] == 0 && !c->eof[d] && !c->readable[d]) return true;  // epoll tells
    if (c->pending[d] == 0 && !c->eof[d] && !AcquirePipe(c, d)) {
      // No pipe to be had (the descriptor limit): this read through user space (written out at
      // the top of the loop, then the kernel moves the rest again); never left unread, never lost.
      char buf[16 << 10];
      const ssize_t n = recv(src, buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) {
        c->unsent[d].append(buf, static_cast<size_t>(n));
        c->last_activity = absl::Now();
        if (static_cast<size_t>(n) < sizeof(buf)) c->readable[d] = false;
        continue;  // written out at the top
      }
      if (n < 0 && errno == EAGAIN) c->readable[d] = false;
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
      if (n < 0 && !Aborted(c, d)) return false;
      c->eof[d] = true;
      if (c->half_closed_at == absl::InfiniteFuture()) c->half_closed_at = absl::Now();
    }
    if (c->pending[d] == 0 && !c->eof[d]) {
      const ssize_t n = splice(src, nullptr, c->pipe_w[d].get(), nullptr, kChunk,
                               SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (n > 0) {
        c->pending[d] += static_cast<size_t>(n);
        c->last_activity = absl::Now();
        if (static_cast<size_t>(n) < kChunk) {
          c->readable[d] = false;  // the queue is empty (an urgent mark reads as EAGAIN next)
          read_blocked = true;
        }
      } else if (const int err = n < 0 ? errno : 0;
                 (n == 0 || err == EAGAIN || err == EINTR) && StepOverUrgent(c, d)) {
        // At an urgent mark splice moves nothing although bytes wait (tcp_read_sock stops
        // there; with the FIN already in it returns 0, as at the end): stepped over.
      } else if (n == 0) {
        c->eof[d] = true;
        if (c->half_closed_at == absl::InfiniteFuture()) c->half_closed_at = absl::Now();
      } else if (err == EAGAIN || err == EINTR) {
        read_blocked = true;
        if (err == EAGAIN) c->readable[d] = false;
      } else {  // ECONNRESET...: its queue is read (the error comes after it); passed on after it
        if (!Aborted(c, d)) return false;
        c->eof[d] = true;
        if (c->half_closed_at == absl::InfiniteFuture()) c->half_closed_at = absl::Now();
      }
    }
    if (c->pending[d] > 0) {
      const ssize_t m = splice(c->pipe_r[d].get(), nullptr, dst, nullptr, c->pending[d],
                               SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (m > 0) {
        c->pending[d] -= static_cast<size_t>(m);
        c->last_activity = absl::Now();
        Moved(c, d, m);
      } else if (m < 0 && (errno == EAGAIN || errno == EINTR)) {
        return true;  // the other side's buffer is full: wait until it is writable
      } else {
        return Aborted(c, 1 - d);  // the other side is gone
      }
      if (c->pending[d] > 0) return true;
    }
    if (c->eof[d] && c->pending[d] == 0 && c->unsent[d].empty()) {
      if (c->aborted[d]) return FinishAbort(c, d);
      shutdown(dst, SHUT_WR);
      c->shut[d] = true;
      return true;
    }
    if (read_blocked) return true;
  }
  return true;
}

void RelayLoop::Interest(Conn* c) {
  for (int side = 0; side < 2; ++side) {
    uint32_t want = 0;
    if (c->connecting) {
      if (side == 1) want = EPOLLOUT;
      // The client: only errors and hang-ups (reported anyway) until the upstream is there.
    } else if (c->aborted[side]) {
      // Its rest, up to the error, as any read: while its pipe is empty and its group may read.
      if (c->pending[side] == 0 && c->unsent[side].empty() && !c->eof[side] && MayRead(c)) {
        want = EPOLLIN;
      }
    } else {
      if (c->pending[side] == 0 && c->unsent[side].empty() && !c->eof[side] && MayRead(c) &&
          !c->aborted[1 - side]) {
        want |= EPOLLIN;
      }
      if (c->pending[1 - side] > 0 || !c->unsent[1 - side].empty() || c->abort_waiting) {
        want |= EPOLLOUT;
      }
    }
    // A socket with nothing to wait for out of epoll: once hung up (or done both ways), its
    // level-triggered hang-up would wake the loop until the other side drained.
    const bool done_with =
        !c->connecting && c->eof[side] && (c->shut[1 - side] || c->aborted[side]);
    Watch(c, side, want, /*keep=*/!done_with && (want != 0 || !c->hup[side]));
  }
}

void RelayLoop::Watch(Conn* c, int side, uint32_t want, bool keep) {
  if (!keep) {
    if (c->in_epoll[side]) {
      epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c->fd[side].get(), nullptr);
      c->in_epoll[side] = false;
    }
    return;
  }
  if (c->in_epoll[side] && want == c->events[side]) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.ptr = &c->ends[side];
  epoll_ctl(epoll_.get(), c->in_epoll[side] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd[side].get(),
            &ev);
  c->in_epoll[side] = true;
  c->events[side] = want;
}

void RelayLoop::Moved(Conn* c, int d, ssize_t n) {
  (d == 0 ? counters_.bytes_to_upstream : counters_.bytes_to_downstream) += n;
  if (c->l4) {
    (d == 0 ? c->l4->to_upstream : c->l4->to_downstream)
        .fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
  }
}

void RelayLoop::Close(Conn* c, bool reset) {
  auto it = conns_.find(c);
  if (it == conns_.end()) return;
  if (c->client_gone && !c->drain_counted) {  // the server reset, a policy change, the loop's end
    ++counters_.usage_drains_broken;
    c->drain_counted = true;
  }
  if (c->l4 && !c->connecting) c->l4->closed.fetch_add(1, std::memory_order_relaxed);
  for (int side = 0; side < 2; ++side) {
    if (c->fd[side].valid() && c->in_epoll[side]) {
      epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c->fd[side].get(), nullptr);
      c->in_epoll[side] = false;
    }
    if (reset) {
      ResetFd(c->fd[side]);
    } else {
      c->fd[side].Reset();
    }
  }
  for (int d = 0; d < 2; ++d) {
    if (!c->pipe_w[d].valid()) continue;
    if (c->pending[d] == 0) {
      ReleasePipe(c, d);
    } else {  // bytes that will never be read: not a pipe to reuse
      c->pipe_r[d].Reset();
      c->pipe_w[d].Reset();
      --counters_.pipes_in_use;
    }
  }
  --counters_.active;
  --active_here_;
  GroupRemoved(c->group);
  FreeTuple(c->tuples[0]);
  FreeTuple(c->tuples[1]);
  // Events of this batch may still point at it: freed after the batch, so that no new
  // connection takes its address meanwhile.
  c->closed = true;
  // Out of its group's held list whatever it held (Account returns early when nothing changed):
  // no pointer to it outlives the batch.
  if (auto g = group_bytes_.find(c->group); g != group_bytes_.end()) g->second.held.erase(c);
  Account(c);
  closed_.push_back(std::move(it->second));
  conns_.erase(it);
}

bool RelayLoop::MayRead(Conn* c) {
  GroupBytes& g = group_bytes_[c->group];
  if (g.bytes < options_.max_buffered_per_group) return true;
  if (g.held.insert(c).second) ++counters_.buffer_budget_waits;
  return false;
}

void RelayLoop::Account(Conn* c) {
  size_t now = 0;
  if (!c->closed) {
    now = c->pending[0] + c->pending[1] + c->unsent[0].size() + c->unsent[1].size();
    if (c->session) {
      now += c->session->to_client.size() + c->session->to_server.size() + c->session->held_bytes();
    }
  }
  if (now == c->buffered) return;
  GroupBytes& g = group_bytes_[c->group];
  g.bytes = g.bytes + now - c->buffered;
  counters_.buffered += now;
  counters_.buffered -= c->buffered;
  c->buffered = now;
  if (c->closed) g.held.erase(c);
  if (g.bytes < options_.max_buffered_per_group && !g.held.empty()) {
    for (Conn* h : g.held) again_.push_back(h);  // their turn again: they read what they may
    g.held.clear();
  }
  if (g.bytes == 0 && g.held.empty()) group_bytes_.erase(c->group);
}

bool RelayLoop::StartSession(Conn* c, bool http2) {
  L7Authorize authorize = c->authorize;
  c->live_exchanges = std::make_shared<ExchangeSink>(c->exchanges);
  Counters* counters = &counters_;
  ExchangeSink sink = [counters, exchanges = c->live_exchanges](const ExchangeRecord& r) {
    ++counters->http_requests;
    if (r.denied) {
      ++counters->http_denied;
    } else if (r.proxy_answered) {
      ++(r.status == 502 ? counters->http_bad_responses : counters->http_refused);
    }
    if (*exchanges) (*exchanges)(r);
  };
  if (http2) {
    Http2Options o = options_.http2;
    o.tunnels = c->opaque_allow;
    auto s = Http2Session::Create(std::move(o), std::move(authorize), std::move(sink));
    if (!s.ok()) {  // out of memory, or options that cannot work: refused, never unread
      SHUNT_LOG_EVERY_N_SEC(WARNING, 10) << "relay: HTTP/2 session: " << s.status();
      ++counters_.resets;
      Close(c, /*reset=*/true);
      return false;
    }
    c->session = std::move(*s);
    ++counters_.http2_connections;
  } else {
    Http1Options o = options_.http1;
    o.tunnels = c->opaque_allow;
    c->session = std::make_unique<Http1Session>(o, std::move(authorize), std::move(sink));
    ++counters_.http1_connections;
  }
  c->session->observe = c->observe;
  c->mode = Conn::Mode::kSession;
  c->http2 = http2;
  if (draining_) c->session->Drain();
  return true;
}

bool RelayLoop::DrainsByReading(const Conn* c, int side) {
  return c->session && c->session->held_towards(side) > 0;
}

size_t RelayLoop::OutputBudget(const Conn* c) const {
  return c->http2 ? options_.http2.output_budget : options_.http1.output_budget;
}

bool RelayLoop::PumpUser(Conn* c) {
  if (c->connecting) return true;
  char buf[64 << 10];
  bool progress = false;
  for (int round = 0; round < 64; ++round) {
    progress = false;
    // Out: what the session wrote for each side, or (kRaw) what was read and not passed on.
    for (int side = 0; side < 2; ++side) {
      std::string* out = nullptr;
      if (c->session) {
        out = side == 0 ? &c->session->to_client : &c->session->to_server;
      } else if (c->mode == Conn::Mode::kRaw) {
        out = &c->unsent[1 - side];
      }
      if (out && side == 0 && c->client_gone) {
        out->clear();  // no one to read it
        continue;
      }
      while (out && !out->empty() && !(c->mode == Conn::Mode::kRaw && c->shut[1 - side])) {
        const ssize_t n =
            send(c->fd[side].get(), out->data(), out->size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
          out->erase(0, static_cast<size_t>(n));
          Moved(c, 1 - side, n);
          c->last_activity = absl::Now();
          progress = true;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
          break;
        } else if (side == 0 && c->session) {
          if (!LoseClient(c)) return false;
          progress = true;
          break;
        } else {
          ++counters_.resets;
          Close(c, /*reset=*/true);
          return false;
        }
      }
    }
    if (c->session) {
      L7Session& s = *c->session;
      if (s.abort) {
        ++counters_.resets;
        Close(c, /*reset=*/true);
        return false;
      }
      if (s.shut_client && s.to_client.empty() && !c->shut[1]) {
        shutdown(c->fd[0].get(), SHUT_WR);
        c->shut[1] = true;
        c->half_closed_at = std::min(c->half_closed_at, absl::Now());
        progress = true;
      }
      if (s.shut_server && s.to_server.empty() && !c->shut[0]) {
        shutdown(c->fd[1].get(), SHUT_WR);
        c->shut[0] = true;
        c->half_closed_at = std::min(c->half_closed_at, absl::Now());
        progress = true;
      }
      if (s.tunnel && c->client_gone) {  // a tunnel to no one
        ++counters_.resets;
        Close(c, /*reset=*/true);
        return false;
      }
      if (s.tunnel && s.to_client.empty() && s.to_server.empty()) {
        // 101 or CONNECT: the bytes the session did not take are the tunnel's first.
        ++counters_.tunnels;
        c->session.reset();
        c->mode = Conn::Mode::kRaw;
        progress = true;
      }
    }
    if (c->mode == Conn::Mode::kRaw) {
      if (!c->unsent[0].empty() || !c->unsent[1].empty()) {
        if (!progress) break;
        continue;
      }
      // All passed on: the kernel moves the rest (an end already read is passed on by Pump).
      c->mode = Conn::Mode::kSplice;
      Interest(c);
      return true;
    }
    // In: each side read while what waits from it is small and its session's output towards the
    // other side is within budget (backpressure: a slow reader holds its writer back).
    for (int d = 0; d < 2; ++d) {
      if (c->eof[d] || c->unsent[d].size() >= options_.max_unsent) continue;
      if (!c->readable[d]) continue;  // epoll tells when there is more
      if (!DrainsByReading(c, d) && !MayRead(c)) continue;
      if (c->session) {
        const std::string& towards = d == 0 ? c->session->to_server : c->session->to_client;
        if (towards.size() >= OutputBudget(c)) continue;
      }
      const ssize_t n = recv(c->fd[d].get(), buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) {
        c->unsent[d].append(buf, static_cast<size_t>(n));
        c->last_activity = absl::Now();
        progress = true;
        if (static_cast<size_t>(n) < sizeof(buf)) c->readable[d] = false;
        if (c->client_gone && (c->gone_read += static_cast<uint64_t>(n)) >
                                  options_.usage_drain_bytes) {
          ++counters_.usage_drains_cut;
          c->drain_counted = true;
          Close(c, /*reset=*/true);
          return false;
        }
      } else if (n == 0) {
        c->eof[d] = true;
        c->half_closed_at = std::min(c->half_closed_at, absl::Now());
        progress = true;
      } else if (errno == EAGAIN) {
        c->readable[d] = false;
      } else if (errno != EINTR && d == 0 && c->session) {
        if (!LoseClient(c)) return false;
        progress = true;
      } else if (errno != EINTR) {
        ++counters_.resets;
        Close(c, /*reset=*/true);
        return false;
      }
    }
    if (c->mode == Conn::Mode::kSniff) {
      // The server speaking (or closing) first is a server-first protocol: opaque at once, never
      // stalled -- unless what it says is an HTTP/2 server's preface (gRPC's servers send theirs
      // at once). Otherwise the client's first bytes decide.
      Sniffed what = Sniffed::kNeedMore;
      const bool server_spoke = !c->unsent[1].empty() || c->eof[1];
      if (c->protocol == RelayDecision::Protocol::kHttp2) {
        // Declared: the session judges the bytes, but for the workload's own TLS (opaque) and a
        // server that speaks first with something else than an HTTP/2 server's preface.
        if (server_spoke && (c->eof[1] || SniffServerFirst(c->unsent[1]) == Sniffed::kOther)) {
          what = Sniffed::kOther;
        } else if (!c->unsent[0].empty()) {
          what = SniffDeclaredHttp2(c->unsent[0]);
          if (what == Sniffed::kNeedMore && c->eof[0]) what = Sniffed::kOther;
        } else if (c->eof[0]) {
          what = Sniffed::kHttp2;  // nothing said: the session sees the close
        }
      } else if (server_spoke && (c->eof[1] || SniffServerFirst(c->unsent[1]) == Sniffed::kOther)) {
        what = Sniffed::kOther;
      } else if (!c->unsent[0].empty()) {
        what = SniffProtocol(c->unsent[0]);
        if (what == Sniffed::kNeedMore && c->eof[0]) what = Sniffed::kOther;
        // An HTTP/2 server's preface, then something else than HTTP/2 from the client: opaque.
        if (server_spoke && what == Sniffed::kHttp1) what = Sniffed::kOther;
      } else if (c->eof[0]) {
        what = Sniffed::kOther;
      }
      // The client ended without a byte and the server said nothing (a TCP probe, a port scan,
      // a client that gave up): where opaque bytes are not admitted there is nothing to pass
      // on, and nothing that was refused. Both sides get an orderly end; counted apart, not as
      // a denial of its source.
      if (what == Sniffed::kOther && c->unsent[0].empty() && !server_spoke &&
          (!c->opaque_allow || c->protocol == RelayDecision::Protocol::kHttp)) {
        ++counters_.empty_l7;
        Close(c, /*reset=*/false);
        return false;
      }
      if (what == Sniffed::kHttp1 || what == Sniffed::kHttp2) {
        if (!StartSession(c, what == Sniffed::kHttp2)) return false;
        progress = true;
      } else if (what == Sniffed::kOther && c->protocol == RelayDecision::Protocol::kHttp) {
        ++counters_.not_http;  // declared HTTP: never opaque
        ++counters_.refused;
        Close(c, /*reset=*/true);
        return false;
      } else if (what == Sniffed::kOther) {
        if (!c->opaque_allow) {
          ++counters_.opaque_refused;
          ++counters_.refused;
          if (c->opaque_refused) c->opaque_refused();
          Close(c, /*reset=*/true);
          return false;
        }
        ++counters_.opaque_l7;
        c->mode = Conn::Mode::kRaw;
        continue;
      }
    }
    if (c->session && !c->session->tunnel) {  // a tunnel's bytes are not the session's
      L7Session& s = *c->session;
      for (int d = 0; d < 2; ++d) {
        if (!c->unsent[d].empty()) {
          const size_t n = d == 0 ? s.FromClient(c->unsent[d]) : s.FromServer(c->unsent[d]);
          if (n > 0) {
            c->unsent[d].erase(0, n);
            progress = true;
          }
        }
        if (c->eof[d] && c->unsent[d].empty() && !c->told_closed[d] && !s.tunnel) {
          c->told_closed[d] = true;
          d == 0 ? s.ClientClosed() : s.ServerClosed();
          progress = true;
        }
      }
    }
    if (c->client_gone && c->session && c->session->drained) {
      // Over: the priced response read to its end (its exchange recorded, charged), or the
      // server ended before it; the server's side ended.
      ++(c->session->drained_whole ? counters_.usage_drains_complete
                                   : counters_.usage_drains_broken);
      c->drain_counted = true;
      Close(c, /*reset=*/false);
      return false;
    }
    if (!progress) break;
  }
  // Still moving after its share of the loop: taken up again after this batch of events (it may
  // wait on nothing epoll reports, e.g. bytes already read for a session that can take them).
  if (progress) again_.push_back(c);
  // Done both ways: each side ended its stream and was sent the end of the other's.
  if (c->shut[0] && c->shut[1] && c->eof[0] && c->eof[1] &&
      (!c->session || (c->session->to_client.empty() && c->session->to_server.empty()))) {
    Close(c, /*reset=*/false);
    return false;
  }
  return true;
}

bool RelayLoop::LoseClient(Conn* c) {
  if (c->client_gone) return true;
  if (!c->session || c->session->tunnel || !c->session->ClientGone()) {
    ++counters_.resets;
    Close(c, /*reset=*/true);
    return false;
  }
  ++counters_.usage_drains;
  c->client_gone = true;
  c->gone_deadline = absl::Now() + options_.usage_drain_time;
  c->gone_read = 0;
  Watch(c, 0, 0, /*keep=*/false);
  c->unsent[0].clear();
  c->eof[0] = c->told_closed[0] = true;  // (its session was told by ClientGone)
  c->shut[1] = true;                     // nothing more is written to it
  c->session->to_client.clear();
  c->half_closed_at = std::min(c->half_closed_at, absl::Now());
  again_.push_back(c);  // what the server sent already is taken on after this batch
  return true;
}

void RelayLoop::InterestUser(Conn* c) {
  for (int side = 0; side < 2; ++side) {
    uint32_t want = 0;
    if (side == 0 && c->client_gone) {
      Watch(c, 0, 0, /*keep=*/false);
      continue;
    }
    if (c->connecting) {
      if (side == 1) want = EPOLLOUT;
    } else {
      bool read = !c->eof[side] && c->unsent[side].size() < options_.max_unsent;
      if (c->session) {
        const std::string& towards = side == 0 ? c->session->to_server : c->session->to_client;
        read = read && towards.size() < OutputBudget(c);
        const std::string& out = side == 0 ? c->session->to_client : c->session->to_server;
        if (!out.empty()) want |= EPOLLOUT;
      } else if (c->mode == Conn::Mode::kRaw) {
        read = false;
        if (!c->unsent[1 - side].empty()) want |= EPOLLOUT;
      }
      if (read && (DrainsByReading(c, side) || MayRead(c))) want |= EPOLLIN;
    }
    Watch(c, side, want, /*keep=*/want != 0 || !c->hup[side]);
  }
}

void RelayLoop::Sweep(absl::Time now) {
  std::vector<std::pair<Conn*, int>> expired;  // 0 connect, 1 half-close, 2 idle, 3 usage drain
  for (auto& [p, c] : conns_) {
    if (c->connecting) {
      if (now > c->connect_deadline) expired.push_back({p, 0});
    } else if (c->client_gone) {
      // Read on for a priced response: its own bound only (a slow completion may say nothing
      // for longer than the half-close timeout).
      if (now > c->gone_deadline) expired.push_back({p, 3});
    } else if ((c->eof[0] || c->eof[1] || c->shut[0] || c->shut[1] || c->aborted[0] ||
                c->aborted[1]) &&
               now - std::max(c->half_closed_at, c->last_activity) > options_.half_close_timeout) {
      // Bounded: no pile-up of half-closed pairs; a half-closed stream still moving is not cut.
      expired.push_back({p, 1});
    } else if (options_.idle_timeout > absl::ZeroDuration() &&
               now - c->last_activity > options_.idle_timeout) {
      expired.push_back({p, 2});
    }
  }
  // Draining: HTTP/1.1 connections idle for a while are closed (busy ones close after their
  // next response), so that their clients' next requests go to the next agent.
  if (draining_) {
    std::vector<Conn*> idle;
    for (auto& [p, c] : conns_) {
      if (c->session && c->session->Idle() && c->unsent[0].empty() && c->unsent[1].empty() &&
          now - c->last_activity >= kDrainIdleGrace) {
        idle.push_back(p);
      }
    }
    for (Conn* c : idle) {
      c->session->CloseIdle();
      if (PumpUser(c) && c->mode != Conn::Mode::kSplice) {
        InterestUser(c);
        Account(c);
      }
    }
  }
  for (auto [p, why] : expired) {
    if (why == 3) p->drain_counted = true;
    (why == 0   ? counters_.connect_timeouts
     : why == 1 ? counters_.half_close_timeouts
     : why == 2 ? counters_.idle_timeouts
                : counters_.usage_drains_cut) += 1;
    if (why == 0) ++counters_.upstream_failed;
    Close(p, /*reset=*/true);
  }
}

}  // namespace shunt::agent
