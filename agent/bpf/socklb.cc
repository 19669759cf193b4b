#include "agent/bpf/socklb.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "agent/bpf/kernel_probe.h"
#include "agent/bpf/pinned_link.h"
#include "common/cgroup.h"
#include "common/errno_status.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "shunt/fastpath_abi.h"
#include "socklb.skel.h"

namespace shunt::agent {
namespace {

// Every map this object owns (the pods map is the fast path's).
constexpr const char* kOwnMaps[] = {SHUNT_MAP_LB_SERVICES, SHUNT_MAP_LB_SLOTS, SHUNT_MAP_LB_SOCKS,
                                    SHUNT_MAP_AP_SOURCES,  SHUNT_MAP_AP_DESTS, SHUNT_MAP_AP_PORTS, SHUNT_MAP_AP_NAMES,
                                    SHUNT_MAP_AP_PENDING,  SHUNT_MAP_LB_STATS};

}  // namespace

absl::StatusOr<SockLbPtr> SockLb::Install(const SockLbConfig& config) {
  SockLbPtr lb(new SockLb(config));
  if (mkdir(config.pin_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, absl::StrCat("mkdir ", config.pin_dir));
  }
  RETURN_IF_ERROR(lb->Load());
  lb->cgroup_fd_ = open(config.cgroup_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (lb->cgroup_fd_ < 0) return ErrnoStatus(errno, absl::StrCat("open ", config.cgroup_root));
  // getpeername first: a rewritten socket must never show its backend.
  for (int i : {2, 3, 0, 1}) RETURN_IF_ERROR(lb->Attach(i));
  const std::string mkdir_pin = absl::StrCat(config.pin_dir, "/", kSockLbLinkPins[4]);
  if (lb->mkdir_) {
    RETURN_IF_ERROR(AttachPinnedTracingLink(lb->skel_->progs.shunt_cgroup_mkdir, mkdir_pin));
  } else {
    RETURN_IF_ERROR(DetachPinnedLink(mkdir_pin));
    SHUNT_LOG(WARNING) << "this kernel cannot trace cgroup_mkdir (tp_btf): a new pod is "
                          "classified at the next cgroup rescan, not from its first connect()";
  }
  return lb;
}

absl::Status SockLb::Load() {
  ncpus_ = libbpf_num_possible_cpus();
  if (ncpus_ <= 0) return LibbpfStatus(ncpus_, "libbpf_num_possible_cpus");
  LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = config_.pin_dir.c_str());
  skel_ = shunt_socklb__open_opts(&opts);
  if (!skel_) return ErrnoStatus(errno, "open socklb BPF object");
  ASSIGN_OR_RETURN(skel_->rodata->shunt_cgroup_root_id, CgroupId(config_.cgroup_root));
  mkdir_ = CanTrace("cgroup_mkdir", BPF_TRACE_RAW_TP);
  bpf_program__set_autoload(skel_->progs.shunt_cgroup_mkdir, mkdir_);
  struct {
    bpf_map* map;
    uint32_t size;
  } sizes[] = {{skel_->maps.shunt_pods_v1, config_.pods_size},
               // Shared with the fast path (pinned by name): the same size as its.
               {skel_->maps.shunt_podpnd_v1, config_.pods_size},
               // Pending policy sources by pod uid: at most one per pod.
               {skel_->maps.shunt_appnd_v1, config_.pods_size},
               {skel_->maps.shunt_svc_v1, config_.services_size},
               {skel_->maps.shunt_slot_v1, config_.slots_size},
               {skel_->maps.shunt_apsrc_v1, config_.policy_sources_size},
               {skel_->maps.shunt_apdst_v1, config_.policy_dests_size},
               {skel_->maps.shunt_lbst_v1, config_.stats_size}};
  for (auto& s : sizes) {
    if (s.size == 0) return absl::InvalidArgumentError("map sizes must be > 0");
    RETURN_IF_ERROR(LibbpfStatus(bpf_map__set_max_entries(s.map, s.size), "set map size"));
  }
  int err = shunt_socklb__load(skel_);
  if (err) {
    return LibbpfStatus(
        err, absl::StrCat("load socklb BPF programs (a pinned map under ", config_.pin_dir,
                          " with another size or layout cannot be reused: run "
                          "`shunt-agent --uninstall` first)"));
  }
  return absl::OkStatus();
}

absl::Status SockLb::Attach(int index) {
  bpf_program* progs[] = {skel_->progs.shunt_connect4, skel_->progs.shunt_connect6,
                          skel_->progs.shunt_getpeername4, skel_->progs.shunt_getpeername6};
  return AttachPinnedCgroupLink(progs[index], cgroup_fd_, config_.cgroup_root,
                                absl::StrCat(config_.pin_dir, "/", kSockLbLinkPins[index]));
}

absl::Status SockLb::Uninstall(const std::string& pin_dir) {
  absl::Status first;
  auto note = [&](absl::Status s) {
    if (!s.ok()) {
      SHUNT_LOG(WARNING) << "uninstall: " << s.message();
      if (first.ok()) first = s;
    }
  };
  for (const char* name : kSockLbLinkPins) note(DetachPinnedLink(absl::StrCat(pin_dir, "/", name)));
  for (const char* name : kOwnMaps) note(Unpin(absl::StrCat(pin_dir, "/", name)));
  return first;
}

SockLb::~SockLb() {
  if (cgroup_fd_ >= 0) close(cgroup_fd_);
  if (skel_) shunt_socklb__destroy(skel_);
}

int SockLb::MapFd(SockLbMap map) const {
  switch (map) {
    case SockLbMap::kServices:
      return bpf_map__fd(skel_->maps.shunt_svc_v1);
    case SockLbMap::kSlots:
      return bpf_map__fd(skel_->maps.shunt_slot_v1);
    case SockLbMap::kPolicySources:
      return bpf_map__fd(skel_->maps.shunt_apsrc_v1);
    case SockLbMap::kPolicyDests:
      return bpf_map__fd(skel_->maps.shunt_apdst_v1);
    case SockLbMap::kPolicyPorts:
      return bpf_map__fd(skel_->maps.shunt_apport_v1);
    case SockLbMap::kPolicyNames:
      return bpf_map__fd(skel_->maps.shunt_apnam_v1);
    case SockLbMap::kPolicyPending:
      return bpf_map__fd(skel_->maps.shunt_appnd_v1);
  }
  return -1;
}

namespace {
size_t KeySize(SockLbMap map) {
  switch (map) {
    case SockLbMap::kServices:
      return sizeof(shunt_svc_key);
    case SockLbMap::kSlots:
      return sizeof(shunt_slot_key);
    case SockLbMap::kPolicySources:
      return sizeof(uint64_t);
    case SockLbMap::kPolicyDests:
      return sizeof(shunt_ip_key);
    case SockLbMap::kPolicyPorts:
    case SockLbMap::kPolicyNames:
      return sizeof(uint32_t);
    case SockLbMap::kPolicyPending:
      return sizeof(shunt_pod_uid);
  }
  return 0;
}
size_t ValueSize(SockLbMap map) {
  switch (map) {
    case SockLbMap::kServices:
      return sizeof(shunt_svc);
    case SockLbMap::kSlots:
      return sizeof(shunt_backend);
    case SockLbMap::kPolicySources:
      return sizeof(uint64_t);
    case SockLbMap::kPolicyDests:
      return sizeof(shunt_ap_dst);
    case SockLbMap::kPolicyPorts:
      return sizeof(shunt_ap_ports);
    case SockLbMap::kPolicyNames:
      return sizeof(shunt_ap_name);
    case SockLbMap::kPolicyPending:
      return sizeof(uint64_t);
  }
  return 0;
}
}  // namespace

absl::StatusOr<std::map<SockLb::Bytes, SockLb::Bytes>> SockLb::List(SockLbMap map) const {
  const int fd = MapFd(map);
  const size_t ks = KeySize(map), vs = ValueSize(map);
  std::map<Bytes, Bytes> out;
  std::string cur(ks, '\0'), next(ks, '\0'), value(vs, '\0');
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
    if (bpf_map_lookup_elem(fd, next.data(), value.data()) == 0) out[next] = value;
    cur = next;
    prev = cur.data();
  }
  if (errno != ENOENT) return ErrnoStatus(errno, "bpf_map_get_next_key");
  return out;
}

absl::Status SockLb::Upsert(SockLbMap map, const Bytes& key, const Bytes& value) {
  if (key.size() != KeySize(map) || value.size() != ValueSize(map)) {
    return absl::InternalError("socklb map entry of the wrong size");
  }
  return LibbpfStatus(bpf_map_update_elem(MapFd(map), key.data(), value.data(), BPF_ANY),
                      "update socklb map");
}

absl::Status SockLb::Delete(SockLbMap map, const Bytes& key) {
  if (map == SockLbMap::kPolicyPorts || map == SockLbMap::kPolicyNames) {  // arrays: zeroing
    return Upsert(map, key, Bytes(ValueSize(map), '\0'));
  }
  int err = bpf_map_delete_elem(MapFd(map), key.data());
  return err && errno != ENOENT ? ErrnoStatus(errno, "delete from socklb map") : absl::OkStatus();
}

absl::StatusOr<std::vector<SockLb::Stat>> SockLb::ReadStats() const {
  const int fd = bpf_map__fd(skel_->maps.shunt_lbst_v1);
  std::vector<shunt_lb_stats_key> keys;
  shunt_lb_stats_key cur{}, next{};
  const shunt_lb_stats_key* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    keys.push_back(next);
    cur = next;
    prev = &cur;
  }
  if (errno != ENOENT) return ErrnoStatus(errno, "bpf_map_get_next_key");
  std::vector<uint64_t> percpu(ncpus_);
  std::vector<Stat> out;
  for (const auto& k : keys) {
    if (bpf_map_lookup_elem(fd, &k, percpu.data()) != 0) continue;
    uint64_t sum = 0;
    for (uint64_t v : percpu) sum += v;
    out.push_back({k, sum});
  }
  return out;
}

absl::Status SockLb::DeleteStatsOf(uint32_t workload_id) {
  ASSIGN_OR_RETURN(auto stats, ReadStats());
  for (const auto& s : stats) {
    if (s.key.workload_id == workload_id) {
      bpf_map_delete_elem(bpf_map__fd(skel_->maps.shunt_lbst_v1), &s.key);
    }
  }
  return absl::OkStatus();
}

absl::Status SockLb::DeleteStatsOfDetail(std::initializer_list<uint32_t> events,
                                         const std::set<uint32_t>& details) {
  if (details.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(auto stats, ReadStats());  // one pass for all of them
  for (const auto& s : stats) {
    if (!details.count(s.key.detail)) continue;
    for (uint32_t e : events) {
      if (s.key.event == e) bpf_map_delete_elem(bpf_map__fd(skel_->maps.shunt_lbst_v1), &s.key);
    }
  }
  return absl::OkStatus();
}

}  // namespace shunt::agent
