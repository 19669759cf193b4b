// The capture listeners handed from a running agent to the one replacing it (docs/capture.md,
// "Restarts"): a DaemonSet rolling update with maxSurge, or a restart on the node, must not leave
// a moment without a listener in a captured pod (TPROXY would let new connections past the
// policy), nor reset what the old agent relays.
//
// Over a Unix SOCK_SEQPACKET socket (`--handoff-socket`), as Envoy's hot restart and HAProxy's
// seamless reload do: the new agent asks ("SHUNT-HANDOFF 1"), the old one stops its own policy
// work (no more map writes: the new agent's from now on) and its HTTP endpoints (the ports are the
// new one's), then sends each listener as one message: a line "L <pod uid> <netns inode>
// <family> <port>" and the descriptor (SCM_RIGHTS), then "END". The listening sockets never close
// on the way, so connections arriving meanwhile wait in their backlog and are accepted by the new
// agent. The old agent goes on relaying the connections it has until they end (or until its drain
// deadline after SIGTERM).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/unique_fd.h"

namespace shunt::agent {

struct HandedListener {
  std::string pod_uid;
  uint64_t netns_ino = 0;  // the namespace it listens in (a new sandbox does not take it)
  int family = 0;          // AF_INET, AF_INET6
  uint16_t port = 0;
  UniqueFd fd;
};

// The old agent's side: serves one successor.
class HandoffServer {
 public:
  // Runs once, on the server's thread, when a successor asks: stops what the successor takes over
  // and returns the listeners (duplicates: the caller stopped serving its own).
  using Surrender = std::function<std::vector<HandedListener>()>;
  // Binds `path` (a stale socket of a dead agent is replaced).
  static absl::StatusOr<std::unique_ptr<HandoffServer>> Start(const std::string& path,
                                                              Surrender surrender);
  ~HandoffServer();  // stops; removes `path` if it is still this server's
  HandoffServer(const HandoffServer&) = delete;
  HandoffServer& operator=(const HandoffServer&) = delete;
  bool handed_over() const { return handed_over_.load(); }

 private:
  HandoffServer() = default;
  void Serve();

  std::string path_;
  ino_t ino_ = 0;  // of the socket file it bound
  UniqueFd listen_;
  UniqueFd stop_;  // eventfd
  Surrender surrender_;
  std::atomic<bool> handed_over_{false};
  std::thread thread_;
};

// The new agent's side: the listeners of the agent serving `path`, which stopped serving them.
// None (and OK) when no agent serves it (no file, or a stale one); an error when one answered
// wrongly or not within `timeout`.
// `reached` (optional): set when an agent answered.
absl::StatusOr<std::vector<HandedListener>> TakeOver(const std::string& path,
                                                     absl::Duration timeout,
                                                     bool* reached = nullptr);

// The messages both protocols share: each listener as "L <pod uid> <netns inode> <family> <port>"
// with its descriptor, then "END". Also what the supervising process (supervisor.h) and its agent
// exchange over their socket pair.
absl::Status SendListeners(int fd, const std::vector<HandedListener>& listeners);
absl::StatusOr<std::vector<HandedListener>> ReceiveListeners(int fd);

}  // namespace shunt::agent
