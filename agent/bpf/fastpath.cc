#include "agent/bpf/fastpath.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "agent/bpf/kernel_probe.h"
#include "agent/bpf/pinned_link.h"
#include "common/errno_status.h"
#include "common/files.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "fastpath.skel.h"

namespace shunt::agent {
namespace {

// Also the names of earlier layouts, which an upgraded node may still have pinned.
constexpr const char* kMapNames[] = {
    SHUNT_MAP_SOCKHASH,  SHUNT_MAP_SOCKSTATE,    SHUNT_MAP_READERS,
    SHUNT_MAP_READER_SLOTS, SHUNT_MAP_LISTENERS, SHUNT_MAP_CONTROL,
    SHUNT_MAP_PODS,      SHUNT_MAP_PENDING_PODS, SHUNT_MAP_ENDPOINTS,    SHUNT_MAP_MSG_STATS,
    SHUNT_MAP_SOCK_STATS, SHUNT_MAP_L4, SHUNT_MAP_L4_EVENTS,
    // Shared with socklb (which unpins it too): the Service address of rewritten sockets.
    "shunt_lbsk_v1", "shunt_skst_v1", "shunt_skst_v2", "shunt_rdr_v1"};


// Sums a per-CPU value array of `n` u64 words per CPU into `out`.
void SumPerCpu(const std::vector<uint64_t>& values, int ncpus, size_t words, uint64_t* out) {
  for (size_t w = 0; w < words; ++w) out[w] = 0;
  for (int c = 0; c < ncpus; ++c) {
    for (size_t w = 0; w < words; ++w) out[w] += values[c * words + w];
  }
}

template <typename Key>
absl::StatusOr<std::vector<Key>> MapKeys(int fd) {
  std::vector<Key> keys;
  Key cur{}, next{};
  const Key* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    keys.push_back(next);
    cur = next;
    prev = &cur;
  }
  if (errno != ENOENT) return ErrnoStatus(errno, "bpf_map_get_next_key");
  return keys;
}

// Uninstall without losing bytes: a socket leaves the sockhash (and gets TCP's own receive path
// back) only once nothing redirected waits unread in its sockmap queue, which the kernel would
// free with it. Sets the drain flag (no more redirects, no new spliced sockets), then removes the
// sockets whose queue is empty, until none is left or `timeout` passes.
void DrainSockhash(const std::string& pin_dir, std::chrono::milliseconds timeout) {
  const std::string ctl_pin = absl::StrCat(pin_dir, "/", SHUNT_MAP_CONTROL);
  const std::string sk_pin = absl::StrCat(pin_dir, "/", SHUNT_MAP_SOCKHASH);
  const std::string rdr_pin = absl::StrCat(pin_dir, "/", SHUNT_MAP_READERS);
  const std::string rdv_pin = absl::StrCat(pin_dir, "/", SHUNT_MAP_READER_SLOTS);
  if (!PathExists(ctl_pin) || !PathExists(sk_pin)) return;
  const int ctl = bpf_obj_get(ctl_pin.c_str()), sk = bpf_obj_get(sk_pin.c_str());
  const int rdr = PathExists(rdr_pin) ? bpf_obj_get(rdr_pin.c_str()) : -1;
  const int rdv = PathExists(rdv_pin) ? bpf_obj_get(rdv_pin.c_str()) : -1;
  // Sockets spliced by an agent of the layout before (shunt_rdr_v1, views by key), running still
  // or replaced by this one: where its programs are gone their views are no longer updated, so
  // one that read safely waits for the timeout (its reads drain its sockmap queue meanwhile).
  const std::string legacy_pin = absl::StrCat(pin_dir, "/shunt_rdr_v1");
  const int legacy = PathExists(legacy_pin) ? bpf_obj_get(legacy_pin.c_str()) : -1;
  struct LegacyView {
    uint32_t copied_seq, rcvbuf;
    uint64_t queued;
    uint8_t reader, drained, pad[2];
    uint32_t last_read;
  };
  if (ctl >= 0 && sk >= 0 && ((rdr >= 0 && rdv >= 0) || legacy >= 0)) {
    uint32_t zero = 0, flags = SHUNT_CTL_DRAIN;
    bpf_map_update_elem(ctl, &zero, &flags, BPF_ANY);
    // Sends that passed the sk_msg verdict just before the flag finish their enqueue; from then
    // on a sockmap queue seen empty by a read stays empty (the readers' programs note it).
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    flags |= SHUNT_CTL_SETTLED;
    bpf_map_update_elem(ctl, &zero, &flags, BPF_ANY);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    size_t left = 0;
    for (;;) {
      auto keys = MapKeys<shunt_sock_key>(sk);
      left = 0;
      for (const auto& k : keys.ok() ? *keys : std::vector<shunt_sock_key>{}) {
        // Nothing was ever redirected into a socket not seen to read safely; one that was must
        // have been seen empty by a read since the drain settled. (An idle one waits for the
        // timeout: its queue is most likely empty, but nothing proves it.)
        shunt_reader_ref ref{};
        shunt_reader_view v{};
        if (rdr >= 0 && rdv >= 0 && bpf_map_lookup_elem(rdr, &k, &ref) == 0 &&
            bpf_map_lookup_elem(rdv, &ref.slot, &v) == 0 && v.owner == ref.cookie &&
            v.reader == SHUNT_READER_SAFE && !v.drained) {
          ++left;
          continue;
        }
        LegacyView lv{};
        if (legacy >= 0 && bpf_map_lookup_elem(legacy, &k, &lv) == 0 &&
            lv.reader == SHUNT_READER_SAFE && !lv.drained &&
            std::chrono::steady_clock::now() <= deadline) {
          ++left;
          continue;
        }
        bpf_map_delete_elem(sk, &k);
      }
      if (left == 0 || std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (left > 0) {
      SHUNT_LOG(WARNING) << "uninstall: " << left << " spliced sockets were not seen empty in "
                         << timeout.count() << " ms (idle, or their programs did not read); any "
                         << "bytes still queued for them go with the sockhash";
    }
  }
  for (int fd : {ctl, sk, rdr, rdv, legacy}) {
    if (fd >= 0) close(fd);
  }
}

// What TCP buffers at most for one connection on this node: the tcp_rmem + tcp_wmem maxima. A
// spliced receiver that has not read lately may hold that much unread before its sender takes the
// stack (TCP's flow control then blocks it, as it would without the mesh).
uint64_t TcpMaxBufferedBytes() {
  uint64_t total = 0;
  for (const char* path : {"/proc/sys/net/ipv4/tcp_rmem", "/proc/sys/net/ipv4/tcp_wmem"}) {
    uint64_t lo = 0, def = 0, hi = 0;
    FILE* f = fopen(path, "r");
    if (f && fscanf(f, "%lu %lu %lu", &lo, &def, &hi) == 3) total += hi;
    if (f) fclose(f);
  }
  return total ? total : 10u << 20;  // Linux defaults: 6 MiB + 4 MiB
}

// Whether TCP on this kernel drops in-window segments for a receiver whose receive memory is
// full rather than advertising a zero window (shunt_rcvbuf_bound in bpf/fastpath.bpf.c): measured
// on Linux 6.1 (it drops) and 6.18 (zero window); kernels in between are taken to drop until
// measured, which costs only the sockmap queue's depth there.
bool TcpDropsWhenReceiveMemoryIsFull() {
  struct utsname u;
  int major = 0, minor = 0;
  if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &major, &minor) != 2) return true;
  return major < 6 || (major == 6 && minor < 18);
}

// The default receive buffer of a new TCP socket (tcp_rmem[1]).
uint32_t TcpDefaultReceiveBuffer() {
  uint64_t lo = 0, def = 0, hi = 0;
  FILE* f = fopen("/proc/sys/net/ipv4/tcp_rmem", "r");
  const bool ok = f && fscanf(f, "%lu %lu %lu", &lo, &def, &hi) == 3;
  if (f) fclose(f);
  return ok && def > 0 ? static_cast<uint32_t>(std::min<uint64_t>(def, 1u << 30)) : 131072;
}

// A receiver that is reading may fall 16 times further behind: a sender on the reader's CPU runs a
// whole time slice ahead (tens of MB at tens of Gbit/s), and a sender that meets the bound stays
// on the stack for as long as it keeps the stream full (bytes it sent there must be read before it
// may redirect again). TCP's memory pressure stops the growth node-wide (fastpath.bpf.c).
uint32_t MaxQueuedBytes() {
  return static_cast<uint32_t>(std::min<uint64_t>(16 * TcpMaxBufferedBytes(), 1u << 30));
}

}  // namespace

std::optional<shunt_pod_uid> PodUidKey(const std::string& uid) {
  shunt_pod_uid k{};
  if (uid.empty() || uid.size() >= sizeof(k.uid)) return std::nullopt;
  std::memcpy(k.uid, uid.data(), uid.size());
  return k;
}

std::string UidOfKey(const shunt_pod_uid& key) {
  return std::string(key.uid, strnlen(key.uid, sizeof(key.uid)));
}

absl::StatusOr<IpKey> ParseIpKey(const std::string& ip) {
  IpKey key{};
  in_addr v4;
  in6_addr v6;
  if (inet_pton(AF_INET, ip.c_str(), &v4) == 1) {
    key.addr[2] = htonl(0x0000ffff);
    key.addr[3] = v4.s_addr;
    return key;
  }
  if (inet_pton(AF_INET6, ip.c_str(), &v6) == 1) {
    std::memcpy(key.addr, &v6, sizeof(key.addr));
    return key;
  }
  return absl::InvalidArgumentError(absl::StrCat("not an IP address: \"", ip, "\""));
}

absl::StatusOr<FastpathPtr> Fastpath::Install(const FastpathConfig& config) {
  FastpathPtr fp(new Fastpath(config));
  RETURN_IF_ERROR(MkdirAll(config.pin_dir));
  RETURN_IF_ERROR(fp->Load());
  fp->cgroup_fd_ = open(config.cgroup_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fp->cgroup_fd_ < 0) return ErrnoStatus(errno, absl::StrCat("open ", config.cgroup_root));
  // Readers are watched before any socket can be spliced by the new programs.
  RETURN_IF_ERROR(fp->AttachTracing());
  RETURN_IF_ERROR(fp->AttachSkMsg());
  RETURN_IF_ERROR(fp->AttachSockops());
  return fp;
}

absl::Status Fastpath::Load() {
  ncpus_ = libbpf_num_possible_cpus();
  if (ncpus_ <= 0) return LibbpfStatus(ncpus_, "libbpf_num_possible_cpus");
  LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = config_.pin_dir.c_str());
  skel_ = shunt_fastpath__open_opts(&opts);
  if (!skel_) return ErrnoStatus(errno, "open fastpath BPF object");
  // Twice as many reader slots as sockets: a socket finds a free one near its own.
  const uint32_t reader_slots =
      static_cast<uint32_t>(std::min<uint64_t>(2ull * config_.sockhash_size, 1u << 30));
  struct {
    bpf_map* map;
    uint32_t size;
  } sizes[] = {{skel_->maps.shunt_sk_v1, config_.sockhash_size},
               {skel_->maps.shunt_rdr_v2, config_.sockhash_size},
               {skel_->maps.shunt_rdv_v1, reader_slots},
               {skel_->maps.shunt_lsn_v1, config_.listeners_size},
               {skel_->maps.shunt_pods_v1, config_.pods_size},
               {skel_->maps.shunt_podpnd_v1, config_.pods_size},
               {skel_->maps.shunt_ep_v1, config_.endpoints_size},
               {skel_->maps.shunt_msg_v1, config_.stats_size},
               {skel_->maps.shunt_sock_v1, config_.stats_size}};
  for (auto& s : sizes) {
    if (s.size == 0) return absl::InvalidArgumentError("map sizes must be > 0");
    RETURN_IF_ERROR(LibbpfStatus(bpf_map__set_max_entries(s.map, s.size), "set map size"));
  }
  skel_->rodata->shunt_protect = config_.protect ? 1 : 0;
  skel_->rodata->shunt_l4_metrics = config_.connection_metrics ? 1 : 0;
  skel_->rodata->shunt_reader_slots = reader_slots;
  skel_->rodata->shunt_max_queued = config_.max_queued ? config_.max_queued : MaxQueuedBytes();
  skel_->rodata->shunt_max_queued_idle = static_cast<uint32_t>(
      std::min<uint64_t>(TcpMaxBufferedBytes(), skel_->rodata->shunt_max_queued));
  rcvbuf_bound_ = config_.protect && TcpDropsWhenReceiveMemoryIsFull();
  skel_->rodata->shunt_rcvbuf_bound = rcvbuf_bound_ ? 1 : 0;
  skel_->rodata->shunt_rcvbuf_default = TcpDefaultReceiveBuffer();
  if (config_.protect) {
    if (CanTrace("tcp_bpf_recvmsg", BPF_TRACE_FENTRY) &&
        CanTrace("tcp_bpf_recvmsg", BPF_TRACE_FEXIT)) {
      read_tracking_ = ReadTracking::kTcpBpfRecvmsg;
    } else if (CanTrace("sock_recv_length", BPF_TRACE_RAW_TP)) {
      read_tracking_ = ReadTracking::kSockRecvLength;
    } else {
      read_tracking_ = ReadTracking::kNone;
      SHUNT_LOG(WARNING) << "this kernel lets no tracing program see socket reads "
                            "(fentry/fexit on tcp_bpf_recvmsg, tp_btf/sock_recv_length): no "
                            "socket is known to read safely, so the fast path redirects "
                            "nothing (counted as reason peer_not_read_yet)";
    }
    trace_splice_ = CanTrace("tcp_splice_read", BPF_TRACE_FENTRY);
    space_adjust_ = !trace_splice_ && CanTrace("tcp_rcv_space_adjust", BPF_TRACE_RAW_TP);
    trace_ioctl_ = CanTrace("tcp_ioctl", BPF_TRACE_FENTRY);
    trace_bpf_ioctl_ = CanTrace("tcp_bpf_ioctl", BPF_TRACE_FENTRY);
  }
  // FIONREAD of a socket in the sockhash counts one of its two queues only. Where its users
  // cannot be seen but every socket's reads can, a socket is spliced only if its class and its
  // peer's read safely before (all its bytes then go through the sockmap queue, which 6.18's
  // tcp_bpf_ioctl counts); first connections stay plain TCP.
  unlearned_plain_ = config_.protect && read_tracking_ == ReadTracking::kSockRecvLength &&
                     !trace_ioctl_ && !trace_bpf_ioctl_;
  skel_->rodata->shunt_unlearned_plain = unlearned_plain_ ? 1 : 0;
  const bool tbr = read_tracking_ == ReadTracking::kTcpBpfRecvmsg;
  bpf_program__set_autoload(skel_->progs.shunt_read_enter, tbr);
  bpf_program__set_autoload(skel_->progs.shunt_read_exit, tbr);
  bpf_program__set_autoload(skel_->progs.shunt_read_done,
                            read_tracking_ == ReadTracking::kSockRecvLength);
  bpf_program__set_autoload(skel_->progs.shunt_splice_enter, trace_splice_);
  bpf_program__set_autoload(skel_->progs.shunt_space_adjust, space_adjust_);
  bpf_program__set_autoload(skel_->progs.shunt_ioctl_enter, trace_ioctl_);
  bpf_program__set_autoload(skel_->progs.shunt_bpf_ioctl_enter, trace_bpf_ioctl_);
  int err = shunt_fastpath__load(skel_);
  if (err) {
    return LibbpfStatus(
        err, absl::StrCat("load fastpath BPF programs (a pinned map under ", config_.pin_dir,
                          " with another size or layout cannot be reused: run "
                          "`shunt-agent --uninstall` first)"));
  }
  return absl::OkStatus();
}

absl::Status Fastpath::AttachSockops() {
  return AttachPinnedCgroupLink(skel_->progs.shunt_sockops, cgroup_fd_, config_.cgroup_root,
                                absl::StrCat(config_.pin_dir, "/", kSockopsLinkPin));
}

const char* ReadTrackingName(ReadTracking t) {
  switch (t) {
    case ReadTracking::kOff: return "off";
    case ReadTracking::kTcpBpfRecvmsg: return "tcp_bpf_recvmsg";
    case ReadTracking::kSockRecvLength: return "sock_recv_length";
    case ReadTracking::kNone: return "none";
  }
  return "?";
}

absl::Status Fastpath::AttachTracing() {
  bpf_program* progs[] = {skel_->progs.shunt_read_enter, skel_->progs.shunt_read_exit,
                          skel_->progs.shunt_read_done, skel_->progs.shunt_splice_enter,
                          skel_->progs.shunt_space_adjust, skel_->progs.shunt_ioctl_enter,
                          skel_->progs.shunt_bpf_ioctl_enter};
  static_assert(std::size(progs) == std::size(kTracingLinkPins));
  for (size_t i = 0; i < std::size(progs); ++i) {
    const std::string pin = absl::StrCat(config_.pin_dir, "/", kTracingLinkPins[i]);
    if (bpf_program__autoload(progs[i])) {
      RETURN_IF_ERROR(AttachPinnedTracingLink(progs[i], pin));
    } else {
      RETURN_IF_ERROR(DetachPinnedLink(pin));  // a previous agent's, of another variant
    }
  }
  SHUNT_LOG(INFO) << "fast path: reads of spliced sockets seen through "
                  << ReadTrackingName(read_tracking_)
                  << (!config_.protect ? ""
                      : trace_splice_  ? "; splice(2) through tcp_splice_read"
                      : space_adjust_  ? "; splice(2) through tcp_rcv_space_adjust"
                                       : "; splice(2) readers not seen")
                  << (!config_.protect ? ""
                      : trace_ioctl_ || trace_bpf_ioctl_
                          ? absl::StrCat("; FIONREAD readers through ",
                                         trace_ioctl_ ? "tcp_ioctl" : "",
                                         trace_ioctl_ && trace_bpf_ioctl_ ? " and " : "",
                                         trace_bpf_ioctl_ ? "tcp_bpf_ioctl" : "")
                          : std::string("; FIONREAD readers not seen"))
                  << (unlearned_plain_ ? "; first connections of a class stay plain TCP" : "")
                  << (rcvbuf_bound_ ? "; a receiver's sockmap queue stays under a quarter of its "
                                      "receive buffer (TCP here drops what it advertised room "
                                      "for once that memory is full)"
                                    : "");
  return absl::OkStatus();
}

absl::Status Fastpath::AttachSkMsg() {
  // A sockhash has one sk_msg verdict slot, owned by us: attaching replaces our previous program.
  const int prog_fd = bpf_program__fd(skel_->progs.shunt_sk_msg);
  const int map_fd = bpf_map__fd(skel_->maps.shunt_sk_v1);
  RETURN_IF_ERROR(
      LibbpfStatus(bpf_prog_attach(prog_fd, map_fd, BPF_SK_MSG_VERDICT, 0), "attach sk_msg"));
  const std::string pin = absl::StrCat(config_.pin_dir, "/", kSkMsgProgPin);
  RETURN_IF_ERROR(Unpin(pin));
  return LibbpfStatus(bpf_obj_pin(prog_fd, pin.c_str()), absl::StrCat("pin ", pin));
}

absl::Status Fastpath::Uninstall(const std::string& pin_dir) {
  absl::Status first;
  auto note = [&](absl::Status s) {
    if (!s.ok()) {
      SHUNT_LOG(WARNING) << "uninstall: " << s.message();
      if (first.ok()) first = s;
    }
  };
  DrainSockhash(pin_dir, std::chrono::seconds(10));
  note(DetachPinnedLink(absl::StrCat(pin_dir, "/", kSockopsLinkPin)));
  for (const char* pin : kTracingLinkPins) note(DetachPinnedLink(absl::StrCat(pin_dir, "/", pin)));
  const std::string prog_pin = absl::StrCat(pin_dir, "/", kSkMsgProgPin);
  const std::string sockhash_pin = absl::StrCat(pin_dir, "/", SHUNT_MAP_SOCKHASH);
  if (PathExists(prog_pin)) {
    int prog_fd = bpf_obj_get(prog_pin.c_str());
    int map_fd = PathExists(sockhash_pin) ? bpf_obj_get(sockhash_pin.c_str()) : -1;
    if (prog_fd >= 0 && map_fd >= 0) {
      int err = bpf_prog_detach2(prog_fd, map_fd, BPF_SK_MSG_VERDICT);
      if (err && errno != ENOENT) note(ErrnoStatus(errno, "detach sk_msg"));
    }
    if (prog_fd >= 0) close(prog_fd);
    if (map_fd >= 0) close(map_fd);
    note(Unpin(prog_pin));
  }
  for (const char* name : kMapNames) note(Unpin(absl::StrCat(pin_dir, "/", name)));
  if (rmdir(pin_dir.c_str()) != 0 && errno != ENOENT) {
    note(ErrnoStatus(errno, absl::StrCat("rmdir ", pin_dir, " (unknown files left in it?)")));
  }
  // <bpffs>/shunt is shared by the agents of a machine; the last one out removes it.
  if (auto slash = pin_dir.rfind('/'); slash != std::string::npos && slash > 0) {
    rmdir(pin_dir.substr(0, slash).c_str());  // fails harmlessly while not empty
  }
  return first;
}

Fastpath::~Fastpath() {
  if (cgroup_fd_ >= 0) close(cgroup_fd_);
  if (skel_) shunt_fastpath__destroy(skel_);
}

int Fastpath::l4_events_fd() const { return bpf_map__fd(skel_->maps.shunt_l4ev_v1); }


absl::Status Fastpath::UpsertPod(uint64_t cgroup_id, const shunt_pod& pod) {
  return LibbpfStatus(
      bpf_map_update_elem(bpf_map__fd(skel_->maps.shunt_pods_v1), &cgroup_id, &pod, BPF_ANY),
      "update pods map");
}

absl::Status Fastpath::DeletePod(uint64_t cgroup_id) {
  int err = bpf_map_delete_elem(bpf_map__fd(skel_->maps.shunt_pods_v1), &cgroup_id);
  return err && errno != ENOENT ? ErrnoStatus(errno, "delete from pods map") : absl::OkStatus();
}

absl::StatusOr<std::map<uint64_t, shunt_pod>> Fastpath::ListPods() const {
  const int fd = bpf_map__fd(skel_->maps.shunt_pods_v1);
  ASSIGN_OR_RETURN(auto keys, MapKeys<uint64_t>(fd));
  std::map<uint64_t, shunt_pod> out;
  for (uint64_t k : keys) {
    shunt_pod v{};
    if (bpf_map_lookup_elem(fd, &k, &v) == 0) out[k] = v;
  }
  return out;
}

absl::Status Fastpath::UpsertPendingPod(const std::string& uid, const shunt_pod& pod) {
  auto key = PodUidKey(uid);
  if (!key) return absl::InvalidArgumentError(absl::StrCat("pod uid too long: ", uid));
  return LibbpfStatus(
      bpf_map_update_elem(bpf_map__fd(skel_->maps.shunt_podpnd_v1), &*key, &pod, BPF_ANY),
      "update pending pods map");
}

absl::Status Fastpath::DeletePendingPod(const std::string& uid) {
  auto key = PodUidKey(uid);
  if (!key) return absl::OkStatus();
  int err = bpf_map_delete_elem(bpf_map__fd(skel_->maps.shunt_podpnd_v1), &*key);
  return err && errno != ENOENT ? ErrnoStatus(errno, "delete from pending pods map")
                                : absl::OkStatus();
}

absl::StatusOr<std::map<std::string, shunt_pod>> Fastpath::ListPendingPods() const {
  const int fd = bpf_map__fd(skel_->maps.shunt_podpnd_v1);
  ASSIGN_OR_RETURN(auto keys, MapKeys<shunt_pod_uid>(fd));
  std::map<std::string, shunt_pod> out;
  for (const shunt_pod_uid& k : keys) {
    shunt_pod v{};
    if (bpf_map_lookup_elem(fd, &k, &v) == 0) out[UidOfKey(k)] = v;
  }
  return out;
}

absl::Status Fastpath::UpsertEndpoint(const IpKey& ip, uint32_t workload_id) {
  return LibbpfStatus(
      bpf_map_update_elem(bpf_map__fd(skel_->maps.shunt_ep_v1), ip.addr, &workload_id, BPF_ANY),
      "update endpoints map");
}

absl::Status Fastpath::DeleteEndpoint(const IpKey& ip) {
  int err = bpf_map_delete_elem(bpf_map__fd(skel_->maps.shunt_ep_v1), ip.addr);
  return err && errno != ENOENT ? ErrnoStatus(errno, "delete from endpoints map")
                                : absl::OkStatus();
}

absl::StatusOr<std::map<IpKey, uint32_t>> Fastpath::ListEndpoints() const {
  const int fd = bpf_map__fd(skel_->maps.shunt_ep_v1);
  ASSIGN_OR_RETURN(auto keys, MapKeys<IpKey>(fd));
  std::map<IpKey, uint32_t> out;
  for (const IpKey& k : keys) {
    uint32_t v = 0;
    if (bpf_map_lookup_elem(fd, k.addr, &v) == 0) out[k] = v;
  }
  return out;
}

absl::StatusOr<std::vector<Fastpath::MsgStat>> Fastpath::ReadMsgStats() const {
  const int fd = bpf_map__fd(skel_->maps.shunt_msg_v1);
  ASSIGN_OR_RETURN(auto keys, MapKeys<shunt_msg_stats_key>(fd));
  constexpr size_t kWords = sizeof(shunt_msg_stats) / sizeof(uint64_t);
  std::vector<uint64_t> percpu(ncpus_ * kWords);
  std::vector<MsgStat> out;
  out.reserve(keys.size());
  for (const auto& k : keys) {
    if (bpf_map_lookup_elem(fd, &k, percpu.data()) != 0) continue;  // deleted meanwhile
    uint64_t sum[kWords];
    SumPerCpu(percpu, ncpus_, kWords, sum);
    out.push_back({k, {sum[0], sum[1]}});
  }
  return out;
}

absl::StatusOr<std::vector<Fastpath::SockStat>> Fastpath::ReadSockStats() const {
  const int fd = bpf_map__fd(skel_->maps.shunt_sock_v1);
  ASSIGN_OR_RETURN(auto keys, MapKeys<shunt_sock_stats_key>(fd));
  std::vector<uint64_t> percpu(ncpus_);
  std::vector<SockStat> out;
  out.reserve(keys.size());
  for (const auto& k : keys) {
    if (bpf_map_lookup_elem(fd, &k, percpu.data()) != 0) continue;
    uint64_t sum;
    SumPerCpu(percpu, ncpus_, 1, &sum);
    out.push_back({k, sum});
  }
  return out;
}

absl::Status Fastpath::DeleteStatsOf(uint32_t workload_id) {
  ASSIGN_OR_RETURN(auto msgs, ReadMsgStats());
  for (const auto& m : msgs) {
    if (m.key.src_workload == workload_id || m.key.dst_workload == workload_id) {
      bpf_map_delete_elem(bpf_map__fd(skel_->maps.shunt_msg_v1), &m.key);
    }
  }
  ASSIGN_OR_RETURN(auto socks, ReadSockStats());
  for (const auto& s : socks) {
    if (s.key.workload_id == workload_id) {
      bpf_map_delete_elem(bpf_map__fd(skel_->maps.shunt_sock_v1), &s.key);
    }
  }
  return absl::OkStatus();
}

}  // namespace shunt::agent
