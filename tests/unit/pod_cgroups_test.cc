#include "agent/policy/pod_cgroups.h"

#include <grp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shunt::agent {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

constexpr char kUid[] = "0f3a2b4c-1111-2222-3333-444455556666";
constexpr char kUid2[] = "9a8b7c6d-0000-4000-8000-000000000002";
constexpr char kUid3[] = "abcdef01-2345-6789-abcd-ef0123456789";
constexpr char kStaticUid[] = "6b1f9d0c1e2a3b4c5d6e7f8091a2b3c4";  // static pods: a 32-hex hash

std::string Underscored(const std::string& uid) { return absl::StrReplaceAll(uid, {{"-", "_"}}); }

TEST(PodUidFromCgroupName, Cgroupfs) {
  EXPECT_EQ(PodUidFromCgroupName(std::string("pod") + kUid), kUid);
  EXPECT_EQ(PodUidFromCgroupName(std::string("pod") + kStaticUid), kStaticUid);
  EXPECT_EQ(PodUidFromCgroupName("pod0F3A2B4C-1111-2222-3333-444455556666"),
            "0F3A2B4C-1111-2222-3333-444455556666");  // not normalised
}

TEST(PodUidFromCgroupName, Systemd) {
  const std::string u = Underscored(kUid);
  EXPECT_EQ(PodUidFromCgroupName("kubepods-pod" + u + ".slice"), kUid);
  EXPECT_EQ(PodUidFromCgroupName("kubepods-besteffort-pod" + u + ".slice"), kUid);
  EXPECT_EQ(PodUidFromCgroupName("kubepods-burstable-pod" + u + ".slice"), kUid);
  EXPECT_EQ(PodUidFromCgroupName(std::string("kubepods-burstable-pod") + kStaticUid + ".slice"),
            kStaticUid);
}

TEST(PodUidFromCgroupName, RejectsEverythingElse) {
  const std::string u = Underscored(kUid);
  for (const std::string& name : {
           std::string("podman"), std::string("pod.slice"), std::string("pod"), std::string(""),
           std::string("kubepods"), std::string("kubepods.slice"), std::string("besteffort"),
           std::string("burstable"), std::string("kubepods-besteffort.slice"),
           std::string("kubepods-burstable.slice"),
           // container cgroups inside a pod
           std::string("cri-containerd-"
                       "3f1e0d9c8b7a69584736251403f2e1d0c9b8a79685746352413f2e1d0c9b8a79.scope"),
           std::string("3f1e0d9c8b7a69584736251403f2e1d0c9b8a79685746352413f2e1d0c9b8a79"),
           std::string("crio-conmon-3f1e0d9c8b7a.scope"),
           // the wrong separator for the driver
           "pod" + u, "kubepods-pod" + std::string(kUid) + ".slice",
           // near misses
           "kubepods-pod" + u,  // no .slice
           "kubepods-pod" + u + ".scope",
           "kubepods-guaranteed-pod" + u + ".slice",  // no such QoS slice
           "xkubepods-pod" + u + ".slice", std::string("pod") + kUid + ".slice",
           std::string("pod") + kUid + "x",
           std::string("pod0f3a2b4c-1111-2222-3333-44445555666"),    // one digit short
           std::string("pod0f3a2b4c-1111-2222-3333-4444555566667"),  // one too many
           std::string("pod0f3a2b4c-1111-2222-3333-44445555666g"),   // not hex
           std::string("pod0f3a2b4c11112222-3333-4444-55556666"),    // dashes misplaced
           std::string("pod6b1f9d0c1e2a3b4c5d6e7f8091a2b3c"),        // 31 hex
       }) {
    EXPECT_EQ(PodUidFromCgroupName(name), std::nullopt) << name;
  }
}

// A unique directory under /tmp, removed with everything in it when the test ends, pass or fail.
class PodCgroupsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/shunt-pod-cgroups-test-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    ASSERT_NE(p, nullptr);
    root_ = p;
  }
  void TearDown() override {
    if (root_.empty()) return;
    std::error_code ec;
    // Make any test-made unreadable directories removable again.
    for (auto it = std::filesystem::recursive_directory_iterator(
             root_, std::filesystem::directory_options::skip_permission_denied, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_directory(ec) && !it->is_symlink(ec)) ::chmod(it->path().c_str(), 0755);
    }
    std::filesystem::remove_all(root_, ec);
  }

  // Creates root_/rel (and parents).
  void Dir(const std::string& rel) { std::filesystem::create_directories(root_ + "/" + rel); }

  std::string root_;
};

TEST_F(PodCgroupsTest, SystemdLayout) {
  const std::string k = "kubepods.slice";
  Dir(k + "/kubepods-pod" + Underscored(kUid) + ".slice/cri-containerd-aaaa.scope");
  Dir(k + "/kubepods-besteffort.slice/kubepods-besteffort-pod" + Underscored(kUid2) +
      ".slice/cri-containerd-bbbb.scope");
  Dir(k + "/kubepods-burstable.slice/kubepods-burstable-pod" + Underscored(kUid3) + ".slice");
  Dir(k + "/kubepods-burstable.slice/kubepods-burstable-pod" + kStaticUid + ".slice");
  auto pods = FindPodCgroups(root_ + "/" + k);
  ASSERT_TRUE(pods.ok()) << pods.status();
  const std::string base = root_ + "/" + k;
  EXPECT_THAT(
      *pods,
      ElementsAre(Pair(kUid, base + "/kubepods-pod" + Underscored(kUid) + ".slice"),
                  Pair(kStaticUid, base + "/kubepods-burstable.slice/kubepods-burstable-pod" +
                                       kStaticUid + ".slice"),
                  Pair(kUid2, base + "/kubepods-besteffort.slice/kubepods-besteffort-pod" +
                                  Underscored(kUid2) + ".slice"),
                  Pair(kUid3, base + "/kubepods-burstable.slice/kubepods-burstable-pod" +
                                  Underscored(kUid3) + ".slice")));
  // From the cgroup2 mount itself: one level deeper, still within the default depth.
  auto from_mount = FindPodCgroups(root_);
  ASSERT_TRUE(from_mount.ok());
  EXPECT_EQ(*from_mount, *pods);
}

TEST_F(PodCgroupsTest, CgroupfsLayout) {
  Dir(std::string("kubepods/pod") + kUid + "/3f1e0d9c8b7a");
  Dir(std::string("kubepods/besteffort/pod") + kUid2);
  Dir(std::string("kubepods/burstable/pod") + kUid3 + "/3f1e0d9c8b7b");
  auto pods = FindPodCgroups(root_ + "/kubepods/");  // a trailing slash is fine
  ASSERT_TRUE(pods.ok()) << pods.status();
  const std::string base = root_ + "/kubepods";
  EXPECT_THAT(*pods, ElementsAre(Pair(kUid, base + "/pod" + kUid),
                                 Pair(kUid2, base + "/besteffort/pod" + kUid2),
                                 Pair(kUid3, base + "/burstable/pod" + kUid3)));
}

TEST_F(PodCgroupsTest, DoesNotDescendIntoPods) {
  // Whatever is inside a pod cgroup belongs to that pod, even if it looks like another pod.
  Dir(std::string("kubepods/pod") + kUid + "/pod" + kUid2);
  auto pods = FindPodCgroups(root_ + "/kubepods");
  ASSERT_TRUE(pods.ok());
  EXPECT_THAT(*pods, ElementsAre(Pair(kUid, root_ + "/kubepods/pod" + kUid)));
}

TEST_F(PodCgroupsTest, DepthLimit) {
  Dir(std::string("a/b/c/pod") + kUid);     // depth 4
  Dir(std::string("a/b/c/d/pod") + kUid2);  // depth 5
  auto pods = FindPodCgroups(root_);
  ASSERT_TRUE(pods.ok());
  EXPECT_THAT(*pods, ElementsAre(Pair(kUid, root_ + "/a/b/c/pod" + kUid)));
  pods = FindPodCgroups(root_, 3);
  ASSERT_TRUE(pods.ok());
  EXPECT_TRUE(pods->empty());
  pods = FindPodCgroups(root_, 5);
  ASSERT_TRUE(pods.ok());
  EXPECT_EQ(pods->size(), 2u);
}

TEST_F(PodCgroupsTest, IgnoresFilesAndSymlinks) {
  Dir("kubepods/burstable");
  Dir("elsewhere/pod" + std::string(kUid2));
  std::ofstream(root_ + "/kubepods/pod" + kUid);  // a file, not a directory
  // Neither a symlink that looks like a pod nor one to a directory holding pods is followed.
  ASSERT_EQ(::symlink((root_ + "/elsewhere/pod" + kUid2).c_str(),
                      (root_ + "/kubepods/pod" + kUid2).c_str()),
            0);
  ASSERT_EQ(::symlink((root_ + "/elsewhere").c_str(), (root_ + "/kubepods/besteffort").c_str()), 0);
  auto pods = FindPodCgroups(root_ + "/kubepods");
  ASSERT_TRUE(pods.ok());
  EXPECT_TRUE(pods->empty());
}

TEST_F(PodCgroupsTest, UnreadableSubdirIsSkipped) {
  Dir(std::string("kubepods/pod") + kUid);
  Dir(std::string("kubepods/burstable/pod") + kUid2);
  ASSERT_EQ(::chmod((root_ + "/kubepods/burstable").c_str(), 0), 0);
  auto check = [&] {
    auto pods = FindPodCgroups(root_ + "/kubepods");
    return pods.ok() && pods->size() == 1 && pods->count(kUid) == 1;
  };
  if (::geteuid() != 0) {
    EXPECT_TRUE(check());
    return;
  }
  // Root reads mode-000 directories: walk as nobody, in a child process.
  ASSERT_EQ(::chmod(root_.c_str(), 0755), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const bool dropped =
        ::setgroups(0, nullptr) == 0 && ::setgid(65534) == 0 && ::setuid(65534) == 0;
    ::_exit(!dropped ? 2 : check() ? 0 : 1);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0) << "1: wrong result, 2: could not drop privileges";
}

TEST_F(PodCgroupsTest, MissingRootIsAnError) {
  auto pods = FindPodCgroups(root_ + "/kubepods.slice");
  EXPECT_EQ(pods.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(pods.status().message()),
              ::testing::StartsWith("pod cgroup root " + root_ + "/kubepods.slice"));
  std::ofstream(root_ + "/file");
  EXPECT_FALSE(FindPodCgroups(root_ + "/file").ok());
}

TEST_F(PodCgroupsTest, EmptyTree) {
  Dir("kubepods.slice/kubepods-besteffort.slice");
  auto pods = FindPodCgroups(root_ + "/kubepods.slice");
  ASSERT_TRUE(pods.ok());
  EXPECT_TRUE(pods->empty());
}

}  // namespace
}  // namespace shunt::agent
