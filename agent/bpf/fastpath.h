// The in-node fast path in the kernel: owns the fastpath BPF object (sock_ops + sk_msg), its pins
// under the bpffs and its attachments. The agent's reconciler writes the pods and endpoints maps
// through it; the metrics collector reads the per-CPU counters through it at scrape time.
//
// Restart safety: maps, the sock_ops link and the sk_msg program are pinned under `pin_dir`. A new
// agent reuses the pinned maps (established sockets stay in the sockhash and keep being redirected)
// and swaps its programs in atomically (bpf_link_update); nothing is detached in between.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shunt/fastpath_abi.h"

struct shunt_fastpath;  // the generated skeleton

namespace shunt::agent {

struct FastpathConfig {
  std::string pin_dir;      // e.g. /sys/fs/bpf/shunt/<node>; created if absent
  std::string cgroup_root;  // absolute path of the cgroup v2 dir whose subtree holds the pods
  uint32_t sockhash_size = 65536;
  uint32_t pods_size = 4096;
  uint32_t endpoints_size = 8192;
  uint32_t stats_size = 16384;
  uint32_t listeners_size = 16384;
  // Splice only sockets whose reads the sockmap receive path serves like TCP (docs/fastpath.md).
  // false: the fast path as it was before, every meshed pair spliced; for benchmarks only.
  bool protect = true;
  // The L4 metrics of every connection of a meshed pod (metrics/l4_metrics.h).
  bool connection_metrics = true;
  // Bytes a reading receiver may have queued by redirects; 0: tcp_rmem + tcp_wmem maxima.
  uint32_t max_queued = 0;
};

// Names of the pins that are not maps.
inline constexpr char kSockopsLinkPin[] = "link_sockops";
inline constexpr char kSkMsgProgPin[] = "prog_sk_msg";
inline constexpr const char* kTracingLinkPins[] = {
    "link_read_enter",   "link_read_exit", "link_read_done",     "link_splice_enter",
    "link_space_adjust", "link_ioctl",     "link_bpf_ioctl"};

// How the fast path sees the reads of a spliced socket (docs/fastpath.md), chosen at start-up by
// what the kernel allows.
enum class ReadTracking {
  kOff,              // --fastpath-protect=false
  kTcpBpfRecvmsg,    // fentry + fexit on tcp_bpf_recvmsg: before and after each read
  kSockRecvLength,   // tp_btf/sock_recv_length: after each read (Linux >= 6.3)
  kNone,             // neither: readers are never seen, so nothing is redirected (counted)
};
const char* ReadTrackingName(ReadTracking t);

struct IpKey {
  uint32_t addr[4];  // network order, IPv4 v4-mapped
  friend bool operator<(const IpKey& a, const IpKey& b) {
    return std::lexicographical_compare(a.addr, a.addr + 4, b.addr, b.addr + 4);
  }
  friend bool operator==(const IpKey& a, const IpKey& b) {
    return std::equal(a.addr, a.addr + 4, b.addr);
  }
};
// Parses an IPv4 or IPv6 literal into the map's 16-byte form.
absl::StatusOr<IpKey> ParseIpKey(const std::string& ip);

// The pending pods map key of a pod uid (NUL-padded); nullopt if the uid is empty or too long.
std::optional<shunt_pod_uid> PodUidKey(const std::string& uid);
std::string UidOfKey(const shunt_pod_uid& key);

class Fastpath {
 public:
  // Loads the programs (reusing pinned maps), attaches sock_ops to the cgroup root through a
  // pinned bpf_link (multi-attach: other programs on the cgroup are left alone) and sk_msg to the
  // sockhash.
  static absl::StatusOr<std::unique_ptr<Fastpath>> Install(const FastpathConfig& config);
  // Removes every program, link, pin and map that Install created under `pin_dir`. Works without
  // a running agent and on a partial install; NotFound-free (missing pieces are skipped).
  static absl::Status Uninstall(const std::string& pin_dir);

  ~Fastpath();  // closes fds; pinned objects stay in the kernel
  Fastpath(const Fastpath&) = delete;
  Fastpath& operator=(const Fastpath&) = delete;

  // Map writers (called by the reconciler).
  absl::Status UpsertPod(uint64_t cgroup_id, const shunt_pod& pod);
  absl::Status DeletePod(uint64_t cgroup_id);
  absl::StatusOr<std::map<uint64_t, shunt_pod>> ListPods() const;
  // Pods of this node known to policy, by uid (the pods map entry their cgroup gets at mkdir).
  absl::Status UpsertPendingPod(const std::string& uid, const shunt_pod& pod);
  absl::Status DeletePendingPod(const std::string& uid);
  absl::StatusOr<std::map<std::string, shunt_pod>> ListPendingPods() const;
  absl::Status UpsertEndpoint(const IpKey& ip, uint32_t workload_id);
  absl::Status DeleteEndpoint(const IpKey& ip);
  absl::StatusOr<std::map<IpKey, uint32_t>> ListEndpoints() const;

  // Counters, summed over CPUs.
  struct MsgStat {
    shunt_msg_stats_key key;
    shunt_msg_stats value;
  };
  absl::StatusOr<std::vector<MsgStat>> ReadMsgStats() const;
  struct SockStat {
    shunt_sock_stats_key key;
    uint64_t value;
  };
  absl::StatusOr<std::vector<SockStat>> ReadSockStats() const;
  // Drops the counters of a workload that left the node (so its series disappear).
  absl::Status DeleteStatsOf(uint32_t workload_id);

  // The connection events' ring buffer (metrics/l4_reader.h).
  int l4_events_fd() const;

  const FastpathConfig& config() const { return config_; }
  ReadTracking read_tracking() const { return read_tracking_; }
  // Whether a receiver's sockmap queue is held under a quarter of its receive buffer (kernels
  // whose TCP drops in-window segments once a receiver's memory is full: docs/fastpath.md).
  bool queue_bound_by_receive_buffer() const { return rcvbuf_bound_; }

 private:
  explicit Fastpath(FastpathConfig config) : config_(std::move(config)) {}
  absl::Status Load();
  absl::Status AttachSockops();
  absl::Status AttachSkMsg();
  absl::Status AttachTracing();

  FastpathConfig config_;
  shunt_fastpath* skel_ = nullptr;
  int cgroup_fd_ = -1;
  int ncpus_ = 1;
  ReadTracking read_tracking_ = ReadTracking::kOff;
  bool trace_splice_ = false;     // fentry on tcp_splice_read
  bool space_adjust_ = false;     // else tp_btf/tcp_rcv_space_adjust in the splice syscall
  bool rcvbuf_bound_ = false;     // shunt_rcvbuf_bound: queues held under the receive buffer
  bool unlearned_plain_ = false;  // shunt_unlearned_plain: FIONREAD unseen, reads seen
  bool trace_ioctl_ = false;      // fentry on tcp_ioctl (FIONREAD of sockhash members on 6.1)
  bool trace_bpf_ioctl_ = false;  // fentry on tcp_bpf_ioctl (theirs where it exists)
};
using FastpathPtr = std::unique_ptr<Fastpath>;

}  // namespace shunt::agent
