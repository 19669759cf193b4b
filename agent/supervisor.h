// `shunt-agent --supervise`: a small parent process that runs the agent as its child, restarts it
// at once when it crashes, and keeps a copy of every capture listener the agent has (docs/agent.md,
// "Supervised"). The copy is what makes a crash cheap for new connections: without it, a killed
// agent's listeners close with it, and until the next agent listens again each captured pod's
// table drops new SYNs (nothing reaches a pod unenforced), which clients send again only after
// their 1 s SYN timeout. With the supervisor's copies the listening sockets never close: new
// connections complete their handshake in the listeners' backlog and the next agent accepts them
// (HAProxy's master-worker mode keeps its listeners across a worker's death the same way).
//
// The child gets one end of a SOCK_SEQPACKET socket pair (`--keeper-fd`). On it the agent asks
// "TAKE" once at start and receives what the supervisor holds (handoff.h's messages: "L ..." with
// a descriptor, then "END"), and sends "SET" followed by its listeners whenever their set changed
// (an empty set when it handed them to a successor or released the pods): the supervisor holds
// the last set only.
//
// Exit and restart: SIGTERM/SIGINT are passed to the agent, and the supervisor exits as it does.
// An agent that exits 0 (stopped, or handed over to a successor) or 2 (a configuration error:
// starting again would not help) ends the supervisor with that code; one killed by a signal or
// exiting otherwise is started again, at once the first time, then after 1, 2, 4 ... 30 s while it
// keeps failing within 10 s of its start. The agent gets SIGKILL if the supervisor dies
// (PR_SET_PDEATHSIG): nothing is left running without it.
#pragma once

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/capture/handoff.h"
#include "common/unique_fd.h"

namespace shunt::agent {

// Runs the agent `argv` (argv[0] is executed: this binary) under supervision until it ends;
// returns the exit code for the supervisor.
int Supervise(std::vector<std::string> argv);

// The agent's end of the socket pair (--keeper-fd).
class KeeperClient {
 public:
  explicit KeeperClient(int fd);  // takes it
  // The listeners the supervisor kept from the agent before this one (none on a first start).
  absl::StatusOr<std::vector<HandedListener>> Take();
  // The agent's listeners as they are now (duplicates, sent to the supervisor; `listeners` keep
  // theirs). An error is logged and ends the keeping: the listeners are the agent's alone then.
  void Set(const std::vector<HandedListener>& listeners);

 private:
  absl::Mutex mu_;
  UniqueFd fd_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shunt::agent
