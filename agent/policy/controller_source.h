// The agent's policy source in a cluster: the shunt-controller's delta stream
// (proto/shunt/v1/discovery.proto).
//
// Each response is applied to a copy of the resources held, validated as a whole, and only then
// reported (the store and the kernel switch to it) and ACKed; an invalid response is NACKed with
// the reason and the agent stays on its last good version. Every good state is persisted under
// `state_dir`, so that an agent restarted while the controller is down enforces the last policy it
// had, and on reconnect tells the controller what it holds (only the difference is sent).
// Reconnects back off exponentially with jitter.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/policy/policy_store.h"
#include "grpcpp/grpcpp.h"
#include "shunt/v1/discovery.grpc.pb.h"

namespace shunt::agent {

struct ControllerSourceOptions {
  std::string address;  // host:port of shunt-controller
  std::string node;
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // TLS, or insecure when asked for
  bool tls = false;                 // credentials are TLS (for the hints in InSync())
  bool client_certificate = false;  // credentials carry a client certificate (mutual TLS)
  std::string state_dir;  // where the last good snapshot is kept ("" = not persisted)
  // At least this long between saves (the latest state wins; a pending one is written at
  // Stop()). Zero: save as soon as the last save is done -- changes that arrive during a save
  // are coalesced into the next one, and a crash loses at most what was not saved yet.
  absl::Duration min_save_interval = absl::ZeroDuration();
  absl::Duration min_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(30);
  // Pings on the stream every `keepalive`; one unanswered for as long again ends the session (a
  // controller node gone, a partition: the stream would otherwise wait forever, in sync as far as
  // /readyz could tell). Zero: none.
  absl::Duration keepalive = absl::Seconds(10);
  std::string agent_version;
  // What of the policy just handed to the update function the kernel enforces, once it is
  // applied or after `wait` (docs/controller.md, "What an ACK means"): each ACK waits for it and
  // carries it; when it changes later it is sent alone (checked every `report_interval`). Unset:
  // ACKs carry no report.
  std::function<shunt::v1::EnforcementReport(absl::Duration wait)> enforcement;
  absl::Duration enforcement_wait = absl::Seconds(5);
  absl::Duration report_interval = absl::Seconds(1);
};

class ControllerPolicySource : public PolicySource {
 public:
  explicit ControllerPolicySource(ControllerSourceOptions options);
  ~ControllerPolicySource() override;  // Stop()

  absl::string_view name_view() const { return name_; }
  std::string_view name() const override { return name_; }
  // Reports the persisted snapshot (if any) at once, then connects in the background.
  absl::Status Start(UpdateFn on_update) override;
  void Stop() override;

  // Connected, and the last response was applied (ACK). With the reason when not.
  absl::Status InSync() const;
  std::string version() const;  // system_version_info in force ("" if none)
  // The policy in force is saved in --state-dir (what a restart would enforce). False without a
  // state dir.
  bool saved() const;
  uint64_t nacks_sent() const { return nacks_sent_.load(); }
  uint64_t reconnects() const { return reconnects_.load(); }
  // Resources held whose kind this agent does not know (a newer controller): ignored.
  uint64_t unknown_resources() const { return unknown_resources_.load(); }

  // The persisted state file under `state_dir`.
  static std::string StatePath(const std::string& state_dir);

 private:
  void Run();
  // One stream session; returns when it ends.
  void Session();
  absl::Status LoadPersisted();
  // Saves the state handed to it by Session() off the ACK path, on a thread of its own: the
  // latest state wins, and a pending one is written before Stop() returns.
  void PersistLoop();

  // What the agent holds, by ResourceKeyString. Immutable once published: a response copies
  // pointers, not resources, and the persister writes it without a copy.
  using HeldMap = std::map<std::string, std::shared_ptr<const shunt::v1::Resource>>;

  ControllerSourceOptions options_;
  std::string name_;
  UpdateFn on_update_;
  std::thread thread_;
  std::thread persister_;

  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;  // of the live session
  std::shared_ptr<const HeldMap> held_ ABSL_GUARDED_BY(mu_) = std::make_shared<const HeldMap>();
  std::string version_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const HeldMap> to_save_ ABSL_GUARDED_BY(mu_);  // null: nothing to save
  bool persister_stop_ ABSL_GUARDED_BY(mu_) = false;  // set once the session thread ended
  std::string saved_version_ ABSL_GUARDED_BY(mu_);    // of the last successful save
  std::string to_save_version_ ABSL_GUARDED_BY(mu_);
  absl::Status sync_ ABSL_GUARDED_BY(mu_) = absl::UnavailableError("not connected yet");
  std::atomic<uint64_t> nacks_sent_{0};
  std::atomic<uint64_t> reconnects_{0};
  std::atomic<uint64_t> unknown_resources_{0};
};

}  // namespace shunt::agent
