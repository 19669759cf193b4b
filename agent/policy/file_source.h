// --policy-file: a PolicySource that reads a JSON or YAML PolicyBundle (docs/policy-file.md) and
// watches it for changes by polling.
//
// Polling, not inotify: it sees every way a file changes (written in place, replaced by rename as
// editors and `kubectl cp` do, swapped through a symlink as kubelet does for ConfigMap volumes,
// created after the agent started) with one stat(2) per interval. A missing, unreadable or
// malformed file is reported as an error whose message starts with the path, once per change of the
// file, never as a crash; the store then keeps the previous policy.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/policy/policy_store.h"

namespace shunt::agent {

class FilePolicySource : public PolicySource {
 public:
  static constexpr absl::Duration kDefaultPollInterval = absl::Seconds(2);

  explicit FilePolicySource(std::string path, absl::Duration poll_interval = kDefaultPollInterval);
  ~FilePolicySource() override;  // Stop()s
  FilePolicySource(const FilePolicySource&) = delete;
  FilePolicySource& operator=(const FilePolicySource&) = delete;

  // "file:<path>".
  std::string_view name() const override { return name_; }
  // Reads and reports the file once, synchronously, then polls it on a background thread.
  // FailedPrecondition if already started; a bad file is reported, not returned.
  absl::Status Start(UpdateFn on_update) override;
  // Wakes and joins the polling thread; returns within one stat+read, not one interval.
  void Stop() override;

  // Checks the file now and reports it if it changed since the last report. The polling thread
  // calls this every interval; tests call it directly to avoid waiting on the clock. Returns
  // whether it reported. Only valid between Start() and Stop().
  bool PollOnce();

 private:
  // What identifies one version of the file without reading it. Includes the stat error, so that
  // a file that stays missing is reported once, and one that appears is noticed.
  struct Fingerprint {
    int error = 0;  // errno of stat(2), 0 if it succeeded
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    int64_t mtime_ns = 0;
    int64_t ctime_ns = 0;
    bool operator==(const Fingerprint&) const = default;
  };

  static Fingerprint Stat(const std::string& path);
  // Reads and parses the file; sets `*seen` to the fingerprint of what was read.
  absl::StatusOr<shunt::v1::PolicyBundle> Load(Fingerprint* seen) const;
  void PollLoop();

  const std::string path_;
  const std::string name_;
  const absl::Duration poll_interval_;

  // Serialises polls (the thread's and direct PollOnce calls) and guards what they share.
  absl::Mutex poll_mu_;
  UpdateFn on_update_ ABSL_GUARDED_BY(poll_mu_);
  Fingerprint last_ ABSL_GUARDED_BY(poll_mu_);

  absl::Mutex stop_mu_;
  bool stopping_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread thread_;  // touched only by Start and Stop, which the owner does not race
};

}  // namespace shunt::agent
