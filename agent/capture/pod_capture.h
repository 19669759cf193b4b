// In-pod capture (issue 9, docs/capture.md): inside a meshed pod's network namespace, an nftables
// table of our own hands new inbound TCP connections to the agent's transparent listener there
// (TPROXY keeps the client's address), and policy routing brings the pod's replies to the agent's
// upstream connections (made as the client's address, IP_TRANSPARENT) back to the agent's sockets
// instead of out of the pod. The same mechanism as Istio's in-pod mode; in the pod rather than on
// the node because CNIs that route with eBPF skip the node's netfilter (PITFALLS 15).
//
//   prerouting: new TCP connections (a SYN) to an address of the pod, not from `lo` (the pod's
//     own and the agent's upstream connections) nor from `skip_sources` (kubelet's probes, from
//     the node) nor from `mesh_sources` (meshed pods of the node: the fast path's): tproxy to
//     `port`;
//   output: the agent's sockets carry `agent_mark`: their connections get the connection mark
//     `route_mark`, and every packet of such a connection (the pod's replies) the packet mark;
//   ip rule fwmark route_mark/mask lookup route_table; route_table: local 0/0 dev lo (v4 and v6).
//
// Nothing else in the namespace is touched: one table, one rule and one route per family, all
// ours, replaced as a whole (idempotent) and removed without a trace.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace shunt::agent {

inline constexpr char kCaptureTable[] = "shunt_capture";

struct CaptureOptions {
  uint16_t port = 15008;        // the agent's transparent listener in the pod's namespace
  uint32_t agent_mark = 0x5a0;  // SO_MARK of the agent's upstream sockets there
  uint32_t route_mark = 0x5a1;  // routed to the agent's sockets (packet and connection mark)
  uint32_t mark_mask = 0xfff;   // the bits of the mark that are ours
  uint32_t route_table = 1441;  // policy routing table, and the rule's priority
  // Sources never captured: kubelet's health probes (the node's addresses), as CIDRs.
  std::vector<std::string> skip_sources;
  // The meshed pods of this node, as addresses: their connections were checked at connect() and
  // are spliced by the fast path, not relayed.
  std::vector<std::string> mesh_sources;
  // Ports of the pod that need L7 (access policies with L7 rules there): "8081", "9000-9010",
  // or "*" for all. Captured from the mesh sources too: only the proxy can decide requests.
  std::vector<std::string> l7_ports;
};

// The nftables script InstallCapture runs (one transaction: the table is replaced as a whole).
// `capture` false: the output chain only (StopCapturing).
absl::StatusOr<std::string> CaptureRuleset(const CaptureOptions& options, bool capture = true);

// Installs (or replaces) the table, rules and routes in the namespace. Idempotent.
absl::Status InstallCapture(int netns_fd, const CaptureOptions& options);
// No new connection is captured any more, but the relay's open connections go on (their
// replies are still routed to it): the first step of releasing a pod; RemoveCapture once they
// ended.
absl::Status StopCapturing(int netns_fd, const CaptureOptions& options);
// Removes them; what is not there is fine.
absl::Status RemoveCapture(int netns_fd, const CaptureOptions& options);
// Whether the table is there.
absl::StatusOr<bool> CaptureInstalled(int netns_fd);

// A listener inside the namespace for connections TPROXY hands over: IP_TRANSPARENT (or
// IPV6_TRANSPARENT, v6 only), non-blocking, on `port` of every address of `family`.
absl::StatusOr<UniqueFd> OpenTransparentListener(int netns_fd, int family, uint16_t port);

// A non-blocking connection from inside the namespace to `to`, as `as` (its address and port;
// port 0: the kernel's choice at connect(), IP_BIND_ADDRESS_NO_PORT), carrying `mark` (SO_MARK)
// so that the namespace's rules route the replies to it. The connect is in progress when it
// returns. EADDRINUSE: that port is taken there (choose another).
absl::StatusOr<UniqueFd> ConnectTransparent(int netns_fd, const sockaddr_storage& as,
                                            const sockaddr_storage& to, uint32_t mark);

}  // namespace shunt::agent
