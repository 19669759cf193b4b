#include "common/cgroup.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

namespace shunt {
namespace {

TEST(ParseCgroup2Mount, HybridLayout) {
  // This machine's layout: v1 controllers under /sys/fs/cgroup, v2 at .../unified.
  const char* mountinfo =
      "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
      "26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 "
      "cgroup2 rw,nsdelegate\n"
      "27 25 0:24 / /sys/fs/cgroup/systemd rw shared:10 - cgroup cgroup rw,name=systemd\n";
  auto m = ParseCgroup2Mount(mountinfo);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(*m, "/sys/fs/cgroup/unified");
}

TEST(ParseCgroup2Mount, UnifiedLayoutAndOptionalFields) {
  const char* mountinfo =
      "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 master:2 - cgroup2 "
      "cgroup2 rw\n";
  auto m = ParseCgroup2Mount(mountinfo);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*m, "/sys/fs/cgroup");
}

TEST(ParseCgroup2Mount, EscapedPathAndMissing) {
  auto m = ParseCgroup2Mount("1 2 0:3 / /mnt/my\\040cg rw - cgroup2 none rw\n");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(*m, "/mnt/my cg");
  EXPECT_EQ(ParseCgroup2Mount("1 2 0:3 / /x rw - ext4 /dev/sda rw\n").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(ParseCgroup2Mount("garbage\n\n - - -").ok());
}

TEST(ResolveCgroupRoot, RelativeAndAbsolute) {
  char tmpl[] = "/tmp/shunt-cgroot-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string mount = tmpl;
  ASSERT_EQ(mkdir((mount + "/kubepods.slice").c_str(), 0755), 0);
  EXPECT_EQ(*ResolveCgroupRoot(mount, "kubepods.slice"), mount + "/kubepods.slice");
  EXPECT_EQ(*ResolveCgroupRoot(mount, "/kubepods.slice"), mount + "/kubepods.slice");
  EXPECT_EQ(*ResolveCgroupRoot(mount, mount + "/kubepods.slice"), mount + "/kubepods.slice");
  EXPECT_FALSE(ResolveCgroupRoot(mount, "nope").ok());
  rmdir((mount + "/kubepods.slice").c_str());
  rmdir(mount.c_str());
}

}  // namespace
}  // namespace shunt
