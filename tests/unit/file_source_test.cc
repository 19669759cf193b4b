#include "agent/policy/file_source.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/test_util.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "agent/policy/policy_file.h"
#include "agent/policy/policy_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shunt::agent {
namespace {

using ::testing::StartsWith;

// A unique directory under /tmp, removed with everything in it when the test ends, pass or fail.
class TempDir : public shunt::test::TempDir {
 public:
  TempDir() : shunt::test::TempDir("shunt-file-source-test") {}
};

// What a source reported, in order.
class Updates {
 public:
  PolicySource::UpdateFn Fn() {
    return [this](absl::StatusOr<shunt::v1::PolicyBundle> u) {
      absl::MutexLock lock(&mu_);
      got_.push_back(std::move(u));
    };
  }
  size_t size() {
    absl::MutexLock lock(&mu_);
    return got_.size();
  }
  absl::StatusOr<shunt::v1::PolicyBundle> at(size_t i) {
    absl::MutexLock lock(&mu_);
    return got_.at(i);
  }
  // Waits (without polling the clock in a loop) until `n` updates arrived.
  bool WaitFor(size_t n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return got_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }

 private:
  absl::Mutex mu_;
  std::vector<absl::StatusOr<shunt::v1::PolicyBundle>> got_ ABSL_GUARDED_BY(mu_);
};

std::string Policy(const std::string& uid) {
  return absl::StrCat("workloads: [{uid: ", uid, ", namespace: ns, name: n}]\n");
}

void WriteInPlace(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc | std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// As editors and `kubectl cp` do: write a sibling, rename it over the file.
void ReplaceByRename(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  WriteInPlace(tmp, text);
  ASSERT_EQ(::rename(tmp.c_str(), path.c_str()), 0) << path;
}

std::string UidOf(const absl::StatusOr<shunt::v1::PolicyBundle>& u) {
  if (!u.ok()) return absl::StrCat("error: ", u.status().message());
  if (u->workloads_size() != 1) return "?";
  return u->workloads(0).uid();
}

class FilePolicySourceTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed"; }

  TempDir dir_;
  const std::string path_ = dir_.path() + "/policy.yaml";
  // Long enough that only PollOnce() calls poll in the tests that use it.
  static constexpr absl::Duration kNever = absl::Hours(1);
};

TEST_F(FilePolicySourceTest, StartReportsTheInitialBundle) {
  WriteInPlace(path_, Policy("a"));
  FilePolicySource source(path_, kNever);
  EXPECT_EQ(source.name(), "file:" + path_);
  Updates updates;
  ASSERT_TRUE(source.Start(updates.Fn()).ok());
  ASSERT_EQ(updates.size(), 1u);  // synchronously, before Start returned
  EXPECT_EQ(UidOf(updates.at(0)), "a");
  EXPECT_EQ(source.Start(updates.Fn()).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(source.PollOnce());  // unchanged: no second report
  EXPECT_EQ(updates.size(), 1u);
}

TEST_F(FilePolicySourceTest, MissingFileIsReportedThenPickedUpWhenItAppears) {
  FilePolicySource source(path_, kNever);
  Updates updates;
  ASSERT_TRUE(source.Start(updates.Fn()).ok());
  ASSERT_EQ(updates.size(), 1u);
  EXPECT_EQ(updates.at(0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(updates.at(0).status().message()), StartsWith(path_ + ": "));
  EXPECT_FALSE(source.PollOnce());  // still missing: reported once, not at every poll
  WriteInPlace(path_, Policy("a"));
  EXPECT_TRUE(source.PollOnce());
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_EQ(UidOf(updates.at(1)), "a");
}

TEST_F(FilePolicySourceTest, PicksUpAnInPlaceChange) {
  WriteInPlace(path_, Policy("a"));
  FilePolicySource source(path_, kNever);
  Updates updates;
  ASSERT_TRUE(source.Start(updates.Fn()).ok());
  WriteInPlace(path_, Policy("bbbb"));
  EXPECT_TRUE(source.PollOnce());
  EXPECT_FALSE(source.PollOnce());
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_EQ(UidOf(updates.at(1)), "bbbb");
}

TEST_F(FilePolicySourceTest, PicksUpAFileReplacedByRename) {
  WriteInPlace(path_, Policy("a"));
  FilePolicySource source(path_, kNever);
  Updates updates;
  ASSERT_TRUE(source.Start(updates.Fn()).ok());
  ReplaceByRename(path_, Policy("b"));  // same size: the inode tells
  EXPECT_TRUE(source.PollOnce());
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_EQ(UidOf(updates.at(1)), "b");
}

TEST_F(FilePolicySourceTest, PicksUpAConfigMapStyleSymlinkSwap) {
  // kubelet's ConfigMap volume: policy.yaml -> ..data/policy.yaml, ..data -> ..<timestamp>/.
  const std::string& d = dir_.path();
  ASSERT_EQ(::mkdir((d + "/..v1").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((d + "/..v2").c_str(), 0755), 0);
  WriteInPlace(d + "/..v1/policy.yaml", Policy("a"));
  WriteInPlace(d + "/..v2/policy.yaml", Policy("b"));
  ASSERT_EQ(::symlink("..v1", (d + "/..data").c_str()), 0);
  ASSERT_EQ(::symlink("..data/policy.yaml", path_.c_str()), 0);
  FilePolicySource source(path_, kNever);
  Updates updates;
  ASSERT_TRUE(source.Start(updates.Fn()).ok());
  EXPECT_EQ(UidOf(updates.at(0)), "a");
  ASSERT_EQ(::symlink("..v2", (d + "/..data_tmp").c_str()), 0);
  ASSERT_EQ(::rename((d + "/..data_tmp").c_str(), (d + "/..data").c_str()), 0);
  EXPECT_TRUE(source.PollOnce());
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_EQ(UidOf(updates.at(1)), "b");
}

TEST_F(FilePolicySourceTest, MalformedRewriteKeepsThePreviousPolicyInForce) {
  WriteInPlace(path_, Policy("a"));
  PolicyStore store;
  FilePolicySource source(path_, kNever);
  ASSERT_TRUE(source
                  .Start([&](absl::StatusOr<shunt::v1::PolicyBundle> u) {
                    store.Apply(source.name(), std::move(u));
                  })
                  .ok());
  ASSERT_TRUE(store.has_policy());
  EXPECT_EQ(store.Current()->version, 1u);
  EXPECT_EQ(store.Current()->source, "file:" + path_);

  WriteInPlace(path_, "workloads: [{uid: b, namespace: ns, name: n}\n");  // unclosed '['
  EXPECT_TRUE(source.PollOnce());
  EXPECT_EQ(store.errors_total(), 1u);
  EXPECT_EQ(store.Current()->version, 1u);
  EXPECT_EQ(store.Current()->bundle.workloads(0).uid(), "a");
  EXPECT_EQ(store.last_error().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(store.last_error().message()),
              StartsWith(path_ + ": YAML syntax error at line"));

  WriteInPlace(path_, R"({"workloads": [{"uid": "c", "namespace": "ns", "name": "NOT_DNS"}]})");
  EXPECT_TRUE(source.PollOnce());
  EXPECT_EQ(store.errors_total(), 2u);
  EXPECT_EQ(std::string(store.last_error().message()),
            path_ +
                R"(: workloads[0].name: "NOT_DNS" is not a DNS name (lowercase letters, digits, )"
                R"('-' and '.', starting and ending with a letter or digit))");
  EXPECT_EQ(store.Current()->bundle.workloads(0).uid(), "a");

  ReplaceByRename(path_, Policy("dddd"));  // fixed
  EXPECT_TRUE(source.PollOnce());
  EXPECT_EQ(store.Current()->version, 2u);
  EXPECT_EQ(store.Current()->bundle.workloads(0).uid(), "dddd");
  EXPECT_TRUE(store.last_error().ok());
}

TEST_F(FilePolicySourceTest, DeletedFileIsAnErrorAndThePolicyStays) {
  WriteInPlace(path_, Policy("a"));
  PolicyStore store;
  FilePolicySource source(path_, kNever);
  ASSERT_TRUE(source
                  .Start([&](absl::StatusOr<shunt::v1::PolicyBundle> u) {
                    store.Apply(source.name(), std::move(u));
                  })
                  .ok());
  ASSERT_EQ(::unlink(path_.c_str()), 0);
  EXPECT_TRUE(source.PollOnce());
  EXPECT_EQ(store.last_error().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store.Current()->bundle.workloads(0).uid(), "a");
  EXPECT_FALSE(source.PollOnce());
  EXPECT_EQ(store.errors_total(), 1u);
}

TEST_F(FilePolicySourceTest, BackgroundThreadPicksUpChanges) {
  WriteInPlace(path_, Policy("a"));
  FilePolicySource source(path_, absl::Milliseconds(5));
  Updates updates;
  ASSERT_TRUE(source.Start(updates.Fn()).ok());
  ReplaceByRename(path_, Policy("bb"));
  ASSERT_TRUE(updates.WaitFor(2, absl::Seconds(30)));
  EXPECT_EQ(UidOf(updates.at(1)), "bb");
  ASSERT_EQ(::unlink(path_.c_str()), 0);
  ASSERT_TRUE(updates.WaitFor(3, absl::Seconds(30)));
  EXPECT_EQ(updates.at(2).status().code(), absl::StatusCode::kNotFound);
  WriteInPlace(path_, Policy("ccc"));
  ASSERT_TRUE(updates.WaitFor(4, absl::Seconds(30)));
  EXPECT_EQ(UidOf(updates.at(3)), "ccc");
  source.Stop();
  const size_t after_stop = updates.size();
  WriteInPlace(path_, Policy("dddd"));
  EXPECT_FALSE(updates.WaitFor(after_stop + 1, absl::Milliseconds(50)));  // no reports after Stop
}

TEST_F(FilePolicySourceTest, StopIsPrompt) {
  WriteInPlace(path_, Policy("a"));
  Updates updates;
  {
    FilePolicySource source(path_, kNever);
    ASSERT_TRUE(source.Start(updates.Fn()).ok());
    const absl::Time start = absl::Now();
    source.Stop();
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
    source.Stop();  // idempotent
    // Restartable: reports the file again.
    ASSERT_TRUE(source.Start(updates.Fn()).ok());
    EXPECT_EQ(updates.size(), 2u);
  }  // the destructor stops it too
  EXPECT_EQ(updates.size(), 2u);
}

TEST_F(FilePolicySourceTest, NotARegularFile) {
  ASSERT_EQ(::mkdir(path_.c_str(), 0755), 0);
  FilePolicySource dir_source(path_, kNever);
  Updates updates;
  ASSERT_TRUE(dir_source.Start(updates.Fn()).ok());
  EXPECT_EQ(updates.at(0).status().message(), path_ + ": not a regular file");

  const std::string fifo = dir_.path() + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  FilePolicySource fifo_source(fifo, kNever);  // must not block in open(2)
  ASSERT_TRUE(fifo_source.Start(updates.Fn()).ok());
  EXPECT_EQ(updates.at(1).status().message(), fifo + ": not a regular file");
}

TEST_F(FilePolicySourceTest, TooLarge) {
  { std::ofstream out(path_); }
  ASSERT_EQ(::truncate(path_.c_str(), static_cast<off_t>(kMaxPolicyBytes) + 1), 0);  // sparse
  FilePolicySource source(path_, kNever);
  Updates updates;
  ASSERT_TRUE(source.Start(updates.Fn()).ok());
  EXPECT_EQ(updates.at(0).status().message(),
            path_ + ": policy is 16777217 bytes; at most 16777216 are allowed");
}

TEST_F(FilePolicySourceTest, EmptyFileIsAnError) {
  WriteInPlace(path_, "");
  FilePolicySource source(path_, kNever);
  Updates updates;
  ASSERT_TRUE(source.Start(updates.Fn()).ok());
  EXPECT_EQ(updates.at(0).status().message(),
            path_ + ": policy is empty (write `workloads: []` for no workloads)");
}

TEST_F(FilePolicySourceTest, PollOnceBeforeStartDoesNothing) {
  WriteInPlace(path_, Policy("a"));
  FilePolicySource source(path_, kNever);
  EXPECT_FALSE(source.PollOnce());
}

}  // namespace
}  // namespace shunt::agent
