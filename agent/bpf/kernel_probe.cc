#include "agent/bpf/kernel_probe.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/capability.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/cgroup.h"
#include "common/errno_status.h"

namespace shunt::agent {
namespace {

bool HasCap(int cap) {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (syscall(SYS_capget, &hdr, data) != 0) return false;
  return data[cap / 32].effective & (1u << (cap % 32));
}

KernelFeature Feature(std::string name, int probe_result) {
  KernelFeature f{std::move(name), probe_result == 1, ""};
  if (probe_result < 0) f.detail = std::strerror(-probe_result);
  if (probe_result == 0) f.detail = "not supported by this kernel";
  return f;
}

}  // namespace

std::vector<KernelFeature> ProbeKernelFeatures() {
  std::vector<KernelFeature> out;
  {
    bool root_caps = HasCap(CAP_SYS_ADMIN) || (HasCap(CAP_BPF) && HasCap(CAP_NET_ADMIN) &&
                                               HasCap(CAP_PERFMON));
    out.push_back({"privileges (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON or CAP_SYS_ADMIN)", root_caps,
                   root_caps ? "" : "run the agent as root or grant the capabilities"});
  }
  {
    struct stat st;
    bool btf = stat("/sys/kernel/btf/vmlinux", &st) == 0;
    out.push_back({"kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)", btf,
                   btf ? "" : "CO-RE programs need the kernel's BTF"});
  }
  {
    auto mount = FindCgroup2Mount();
    out.push_back({"cgroup v2 mount", mount.ok(), mount.ok() ? "" : std::string(mount.status().message())});
  }
  out.push_back(Feature("BPF map type sockhash", libbpf_probe_bpf_map_type(BPF_MAP_TYPE_SOCKHASH, nullptr)));
  out.push_back(Feature("BPF map type sk_storage", libbpf_probe_bpf_map_type(BPF_MAP_TYPE_SK_STORAGE, nullptr)));
  out.push_back(Feature("BPF map type percpu_hash", libbpf_probe_bpf_map_type(BPF_MAP_TYPE_PERCPU_HASH, nullptr)));
  out.push_back(Feature("BPF program type sock_ops", libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SOCK_OPS, nullptr)));
  out.push_back(Feature("BPF program type sk_msg", libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_MSG, nullptr)));
  out.push_back(Feature("BPF program type cgroup_sock_addr (connect4/6, getpeername4/6)",
                        libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, nullptr)));
  struct {
    bpf_prog_type type;
    bpf_func_id helper;
    const char* name;
  } helpers[] = {
      {BPF_PROG_TYPE_SK_MSG, BPF_FUNC_msg_redirect_hash, "helper bpf_msg_redirect_hash in sk_msg"},
      {BPF_PROG_TYPE_SK_MSG, BPF_FUNC_sk_storage_get, "helper bpf_sk_storage_get in sk_msg"},
      {BPF_PROG_TYPE_SK_MSG, BPF_FUNC_get_netns_cookie, "helper bpf_get_netns_cookie in sk_msg"},
      {BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sock_hash_update, "helper bpf_sock_hash_update in sock_ops"},
      {BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sk_storage_get, "helper bpf_sk_storage_get in sock_ops"},
      {BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_get_netns_cookie, "helper bpf_get_netns_cookie in sock_ops"},
      {BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_skc_to_tcp_sock, "helper bpf_skc_to_tcp_sock in sock_ops"},
      {BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_get_current_ancestor_cgroup_id,
       "helper bpf_get_current_ancestor_cgroup_id in cgroup_sock_addr"},
      {BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_sk_storage_get,
       "helper bpf_sk_storage_get in cgroup_sock_addr"},
  };
  for (const auto& h : helpers) {
    out.push_back(Feature(h.name, libbpf_probe_bpf_helper(h.type, h.helper, nullptr)));
  }
  return out;
}

absl::Status CheckKernel() {
  for (const auto& f : ProbeKernelFeatures()) {
    if (!f.present) {
      return absl::FailedPreconditionError(
          absl::StrCat("kernel feature missing: ", f.name, f.detail.empty() ? "" : " (",
                       f.detail, f.detail.empty() ? "" : ")"));
    }
  }
  return absl::OkStatus();
}

bool CanTrace(const char* target, int attach_type) {
  const auto type = static_cast<bpf_attach_type>(attach_type);
  const int btf_id = libbpf_find_vmlinux_btf_id(target, type);
  if (btf_id < 0) return false;
  const bpf_insn insns[] = {
      {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0},  // r0 = 0
      {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
  };
  LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = type,
              .attach_btf_id = static_cast<uint32_t>(btf_id));
  const int fd = bpf_prog_load(BPF_PROG_TYPE_TRACING, "shunt_probe", "GPL", insns,
                               std::size(insns), &opts);
  if (fd < 0) return false;
  close(fd);
  return true;
}

absl::Status EnsureBpffs(const std::string& path) {
  struct statfs fs;
  if (statfs(path.c_str(), &fs) == 0 && fs.f_type == BPF_FS_MAGIC) return absl::OkStatus();
  if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, absl::StrCat("mkdir ", path));
  }
  if (mount("bpf", path.c_str(), "bpf", 0, "mode=0700") != 0) {
    return ErrnoStatus(errno, absl::StrCat("mount bpffs at ", path));
  }
  return absl::OkStatus();
}

}  // namespace shunt::agent
