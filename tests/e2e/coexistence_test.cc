// PITFALLS 6: shunt shares the pods' cgroup with other programs (a CNI's). It attaches beside them
// (bpf_link, multi-attach), never replaces them, and its uninstall leaves them in place.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "foreign_sockops.skel.h"
#include "tests/e2e/e2e_util.h"

namespace shunt::e2e {
namespace {

using namespace std::chrono_literals;

uint64_t ForeignCount(shunt_foreign_sockops* skel) {
  uint32_t k = 0;
  uint64_t v = 0;
  bpf_map_lookup_elem(bpf_map__fd(skel->maps.foreign_count), &k, &v);
  return v;
}

// The foreign program, attached the legacy way with BPF_F_ALLOW_MULTI, as many CNIs do.
class ForeignProgram {
 public:
  explicit ForeignProgram(const std::string& cgroup) {
    skel_ = shunt_foreign_sockops__open_and_load();
    cg_fd_ = open(cgroup.c_str(), O_RDONLY | O_DIRECTORY);
    if (skel_ && cg_fd_ >= 0) {
      attached_ = bpf_prog_attach(bpf_program__fd(skel_->progs.foreign_sockops), cg_fd_,
                                  BPF_CGROUP_SOCK_OPS, BPF_F_ALLOW_MULTI) == 0;
    }
  }
  ~ForeignProgram() {
    if (attached_) {
      bpf_prog_detach2(bpf_program__fd(skel_->progs.foreign_sockops), cg_fd_, BPF_CGROUP_SOCK_OPS);
    }
    if (cg_fd_ >= 0) close(cg_fd_);
    if (skel_) shunt_foreign_sockops__destroy(skel_);
  }
  bool attached() const { return attached_; }
  uint64_t count() const { return ForeignCount(skel_); }

 private:
  shunt_foreign_sockops* skel_ = nullptr;
  int cg_fd_ = -1;
  bool attached_ = false;
};

class CoexistenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testbed::Options opts;
    opts.nodes = 1;
    opts.pods_per_node = 2;
    auto bed = testbed::Testbed::Create(opts);
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = std::move(*bed);
  }
  void TearDown() override {
    if (bed_) {
      UninstallAgent(*bed_, bed_->node(0)).IgnoreError();
      bed_->Teardown();
    }
  }

  bool Transfer(int port) {
    const auto& a = bed_->pod(0, 0);
    const auto& b = bed_->pod(0, 1);
    auto server = StartTestpeerServer(
        *bed_, b, {absl::StrCat("--port=", port), "--mode=verify", "--conns=2"});
    if (!server.ok()) return false;
    // The first connection of a class may stay plain TCP (docs/fastpath.md, FIONREAD): it
    // teaches the fast path how these two programs read.
    auto t = RunTestpeer(
        *bed_, a, {"verify", absl::StrCat("--to=", b.ipv4, ":", port), "--bytes=64K", "--seed=3"});
    if (!t.ok() || t->value("ok", 0) != 1) return false;
    auto r = RunTestpeer(
        *bed_, a, {"verify", absl::StrCat("--to=", b.ipv4, ":", port), "--bytes=1M", "--seed=3"});
    return r.ok() && r->value("ok", 0) == 1;
  }

  std::string CgroupPrograms() {
    auto out = bed_->RunOnNode(bed_->node(0),
                               {"bpftool", "cgroup", "show", bed_->node(0).cgroup_root}, 10s);
    return out.ok() ? out->out : "";
  }

  std::unique_ptr<testbed::Testbed> bed_;
};

TEST_F(CoexistenceTest, ForeignSockOpsProgramKeepsRunningAndSurvivesUninstall) {
  ForeignProgram foreign(bed_->node(0).cgroup_root);
  ASSERT_TRUE(foreign.attached());
  auto policy = bed_->WritePolicyFile("policy.json",
                                      {{bed_->pod(0, 0).name, true}, {bed_->pod(0, 1).name, true}});
  ASSERT_TRUE(policy.ok());
  AgentProcess agent(*bed_, bed_->node(0), *policy);
  ASSERT_TRUE(agent.Start().ok()) << agent.Stderr();

  std::string progs = CgroupPrograms();
  EXPECT_NE(progs.find("foreign_sockops"), std::string::npos) << progs;
  EXPECT_NE(progs.find("shunt_sockops"), std::string::npos) << progs;

  const uint64_t before = foreign.count();
  ASSERT_TRUE(Transfer(7000));
  EXPECT_GE(foreign.count(), before + 2) << "both ends of the connection ran the foreign program";
  auto m = agent.Scrape();
  ASSERT_TRUE(m.ok());
  EXPECT_GE(e2e::SplicedOrBound(agent, *m, {}), 1 << 20) << "and shunt's program ran too";

  agent.Kill();
  auto out = UninstallAgent(*bed_, bed_->node(0));
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->exit_code, 0) << out->err;
  progs = CgroupPrograms();
  EXPECT_NE(progs.find("foreign_sockops"), std::string::npos) << "uninstall removed only ours";
  EXPECT_EQ(progs.find("shunt_sockops"), std::string::npos) << progs;
  const uint64_t after_uninstall = foreign.count();
  ASSERT_TRUE(Transfer(7001));
  EXPECT_GE(foreign.count(), after_uninstall + 2);
}

}  // namespace
}  // namespace shunt::e2e
