#include "agent/bpf/pinned_link.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/log.h"
#include "common/status_macros.h"

namespace shunt::agent {

bool PathExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

absl::Status Unpin(const std::string& path) {
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, absl::StrCat("unlink ", path));
  }
  return absl::OkStatus();
}

absl::Status AttachPinnedCgroupLink(bpf_program* prog, int cgroup_fd,
                                    const std::string& cgroup_root, const std::string& pin) {
  if (PathExists(pin)) {
    bpf_link* link = bpf_link__open(pin.c_str());
    if (link) {
      bpf_link_info info{};
      uint32_t len = sizeof(info);
      struct stat cg;
      const bool same_cgroup = bpf_obj_get_info_by_fd(bpf_link__fd(link), &info, &len) == 0 &&
                               fstat(cgroup_fd, &cg) == 0 && info.cgroup.cgroup_id == cg.st_ino;
      if (same_cgroup) {
        const int err = bpf_link__update_program(link, prog);
        bpf_link__destroy(link);  // closes our fd; the pin keeps the link
        if (err == 0) return absl::OkStatus();
        SHUNT_LOG(WARNING) << "cannot update pinned link " << pin << " (" << std::strerror(-err)
                           << "); re-attaching";
      } else {
        SHUNT_LOG(WARNING) << "pinned link " << pin << " is attached elsewhere; moving it to "
                           << cgroup_root;
        bpf_link__detach(link);
        bpf_link__destroy(link);
      }
    }
    RETURN_IF_ERROR(Unpin(pin));
  }
  bpf_link* link = bpf_program__attach_cgroup(prog, cgroup_fd);
  if (!link) {
    return ErrnoStatus(errno, absl::StrCat("attach ", bpf_program__name(prog), " to ", cgroup_root));
  }
  const int err = bpf_link__pin(link, pin.c_str());
  bpf_link__destroy(link);  // on success the pin holds the attachment
  return LibbpfStatus(err, absl::StrCat("pin ", pin));
}

namespace {

bool ProgInfo(int fd, bpf_prog_info* info) {
  *info = {};
  uint32_t len = sizeof(*info);
  return fd >= 0 && bpf_obj_get_info_by_fd(fd, info, &len) == 0;
}

// The maps a loaded program uses, by name: their ids, and the contents of the read-only data
// (.rodata: the constants the agent set before loading, one map per load).
std::map<std::string, std::string> ProgMaps(int prog_fd) {
  std::map<std::string, std::string> out;
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) return {{"?", "?"}};
  std::vector<uint32_t> ids(info.nr_map_ids);
  info = {};
  info.nr_map_ids = ids.size();
  info.map_ids = reinterpret_cast<uintptr_t>(ids.data());
  len = sizeof(info);
  if (bpf_obj_get_info_by_fd(prog_fd, &info, &len) != 0) return {{"?", "?"}};
  for (uint32_t id : ids) {
    const int fd = bpf_map_get_fd_by_id(id);
    bpf_map_info mi{};
    uint32_t mlen = sizeof(mi);
    if (fd < 0 || bpf_obj_get_info_by_fd(fd, &mi, &mlen) != 0) {
      if (fd >= 0) close(fd);
      return {{"?", "?"}};
    }
    std::string value = absl::StrCat("id ", id);
    if (absl::StrContains(mi.name, ".rodata")) {  // also .rodata.str1.1 (string literals)
      std::string data(mi.value_size, '\0');
      uint32_t key = 0;
      value = bpf_map_lookup_elem(fd, &key, data.data()) == 0 ? data : "?";
    }
    out[mi.name] = value;
    close(fd);
  }
  return out;
}

// Whether the tracing link pinned at `pin` runs the same program as `prog`: the same
// instructions (the tag hashes them, map references left out), on the same function, with the
// same maps and constants. A restarted agent of the same version and configuration.
bool PinnedTracingLinkRuns(const std::string& pin, bpf_program* prog) {
  bpf_link* old = bpf_link__open(pin.c_str());
  if (!old) return false;
  bpf_link_info li{};
  uint32_t len = sizeof(li);
  bool same = false;
  // fentry/fexit make tracing links; tp_btf programs raw tracepoint links.
  if (bpf_obj_get_info_by_fd(bpf_link__fd(old), &li, &len) == 0 &&
      (li.type == BPF_LINK_TYPE_TRACING || li.type == BPF_LINK_TYPE_RAW_TRACEPOINT)) {
    const int old_fd = bpf_prog_get_fd_by_id(li.prog_id);
    bpf_prog_info was, now;
    const bool infos = ProgInfo(old_fd, &was) && ProgInfo(bpf_program__fd(prog), &now);
    // The tag covers the instructions (fentry and fexit programs differ), the BTF id the
    // function or tracepoint.
    same = infos && std::memcmp(was.tag, now.tag, sizeof(was.tag)) == 0 &&
           was.attach_btf_id == now.attach_btf_id &&
           ProgMaps(old_fd) == ProgMaps(bpf_program__fd(prog));
    if (old_fd >= 0) close(old_fd);
  }
  if (!same) {
    SHUNT_LOG(INFO) << "pinned link " << pin << " runs another program than "
                    << bpf_program__name(prog) << ": replacing it";
  }
  bpf_link__destroy(old);  // closes our fd; the pin keeps the link
  return same;
}

}  // namespace

absl::Status AttachPinnedTracingLink(bpf_program* prog, const std::string& pin) {
  // Kept as it is: attaching and detaching patches the traced function's first instruction
  // (twice) while every CPU may be running it, for nothing.
  if (PathExists(pin) && PinnedTracingLinkRuns(pin, prog)) return absl::OkStatus();
  bpf_link* link = bpf_program__attach_trace(prog);
  if (!link) {
    return ErrnoStatus(errno, absl::StrCat("attach ", bpf_program__name(prog),
                                           " (fentry/fexit: needs BTF and BPF trampolines)"));
  }
  RETURN_IF_ERROR(DetachPinnedLink(pin));  // the previous agent's: the new one runs already
  const int err = bpf_link__pin(link, pin.c_str());
  bpf_link__destroy(link);
  return LibbpfStatus(err, absl::StrCat("pin ", pin));
}

absl::Status DetachPinnedLink(const std::string& pin) {
  if (!PathExists(pin)) return absl::OkStatus();
  absl::Status s;
  if (bpf_link* link = bpf_link__open(pin.c_str())) {
    const int err = bpf_link__detach(link);
    // Tracing links cannot be detached (EOPNOTSUPP): they go when their last reference (the pin)
    // does.
    if (err != -EOPNOTSUPP) s = LibbpfStatus(err, absl::StrCat("detach ", pin));
    bpf_link__destroy(link);
  }
  absl::Status u = Unpin(pin);
  return s.ok() ? u : s;
}

}  // namespace shunt::agent
