// Verifier cost of every BPF program, against the baseline committed in bpf/verifier_baseline.txt.
// A program whose verified instruction count grows by more than 25% fails here, so that a
// complexity regression shows in review rather than as a load failure on some kernel. When a
// change is intended, update the baseline with the figures this test prints.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "agent/bpf/kernel_probe.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "fastpath.skel.h"
#include "socklb.skel.h"

namespace {

// "major.minor" of the running kernel, as a comparable pair.
std::pair<int, int> RunningKernel() {
  utsname u{};
  uname(&u);
  int major = 0, minor = 0;
  std::sscanf(u.release, "%d.%d", &major, &minor);
  return {major, minor};
}

// The baseline has a section per kernel ("[6.18]"): verifier figures differ between kernels. The
// section of the newest kernel not newer than the running one applies (the oldest if all are).
std::map<std::string, uint32_t> ReadBaseline(std::string* section_name) {
  std::map<std::pair<int, int>, std::map<std::string, uint32_t>> sections;
  std::ifstream in(SHUNT_VERIFIER_BASELINE);
  std::string line;
  std::pair<int, int> cur{0, 0};
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    int major = 0, minor = 0;
    if (std::sscanf(line.c_str(), "[%d.%d]", &major, &minor) == 2) {
      cur = {major, minor};
      continue;
    }
    std::istringstream ss(line);
    std::string name;
    uint32_t n = 0;
    if (ss >> name >> n) sections[cur][name] = n;
  }
  if (sections.empty()) return {};
  auto it = sections.upper_bound(RunningKernel());
  if (it != sections.begin()) --it;
  *section_name = std::to_string(it->first.first) + "." + std::to_string(it->first.second);
  return it->second;
}

uint32_t VerifiedInsns(bpf_program* prog) {
  bpf_prog_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len) != 0) return 0;
  return info.verified_insns;
}

// Maps pin by name: load into a private directory of the bpffs, removed at the end.
class PinDir {
 public:
  PinDir() : path_("/sys/fs/bpf/shunt-verifier-" + std::to_string(getpid())) {
    mkdir(path_.c_str(), 0700);
  }
  ~PinDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(VerifierBaseline, NoProgramGrewMoreThanAQuarter) {
  ASSERT_EQ(access("/sys/fs/bpf", W_OK), 0) << "bpffs must be mounted (the agent mounts it)";
  std::string section;
  const auto baseline = ReadBaseline(&section);
  ASSERT_FALSE(baseline.empty()) << SHUNT_VERIFIER_BASELINE;
  std::printf("baseline section [%s]\n", section.c_str());
  PinDir pins;
  LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = pins.path().c_str());
  std::map<std::string, uint32_t> now;
  {
    auto* fp = shunt_fastpath__open_opts(&opts);
    ASSERT_NE(fp, nullptr);
    // The read-tracking variants the agent would not load here (the kernel refuses the target).
    struct {
      bpf_program* prog;
      const char* target;
      int type;
    } tracing[] = {{fp->progs.shunt_read_enter, "tcp_bpf_recvmsg", BPF_TRACE_FENTRY},
                   {fp->progs.shunt_read_exit, "tcp_bpf_recvmsg", BPF_TRACE_FEXIT},
                   {fp->progs.shunt_read_done, "sock_recv_length", BPF_TRACE_RAW_TP},
                   {fp->progs.shunt_splice_enter, "tcp_splice_read", BPF_TRACE_FENTRY},
                   {fp->progs.shunt_ioctl_enter, "tcp_ioctl", BPF_TRACE_FENTRY},
                   {fp->progs.shunt_bpf_ioctl_enter, "tcp_bpf_ioctl", BPF_TRACE_FENTRY},
                   {fp->progs.shunt_space_adjust, "tcp_rcv_space_adjust", BPF_TRACE_RAW_TP}};
    for (auto& t : tracing) {
      if (!shunt::agent::CanTrace(t.target, t.type)) {
        bpf_program__set_autoload(t.prog, false);
        std::printf("%s: not loadable on this kernel (%s), not measured\n",
                    bpf_program__name(t.prog), t.target);
      }
    }
    ASSERT_EQ(shunt_fastpath__load(fp), 0);
    bpf_program* prog;
    bpf_object__for_each_program(prog, fp->obj) {
      if (bpf_program__autoload(prog)) now[bpf_program__name(prog)] = VerifiedInsns(prog);
    }
    shunt_fastpath__destroy(fp);
  }
  {
    auto* lb = shunt_socklb__open_opts(&opts);
    ASSERT_NE(lb, nullptr);
    // With no cgroup root the verifier would prune all of it (the constant is known at load).
    lb->rodata->shunt_cgroup_root_id = 1;
    if (!shunt::agent::CanTrace("cgroup_mkdir", BPF_TRACE_RAW_TP)) {
      bpf_program__set_autoload(lb->progs.shunt_cgroup_mkdir, false);
      std::printf("shunt_cgroup_mkdir: not loadable on this kernel, not measured\n");
    }
    ASSERT_EQ(shunt_socklb__load(lb), 0);
    bpf_program* prog;
    bpf_object__for_each_program(prog, lb->obj) now[bpf_program__name(prog)] = VerifiedInsns(prog);
    shunt_socklb__destroy(lb);
  }
  std::string report;
  for (const auto& [name, n] : now) report += name + " " + std::to_string(n) + "\n";
  for (const auto& [name, n] : now) {
    EXPECT_GT(n, 0u) << name << ": no verifier figure (kernel < 5.16?)";
    auto it = baseline.find(name);
    ASSERT_NE(it, baseline.end()) << name << " is not in section [" << section
                                  << "] of the baseline; current figures:\n"
                                  << report;
    EXPECT_LE(n, it->second + it->second / 4)
        << name << " grew from " << it->second << " to " << n << " verified instructions; "
        << "if intended, update section [" << section << "] of " << SHUNT_VERIFIER_BASELINE
        << " with:\n" << report;
  }
  std::printf("verified instructions:\n%s", report.c_str());
}

}  // namespace
