#include "agent/metrics/l4_reader.h"

#include <bpf/libbpf.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace shunt::agent::metrics {

absl::StatusOr<std::unique_ptr<L4EventReader>> L4EventReader::Start(int ring_fd, BatchFn batch,
                                                                    absl::Duration period) {
  std::unique_ptr<L4EventReader> r(new L4EventReader(std::move(batch), period));
  r->ring_ = ring_buffer__new(ring_fd, &L4EventReader::OnEvent, r.get(), nullptr);
  if (r->ring_ == nullptr) {
    return absl::InternalError(
        absl::StrCat("connection events ring buffer: ", std::strerror(errno)));
  }
  L4EventReader* self = r.get();
  r->thread_ = std::thread([self] {
    while (!self->stop_.WaitForNotificationWithTimeout(self->period_)) self->ConsumeNow();
  });
  return r;
}

L4EventReader::~L4EventReader() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
  if (ring_ != nullptr) {
    ConsumeNow();
    ring_buffer__free(ring_);
  }
}

int L4EventReader::OnEvent(void* ctx, void* data, size_t size) {
  auto* self = static_cast<L4EventReader*>(ctx);
  if (size < sizeof(shunt_l4_event)) return 0;  // not ours: skipped
  shunt_l4_event e;
  std::memcpy(&e, data, sizeof(e));
  self->pending_.push_back(e);
  return 0;
}

void L4EventReader::ConsumeNow() {
  std::lock_guard<std::mutex> l(mu_);
  pending_.clear();
  ring_buffer__consume(ring_);
  batch_(pending_);
}

}  // namespace shunt::agent::metrics
