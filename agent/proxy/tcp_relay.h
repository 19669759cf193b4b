// The agent's transparent relay (issue 9, docs/capture.md): connections handed over by TPROXY to
// a transparent listener in a pod's namespace are decided (allowed: an upstream to the pod as the
// client's address; refused: reset), then their bytes moved in the kernel with splice(2) through
// a pipe per direction, never copied to user space. A connection to a port that needs L7 (an
// access policy with L7 rules there) is sniffed first (sniff.h): HTTP/1.1 and HTTP/2 (h2c with
// prior knowledge, which is what gRPC speaks) go through an L7Session (http1_session.h,
// http2/h2_session.h) that decides each request; anything else, or a server that speaks first,
// is opaque (where the policy allows opaque bytes there; else it is reset).
//
// Event loops (RelayOptions::loops, the agent gives one per CPU), each on a thread of its own
// with its own connections: every loop watches every listener (EPOLLEXCLUSIVE: one loop is woken
// per arrival, an idle one first), and a connection stays on the loop that accepted it, so its
// bytes are never touched by two threads. Backpressure: a side is read only while its pipe towards
// the other is empty, so a slow reader holds back its writer (at most a pipe, 1 MiB, is in
// flight per direction) instead of the relay buffering. Half-closes are passed on (a FIN becomes
// a shutdown(SHUT_WR) once what came before it is written), a reset becomes a reset, and every
// connection has a connect timeout, a bounded half-close and an optional idle timeout (off by
// default: long-lived database connections are not cut).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/proxy/http1_session.h"
#include "agent/proxy/http2/h2_session.h"
#include "agent/proxy/l7_session.h"
#include "common/unique_fd.h"

namespace shunt::agent {

struct RelayOptions {
  absl::Duration connect_timeout = absl::Seconds(10);
  // After one side ended its stream (FIN), the other has this long to end its own.
  absl::Duration half_close_timeout = absl::Seconds(60);
  absl::Duration idle_timeout = absl::ZeroDuration();  // no byte either way for this long; 0: off
  // A client of an L7 connection gone (reset, or its writes failing) while the response to a
  // priced request is on its way (L7Session::ClientGone: its usage comes at its end, and the
  // upstream bills it anyway): the server's response is read on, discarded, for at most this
  // long and this many bytes, then the server's side is closed (reset if cut short).
  absl::Duration usage_drain_time = absl::Seconds(120);
  uint64_t usage_drain_bytes = uint64_t{64} << 20;
  // Both sockets of every connection: TCP keepalive (a peer that vanished without a FIN or a
  // reset, a node gone, is found and its connection reset instead of held for ever: after idle,
  // then `keepalive_count` probes `keepalive_interval` apart; 0: off; at most 32767 s) and
  // TCP_USER_TIMEOUT (bytes sent and not acknowledged for this long end the connection, instead
  // of the kernel's ~15 minutes of retransmissions; 0: the kernel's). Off by default: since
  // Linux 5.11 it also ends a connection whose reader keeps a zero window that long (a consumer
  // that pauses), which the same connection made directly survives. With it, keepalive ends an
  // idle connection once that long passed without an answer.
  absl::Duration keepalive_idle = absl::Seconds(60);
  absl::Duration keepalive_interval = absl::Seconds(10);
  int keepalive_count = 6;
  absl::Duration user_timeout = absl::ZeroDuration();
  size_t max_connections = 65536;  // beyond it new connections are reset, counted
  // Per listener group (a pod): one pod flooded with connections does not take the others'
  // share. Beyond it the pod's new connections are reset, counted (over_pod_budget).
  size_t max_connections_per_group = 16384;
  // Bytes a group's (a pod's) connections hold in the relay (read, not yet written: user-space
  // buffers and the splice pipes). Beyond it none of them reads more until the pod's readers
  // took some (backpressure towards the senders; nothing is dropped).
  size_t max_buffered_per_group = 64 << 20;
  Http1Options http1;
  Http2Options http2;
  // Bytes read from a side and not yet taken by its session (waiting for the other side): at
  // most this many before that side is not read.
  size_t max_unsent = 256 << 10;
  // Empty splice pipes kept for the next connections with bytes to move (two descriptors each);
  // beyond, an emptied pipe is closed.
  size_t pipe_pool = 256;
  // Event loops (threads). A pod's buffer budget and the pipe pool are shared out among them
  // evenly (its connections are spread by the kernel's wake-ups); the connection limits are
  // the relay's, whichever loop holds a connection.
  size_t loops = 1;
};

// What to do with an accepted connection (`peer`: the client, `local`: where it connected).
// What the relay counts of the connections whose decisions share it (their L4 metrics): each
// connection holds it from its decision on and updates it as its bytes move.
struct ConnectionCounters {
  std::atomic<uint64_t> opened{0};  // relayed: the upstream connected
  std::atomic<uint64_t> closed{0};  // of those, ended (however)
  std::atomic<uint64_t> to_upstream{0};    // bytes client -> server
  std::atomic<uint64_t> to_downstream{0};  // bytes server -> client
};

struct RelayDecision {
  bool allow = false;
  std::string reason;  // when refused, for the log and counters
  int netns_fd = -1;   // the upstream is made inside this namespace (borrowed: outlives the call)
  sockaddr_storage as{};  // the upstream's source address (the client's; any port)
  sockaddr_storage to{};  // its destination
  uint32_t mark = 0;      // SO_MARK of the upstream
  // The port needs L7: the connection is sniffed; HTTP/1.1 is read request by request
  // (`authorize` decides each, `exchanges` hears of each), anything else is opaque bytes, which
  // `opaque_allow` says the policy admits (else reset, `opaque_refused` told).
  bool l7 = false;
  bool opaque_allow = true;
  // What the port is declared to speak (its Service port's appProtocol), for an l7 connection:
  // kHttp (http, grpc-web): HTTP/1.1 or HTTP/2 as sniffed, never opaque (anything else, or a
  // server that speaks first, is reset: counted not_http); kHttp2 (http2, grpc,
  // kubernetes.io/h2c): HTTP/2 from the client's first byte, but for a TLS record (the
  // workload's own TLS) or a server speaking first, which are opaque (SniffDeclaredHttp2).
  enum class Protocol : uint8_t { kSniff, kHttp, kHttp2 } protocol = Protocol::kSniff;
  L7Authorize authorize;
  ExchangeSink exchanges;
  ObserverFactory observe;  // reads the bodies of each request let through (null: none)
  std::function<void()> opaque_refused;
  std::shared_ptr<ConnectionCounters> counters;  // null: not counted
};
// When a decision is asked: for a connection just accepted, or for an open one again after a
// policy change (Recheck: refused, it is closed with a reset).
enum class RelayCheck { kArrival, kPolicyChange };
using RelayDecide = std::function<RelayDecision(const sockaddr_storage& peer,
                                                const sockaddr_storage& local, RelayCheck when)>;

struct RelayStats {
  uint64_t accepted = 0;
  uint64_t refused = 0;          // by the decision
  uint64_t over_capacity = 0;    // max_connections reached
  uint64_t over_pod_budget = 0;  // max_connections_per_group reached
  uint64_t upstream_failed = 0;  // could not connect (refused, timeout, no route)
  uint64_t connect_timeouts = 0;
  uint64_t half_close_timeouts = 0;
  uint64_t idle_timeouts = 0;
  uint64_t resets = 0;         // a reset passed on
  uint64_t policy_closed = 0;  // open, then denied by a policy change (Recheck)
  uint64_t active = 0;
  uint64_t bytes_to_upstream = 0;
  uint64_t bytes_to_downstream = 0;
  uint64_t buffered = 0;             // bytes the relay holds now (all pods)
  uint64_t buffer_budget_waits = 0;  // reads held back by a pod's max_buffered_per_group
  // L7 ports.
  uint64_t http1_connections = 0;  // sniffed as HTTP/1 and read as such
  uint64_t http2_connections = 0;  // sniffed as HTTP/2 (h2c prior knowledge: gRPC) and read as such
  uint64_t opaque_l7 = 0;          // sniffed as something else: opaque, where allowed
  uint64_t opaque_refused = 0;     // ... reset: the policy does not admit it as opaque bytes
  uint64_t empty_l7 = 0;       // ended by the client before a byte either way: closed, not refused
  uint64_t not_http = 0;       // declared HTTP (appProtocol), spoke something else: reset
  uint64_t tunnels = 0;        // HTTP that became opaque (101, CONNECT)
  uint64_t http_requests = 0;  // exchanges finished, all outcomes
  uint64_t http_denied = 0;    // answered 403 by policy
  uint64_t http_refused = 0;   // requests the framer refused (400, 414, 431, 501, 505)
  uint64_t http_bad_responses = 0;  // responses it refused (502)
  // Priced responses read on after their client went (usage_drain_*): started, read to their
  // end, cut by the bounds, broken (the server's side ended first).
  uint64_t usage_drains = 0, usage_drains_complete = 0, usage_drains_cut = 0;
  uint64_t usage_drains_broken = 0;  // the server ended (or was reset) before the response did
  // Splice pipes: held by connections with bytes in flight, kept empty in a small pool between
  // uses (an idle connection holds none: two descriptors, not six). Copied: moved through user
  // space because no pipe could be had (the descriptor limit).
  uint64_t pipes_in_use = 0;
  uint64_t pipes_pooled = 0;
  uint64_t pipes_created = 0;
  uint64_t pipe_failures = 0;
  // Connections each event loop relayed (refused and failed ones not counted) and carries now:
  // how the kernel spread them.
  std::vector<uint64_t> accepted_by_loop, active_by_loop;
};

// What the loops of one relay share: its counters, its connections per group, the 4-tuples of
// its connections (no upstream may take a live connection's, whichever loop holds it).
struct RelayShared;
class RelayLoop;

// The process must ignore SIGPIPE (a splice to a socket its peer reset raises it otherwise):
// the agent does.
class TcpRelay {
 public:
  static absl::StatusOr<std::unique_ptr<TcpRelay>> Start(RelayOptions options);
  ~TcpRelay();  // Stop()
  TcpRelay(const TcpRelay&) = delete;
  TcpRelay& operator=(const TcpRelay&) = delete;

  // Serves `listener` (non-blocking, listening); `decide` runs on the relay's threads (any of
  // them, at once: it must be thread-safe, as must the callbacks of its decisions). The relay
  // owns the listener until RemoveListener, which returns once every loop took the connections
  // queued on it and closed it (open connections go on, and count in stats().active); never
  // called from a decision.
  // `group` tags its connections (ActiveIn: a pod being released waits for its own to end).
  absl::Status AddListener(UniqueFd listener, RelayDecide decide, uint64_t group = 0);
  void RemoveListener(int listener_fd);
  size_t ActiveIn(uint64_t group) const;
  // Every open connection is decided again (RelayCheck::kPolicyChange) on its loop, soon; the
  // ones now refused are closed with a reset both ways, counted (policy_closed). Calls made
  // before it ran are one.
  void Recheck();
  // The agent is going away: HTTP connections end after their current response (idle ones now);
  // opaque ones are left to end by themselves. Soon, on each loop.
  void Drain();
  RelayStats stats() const;
  size_t loops() const { return loops_.size(); }
  void Stop();

 private:
  TcpRelay();
  std::unique_ptr<RelayShared> shared_;
  std::vector<std::unique_ptr<RelayLoop>> loops_;
  mutable absl::Mutex mu_;
  // A listener as given -> its descriptor in each loop (the first is it, the others dups).
  std::map<int, std::vector<int>> listener_fds_ ABSL_GUARDED_BY(mu_);
};

// One of a relay's event loops (tcp_relay.cc): its own epoll, thread and connections.
class RelayLoop {
 public:
  static absl::StatusOr<std::unique_ptr<RelayLoop>> Start(RelayOptions options,
                                                          RelayShared* shared);
  ~RelayLoop();  // Stop()
  RelayLoop(const RelayLoop&) = delete;
  RelayLoop& operator=(const RelayLoop&) = delete;

  absl::Status AddListener(UniqueFd listener, std::shared_ptr<const RelayDecide> decide,
                           uint64_t group);
  // Returns a ticket: WaitRemoved(ticket) returns once the loop took what was queued on the
  // listener and closed it (its connections then count in the relay's active ones).
  uint64_t RemoveListener(int listener_fd);
  void WaitRemoved(uint64_t ticket, absl::Duration timeout);
  void Recheck();
  void Drain();
  void RequestStop();  // the loop ends soon (Stop joins it)
  void Stop();
  uint64_t accepted() const { return accepted_here_.load(std::memory_order_relaxed); }
  uint64_t active() const { return active_here_.load(std::memory_order_relaxed); }

  struct Conn;      // one relayed connection (tcp_relay.cc)
  struct Counters;  // the relay's, in its RelayShared (tcp_relay.cc)

 private:
  RelayLoop(RelayOptions options, RelayShared* shared);
  void Loop();
  void Accept(int listener_fd, int batch = 64);  // at most `batch` connections, then return
  void Sweep(absl::Time now);
  void OnEvent(Conn* c, int side, uint32_t events);  // HandleEvent, then Account
  void HandleEvent(Conn* c, int side, uint32_t events);
  // Moves what can be moved from side `d` to the other; false: the connection was reset.
  bool Pump(Conn* c, int d);  // PumpPipe, then an emptied pipe goes back to the pool
  bool PumpPipe(Conn* c, int d);
  // Connections read in user space (sniffing, an L7 session, the bytes left when it ends):
  // false: the connection was closed.
  bool PumpUser(Conn* c);
  void InterestUser(Conn* c);
  // Side `side` in epoll for `want` (out of it unless `keep`: a hung-up socket with nothing to
  // wait for would wake the loop, level-triggered, until the other side drained).
  void Watch(Conn* c, int side, uint32_t want, bool keep);
  // Reads the connection as `http2` or HTTP/1.1 from now on; false: it was reset (no session).
  bool StartSession(Conn* c, bool http2);
  // A side is not read while its session's output towards the other is over this.
  size_t OutputBudget(const Conn* c) const;
  // The group's buffered bytes: whether c may read; Account after every change of c's buffers.
  bool MayRead(Conn* c);
  // Side `side` is read whatever the group's budget: its session holds bytes only a read of it
  // frees (an HTTP/2 peer's WINDOW_UPDATE). Not reading it would hold the pod over its budget,
  // every connection of it frozen, for good.
  static bool DrainsByReading(const Conn* c, int side);
  void Account(Conn* c);
  // At an urgent mark of side d: its byte read and sent on (true), else false.
  bool StepOverUrgent(Conn* c, int d);
  void Interest(Conn* c);
  void Close(Conn* c, bool reset);
  // n bytes of direction d moved: counted (the relay's, the connection's decision's).
  void Moved(Conn* c, int d, ssize_t n);
  // Side x was reset (or failed): marked so (Conn::aborted), what was on its way to it dropped;
  // false if the connection was closed (the other side had gone too).
  bool Aborted(Conn* c, int x);
  // All that side x sent before its reset was given to the other side: reset that one once it
  // is sent (false: closed now).
  bool FinishAbort(Conn* c, int x);
  // The client of a session connection is gone (reset, its writes failing): where its session
  // still reads the server for a priced response (usage_drain_*), the client side is dropped
  // and the server read on (true); else both sides are reset (false: closed).
  bool LoseClient(Conn* c);
  void RecheckOpen();

  const RelayOptions options_;
  UniqueFd epoll_;
  UniqueFd wake_;  // eventfd: listener changes and Stop()
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> recheck_{false};
  std::atomic<bool> drain_{false};
  bool draining_ = false;  // the loop's

  RelayShared* const shared_;
  mutable absl::Mutex mu_;
  // Listeners: fd -> decision; added and removed from other threads, used on the loop's.
  struct Listener {
    UniqueFd fd;
    std::shared_ptr<const RelayDecide> decide;  // its connections keep it (Recheck)
    uint64_t group = 0;
  };
  std::map<int, std::shared_ptr<Listener>> pending_add_ ABSL_GUARDED_BY(mu_);
  std::vector<int> pending_remove_ ABSL_GUARDED_BY(mu_);
  uint64_t removal_ticket_ ABSL_GUARDED_BY(mu_) = 0;         // removals asked
  uint64_t removals_done_ ABSL_GUARDED_BY(mu_) = 0;          // ... and done
  Counters& counters_;                                       // shared_'s
  std::atomic<uint64_t> accepted_here_{0}, active_here_{0};  // this loop's connections
  // Connections per group, over all loops.
  void GroupAdded(uint64_t group);
  void GroupRemoved(uint64_t group);
  bool GroupFull(uint64_t group) const;
  // 4-tuples of the relay's live connections (TupleKey): taken (false if one is already), freed.
  bool TakeTuple(const std::string& key);
  void FreeTuple(const std::string& key);

  // The loop's own (no lock).
  std::map<Conn*, std::unique_ptr<Conn>> conns_;
  std::vector<std::unique_ptr<Conn>> closed_;  // closed in this batch of events, freed after it
  std::vector<Conn*> again_;  // read in user space, not done at the end of their turn
  // Empty pipes between uses (read end, write end); at most options_.pipe_pool; emptied when
  // accept runs out of descriptors.
  std::vector<std::pair<UniqueFd, UniqueFd>> pipe_pool_;
  bool AcquirePipe(Conn* c, int d);
  void ReleasePipe(Conn* c, int d);
  struct GroupBytes {
    size_t bytes = 0;
    std::set<Conn*> held;  // not reading for the budget: pumped again once under it
  };
  std::map<uint64_t, GroupBytes> group_bytes_;
  std::mt19937 rng_{std::random_device{}()};
  std::vector<std::pair<int, absl::Time>> paused_listeners_;  // out of descriptors: until then
  std::map<int, std::shared_ptr<Listener>> live_listeners_;
};

}  // namespace shunt::agent
