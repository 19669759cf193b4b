#include "agent/capture/pod_capture.h"

#include <algorithm>

#include <arpa/inet.h>
#include <linux/fib_rules.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <nftables/libnftables.h>
#include <libmnl/libmnl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <memory>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "agent/capture/netns.h"
#include "common/errno_status.h"
#include "common/log.h"

namespace shunt::agent {
namespace {

// "a.b.c.d[/n]" or an IPv6 one: which family, or 0 if neither.
// (It goes into an nft script: nothing but an address and a prefix length passes.)
int CidrFamily(const std::string& cidr) {
  std::vector<std::string> parts = absl::StrSplit(cidr, absl::MaxSplits('/', 1));
  unsigned char buf[sizeof(in6_addr)];
  int family = 0;
  if (inet_pton(AF_INET, parts[0].c_str(), buf) == 1) family = AF_INET;
  if (inet_pton(AF_INET6, parts[0].c_str(), buf) == 1) family = AF_INET6;
  if (family && parts.size() == 2) {
    int len = 0;
    if (parts[1].empty() || parts[1].size() > 3 || !absl::SimpleAtoi(parts[1], &len) ||
        parts[1].find_first_not_of("0123456789") != std::string::npos || len < 0 ||
        len > (family == AF_INET ? 32 : 128)) {
      return 0;
    }
  }
  return family;
}

// Runs an nft script in the calling thread's network namespace (libnftables opens its netlink
// socket there).
absl::Status RunNft(const std::string& script) {
  std::unique_ptr<nft_ctx, void (*)(nft_ctx*)> ctx(nft_ctx_new(NFT_CTX_DEFAULT), nft_ctx_free);
  if (!ctx) return absl::InternalError("nft_ctx_new failed");
  nft_ctx_buffer_output(ctx.get());
  nft_ctx_buffer_error(ctx.get());
  if (nft_run_cmd_from_buffer(ctx.get(), script.c_str()) != 0) {
    std::string err = nft_ctx_get_error_buffer(ctx.get());
    while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
    return absl::FailedPreconditionError(absl::StrCat("nftables: ", err));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> RunNftOutput(const std::string& script) {
  std::unique_ptr<nft_ctx, void (*)(nft_ctx*)> ctx(nft_ctx_new(NFT_CTX_DEFAULT), nft_ctx_free);
  if (!ctx) return absl::InternalError("nft_ctx_new failed");
  nft_ctx_buffer_output(ctx.get());
  nft_ctx_buffer_error(ctx.get());
  if (nft_run_cmd_from_buffer(ctx.get(), script.c_str()) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("nftables: ", nft_ctx_get_error_buffer(ctx.get())));
  }
  return std::string(nft_ctx_get_output_buffer(ctx.get()));
}

// One rtnetlink request, answered by an ACK. `ok_errno`: an error that means "already so"
// (EEXIST when adding, ENOENT/ESRCH when deleting).
absl::Status RtRequest(mnl_socket* nl, nlmsghdr* nlh, std::initializer_list<int> ok_errno,
                       const char* what) {
  const unsigned seq = nlh->nlmsg_seq;
  const unsigned portid = mnl_socket_get_portid(nl);
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) return ErrnoStatus(errno, what);
  char buf[MNL_SOCKET_BUFFER_SIZE];
  const ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof(buf));
  if (n < 0) return ErrnoStatus(errno, what);
  if (mnl_cb_run(buf, n, seq, portid, nullptr, nullptr) < 0) {
    const int err = errno;
    for (int ok : ok_errno) {
      if (err == ok) return absl::OkStatus();
    }
    return ErrnoStatus(err, what);
  }
  return absl::OkStatus();
}

struct Mnl {
  mnl_socket* nl = nullptr;
  ~Mnl() {
    if (nl) mnl_socket_close(nl);
  }
};

// One rule or route request of `family`: added (NLM_F_CREATE | NLM_F_EXCL; there already is
// fine) or deleted (not there is fine).
template <typename Header, typename Fill>
absl::Status RtChange(mnl_socket* nl, uint16_t add_type, uint16_t del_type, bool add,
                      const char* what, Fill fill) {
  static unsigned seq = static_cast<unsigned>(time(nullptr));
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  nlh->nlmsg_type = add ? add_type : del_type;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (add ? NLM_F_CREATE | NLM_F_EXCL : 0);
  nlh->nlmsg_seq = ++seq;
  auto* hdr = static_cast<Header*>(mnl_nlmsg_put_extra_header(nlh, sizeof(Header)));
  if (absl::Status s = fill(nlh, hdr); !s.ok()) return s;
  return RtRequest(nl, nlh, add ? std::initializer_list<int>{EEXIST}
                                : std::initializer_list<int>{ENOENT, ESRCH},
                   absl::StrCat(add ? "add" : "delete", " the capture's ", what).c_str());
}

// The rule (fwmark route_mark/mask -> route_table) and the route (local 0/0 dev lo in route_table)
// of one family, added or deleted.
absl::Status Routing(mnl_socket* nl, const CaptureOptions& o, int family, bool add) {
  const char* fam = family == AF_INET ? "IPv4" : "IPv6";
  absl::Status s = RtChange<fib_rule_hdr>(
      nl, RTM_NEWRULE, RTM_DELRULE, add, "ip rule", [&](nlmsghdr* nlh, fib_rule_hdr* frh) {
        frh->family = static_cast<uint8_t>(family);
        frh->action = FR_ACT_TO_TBL;
        frh->table = RT_TABLE_UNSPEC;
        mnl_attr_put_u32(nlh, FRA_FWMARK, o.route_mark);
        mnl_attr_put_u32(nlh, FRA_FWMASK, o.mark_mask);
        mnl_attr_put_u32(nlh, FRA_TABLE, o.route_table);
        mnl_attr_put_u32(nlh, FRA_PRIORITY, o.route_table);
        return absl::OkStatus();
      });
  if (s.ok()) {
    s = RtChange<rtmsg>(nl, RTM_NEWROUTE, RTM_DELROUTE, add, "local route",
                        [&](nlmsghdr* nlh, rtmsg* rtm) {
                          rtm->rtm_family = static_cast<uint8_t>(family);
                          rtm->rtm_dst_len = 0;
                          rtm->rtm_table = RT_TABLE_UNSPEC;
                          rtm->rtm_protocol = RTPROT_STATIC;
                          rtm->rtm_scope = RT_SCOPE_HOST;
                          rtm->rtm_type = RTN_LOCAL;
                          mnl_attr_put_u32(nlh, RTA_TABLE, o.route_table);
                          const unsigned lo = if_nametoindex("lo");
                          if (lo == 0) return ErrnoStatus(errno, "the namespace's lo");
                          mnl_attr_put_u32(nlh, RTA_OIF, lo);
                          return absl::OkStatus();
                        });
  }
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(fam, ": ", s.message()));
  return absl::OkStatus();
}

absl::Status RoutingAll(const CaptureOptions& o, bool add) {
  Mnl m;
  m.nl = mnl_socket_open(NETLINK_ROUTE);
  if (!m.nl) return ErrnoStatus(errno, "open rtnetlink");
  if (mnl_socket_bind(m.nl, 0, MNL_SOCKET_AUTOPID) < 0) return ErrnoStatus(errno, "bind rtnetlink");
  absl::Status first;
  for (int family : {AF_INET, AF_INET6}) {
    absl::Status s = Routing(m.nl, o, family, add);
    // A namespace without IPv6 (ipv6.disable=1, disable_ipv6 on lo): captured in IPv4 only.
    if (family == AF_INET6 && !s.ok() &&
        (absl::IsUnimplemented(s) || absl::IsPermissionDenied(s) ||
         s.message().find("not supported") != std::string::npos)) {
      SHUNT_LOG_EVERY_N_SEC(INFO, 60) << "capture without IPv6: " << s.message();
      continue;
    }
    if (first.ok()) first = s;
  }
  return first;
}

}  // namespace

absl::StatusOr<std::string> CaptureRuleset(const CaptureOptions& o, bool capture) {
  if ((o.agent_mark & ~o.mark_mask) || (o.route_mark & ~o.mark_mask) || o.agent_mark == 0 ||
      o.route_mark == 0 || o.agent_mark == o.route_mark) {
    return absl::InvalidArgumentError("capture marks must be distinct, non-zero, within the mask");
  }
  // Each list by family, one entry once (an address twice would make nft refuse the set).
  struct Split {
    std::vector<std::string> v4, v6;
  };
  auto split = [](const std::vector<std::string>& list) -> absl::StatusOr<Split> {
    Split out;
    std::set<std::string> seen;
    for (const auto& c : list) {
      if (!seen.insert(c).second) continue;
      switch (CidrFamily(c)) {
        case AF_INET: out.v4.push_back(c); break;
        case AF_INET6: out.v6.push_back(c); break;
        default:
          return absl::InvalidArgumentError(absl::StrCat("not an address or CIDR: \"", c, "\""));
      }
    }
    return out;
  };
  for (const std::string& p : o.l7_ports) {
    // Ours, but written into a script: only digits, one dash between them, or "*".
    const bool ok = p == "*" || (!p.empty() && p.size() <= 11 && p.front() != '-' &&
                                 p.back() != '-' &&
                                 std::all_of(p.begin(), p.end(), [](char c) {
                                   return (c >= '0' && c <= '9') || c == '-';
                                 }) &&
                                 std::count(p.begin(), p.end(), '-') <= 1);
    if (!ok) return absl::InvalidArgumentError(absl::StrCat("not a port or range: \"", p, "\""));
  }
  auto skip = split(o.skip_sources);
  if (!skip.ok()) return skip.status();
  auto mesh = split(o.mesh_sources);
  if (!mesh.ok()) return mesh.status();
  const std::vector<std::string>& skip4 = skip->v4;
  const std::vector<std::string>& skip6 = skip->v6;
  const std::string keep = absl::StrFormat("0x%x", ~o.mark_mask);
  const std::string route = absl::StrFormat("0x%x", o.route_mark);
  const std::string mask = absl::StrFormat("0x%x", o.mark_mask);
  std::string s;
  // Replaced as a whole, in one transaction (no moment without capture, nothing of an older
  // version left).
  absl::StrAppend(&s, "table inet ", kCaptureTable, "\n", "delete table inet ", kCaptureTable,
                  "\n", "table inet ", kCaptureTable, " {\n");
  if (capture && !skip4.empty()) {
    absl::StrAppend(&s, "  set skip4 { type ipv4_addr; flags interval; auto-merge; elements = { ",
                    absl::StrJoin(skip4, ", "), " } }\n");
  }
  if (capture && !skip6.empty()) {
    absl::StrAppend(&s, "  set skip6 { type ipv6_addr; flags interval; auto-merge; elements = { ",
                    absl::StrJoin(skip6, ", "), " } }\n");
  }
  if (capture && !mesh->v4.empty()) {
    absl::StrAppend(&s, "  set mesh4 { type ipv4_addr; flags interval; auto-merge; elements = { ",
                    absl::StrJoin(mesh->v4, ", "), " } }\n");
  }
  if (capture && !mesh->v6.empty()) {
    absl::StrAppend(&s, "  set mesh6 { type ipv6_addr; flags interval; auto-merge; elements = { ",
                    absl::StrJoin(mesh->v6, ", "), " } }\n");
  }
  if (capture) {
  absl::StrAppend(&s, "  chain prerouting {\n",
                  "    type filter hook prerouting priority mangle; policy accept;\n",
                  "    iifname \"lo\" return\n", "    meta l4proto != tcp return\n");
  if (!skip4.empty()) absl::StrAppend(&s, "    ip saddr @skip4 return\n");
  if (!skip6.empty()) absl::StrAppend(&s, "    ip6 saddr @skip6 return\n");
  // Meshed pods of this node: checked at connect(), spliced by the fast path; but for the ports
  // that need L7, which only the proxy can decide.
  const bool all_l7 = std::find(o.l7_ports.begin(), o.l7_ports.end(), "*") != o.l7_ports.end();
  std::string not_l7;
  if (!o.l7_ports.empty() && !all_l7) {
    not_l7 = absl::StrCat("tcp dport != { ", absl::StrJoin(o.l7_ports, ", "), " } ");
  }
  if (!mesh->v4.empty() && !all_l7) absl::StrAppend(&s, "    ip saddr @mesh4 ", not_l7, "return\n");
  if (!mesh->v6.empty() && !all_l7) absl::StrAppend(&s, "    ip6 saddr @mesh6 ", not_l7, "return\n");
  // The listener's own port is not handed to itself (the relay refuses connections to it).
  absl::StrAppend(&s, "    tcp dport ", o.port, " return\n");
  // New connections only: meshing a running pod resets nothing. Their destination is the
  // pod's own address: no mark is needed to deliver them locally.
  for (const char* fam : {"ip", "ip6"}) {
    absl::StrAppend(&s, "    meta nfproto ", fam == std::string("ip") ? "ipv4" : "ipv6",
                    " tcp flags & (fin | syn | rst | ack) == syn fib daddr type local tproxy ", fam,
                    " to :", o.port, " accept\n");
  }
  // No listener (the agent crashed, and its successor is not up yet): tproxy finds no socket and
  // lets the packet on, which would reach the pod unenforced. Dropped instead: the client's TCP
  // sends its SYN again (after 1 s, then 2 s...) and is served once an agent listens. A stopped
  // agent (SIGTERM without successor) removes this chain first (StopCapturing): that is the
  // deliberate way out.
  absl::StrAppend(&s, "    tcp flags & (fin | syn | rst | ack) == syn fib daddr type local drop\n");
  absl::StrAppend(&s, "  }\n");
  }
  absl::StrAppend(&s, "  chain output {\n",
                  "    type route hook output priority mangle; policy accept;\n",
                  absl::StrFormat("    meta mark & %s == 0x%x ct mark set ct mark & %s | %s\n",
                                  mask, o.agent_mark, keep, route),
                  "    ct mark & ", mask, " == ", route, " meta mark set meta mark & ", keep, " | ",
                  route, "\n", "  }\n", "}\n");
  return s;
}

absl::Status InstallCapture(int netns_fd, const CaptureOptions& o) {
  auto script = CaptureRuleset(o);
  if (!script.ok()) return script.status();
  NetnsScope in(netns_fd);
  if (!in.ok()) return in.status();
  // Routes first: a captured connection's upstream needs them from its first packet.
  if (absl::Status s = RoutingAll(o, /*add=*/true); !s.ok()) return s;
  return RunNft(*script);
}

absl::Status StopCapturing(int netns_fd, const CaptureOptions& o) {
  auto script = CaptureRuleset(o, /*capture=*/false);
  if (!script.ok()) return script.status();
  NetnsScope in(netns_fd);
  if (!in.ok()) return in.status();
  return RunNft(*script);
}

absl::Status RemoveCapture(int netns_fd, const CaptureOptions& o) {
  NetnsScope in(netns_fd);
  if (!in.ok()) return in.status();
  // The table first: no new connection is handed to a listener about to go.
  absl::Status s = RunNft(absl::StrCat("table inet ", kCaptureTable, "\ndelete table inet ",
                                       kCaptureTable, "\n"));
  absl::Status r = RoutingAll(o, /*add=*/false);
  return s.ok() ? r : s;
}

absl::StatusOr<bool> CaptureInstalled(int netns_fd) {
  NetnsScope in(netns_fd);
  if (!in.ok()) return in.status();
  auto out = RunNftOutput("list tables inet");
  if (!out.ok()) return out.status();
  return out->find(absl::StrCat("table inet ", kCaptureTable, "\n")) != std::string::npos ||
         absl::EndsWith(*out, absl::StrCat("table inet ", kCaptureTable));
}

absl::StatusOr<UniqueFd> OpenTransparentListener(int netns_fd, int family, uint16_t port) {
  NetnsScope in(netns_fd);
  if (!in.ok()) return in.status();
  UniqueFd fd(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, "transparent listener: socket");
  const int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_storage addr{};
  socklen_t len;
  if (family == AF_INET) {
    if (setsockopt(fd.get(), SOL_IP, IP_TRANSPARENT, &one, sizeof(one)) != 0) {
      return ErrnoStatus(errno, "transparent listener: IP_TRANSPARENT (needs CAP_NET_ADMIN)");
    }
    auto* a = reinterpret_cast<sockaddr_in*>(&addr);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    len = sizeof(sockaddr_in);
  } else {
    if (setsockopt(fd.get(), SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one)) != 0 ||
        setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) {
      return ErrnoStatus(errno, "transparent listener: IPV6_TRANSPARENT (needs CAP_NET_ADMIN)");
    }
    auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    len = sizeof(sockaddr_in6);
  }
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    return ErrnoStatus(errno, absl::StrCat("transparent listener: bind port ", port));
  }
  if (listen(fd.get(), 4096) != 0) return ErrnoStatus(errno, "transparent listener: listen");
  return fd;
}

absl::StatusOr<UniqueFd> ConnectTransparent(int netns_fd, const sockaddr_storage& as,
                                            const sockaddr_storage& to, uint32_t mark) {
  if (as.ss_family != to.ss_family) {
    return absl::InvalidArgumentError("upstream: client and destination of different families");
  }
  NetnsScope in(netns_fd);
  if (!in.ok()) return in.status();
  const int family = as.ss_family;
  UniqueFd fd(socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, "upstream: socket");
  const int one = 1;
  const bool v4 = family == AF_INET;
  if (setsockopt(fd.get(), v4 ? SOL_IP : SOL_IPV6, v4 ? IP_TRANSPARENT : IPV6_TRANSPARENT, &one,
                 sizeof(one)) != 0) {
    return ErrnoStatus(errno, "upstream: IP_TRANSPARENT");
  }
  if (setsockopt(fd.get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) {
    return ErrnoStatus(errno, "upstream: SO_MARK");
  }
  // The client's address, with the port the caller chose, or (port 0) one of the kernel's
  // choosing at connect() (IP_BIND_ADDRESS_NO_PORT: by the 4-tuple, but the kernel does not see
  // the mirror image of a client's own connection, so it may pick the client's port).
  const uint16_t port =
      ntohs(v4 ? reinterpret_cast<const sockaddr_in*>(&as)->sin_port
               : reinterpret_cast<const sockaddr_in6*>(&as)->sin6_port);
  if (port == 0 &&
      setsockopt(fd.get(), SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) != 0) {
    return ErrnoStatus(errno, "upstream: IP_BIND_ADDRESS_NO_PORT");
  }
  const sockaddr_storage bind_addr = as;
  const socklen_t len = v4 ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&bind_addr), len) != 0) {
    return ErrnoStatus(errno, absl::StrCat("upstream: bind to the client's address, port ", port));
  }
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&to), len) != 0 && errno != EINPROGRESS) {
    return ErrnoStatus(errno, "upstream: connect");
  }
  return fd;
}

}  // namespace shunt::agent
