// Reads the kernel's connection events (bpf/fastpath.bpf.c, the L4 metrics) from their ring
// buffer: a thread of its own consumes it every `period` (the programs never wake it: under load
// each pass takes thousands at once) and hands each pass's events to `batch`. Stopping consumes
// what is left first.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "shunt/fastpath_abi.h"

struct ring_buffer;

namespace shunt::agent::metrics {

class L4EventReader {
 public:
  using BatchFn = std::function<void(const std::vector<shunt_l4_event>&)>;
  // `ring_fd`: the ring buffer map (Fastpath::l4_events_fd()), which must outlive the reader.
  static absl::StatusOr<std::unique_ptr<L4EventReader>> Start(int ring_fd, BatchFn batch,
                                                              absl::Duration period);
  ~L4EventReader();
  L4EventReader(const L4EventReader&) = delete;
  L4EventReader& operator=(const L4EventReader&) = delete;

  // One pass now, on the caller's thread (the reader's own may run at the same time: passes are
  // serialised).
  void ConsumeNow();

 private:
  L4EventReader(BatchFn batch, absl::Duration period)
      : batch_(std::move(batch)), period_(period) {}
  static int OnEvent(void* ctx, void* data, size_t size);

  BatchFn batch_;
  absl::Duration period_;
  ring_buffer* ring_ = nullptr;
  std::mutex mu_;                        // one pass at a time
  std::vector<shunt_l4_event> pending_;  // the pass's events (under mu_)
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace shunt::agent::metrics
