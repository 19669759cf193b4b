#include "agent/policy/controller_source.h"

#include <cerrno>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "agent/policy/policy_file.h"
#include "common/errno_status.h"
#include "common/files.h"
#include "common/log.h"
#include "common/resources.h"
#include "common/status_macros.h"

namespace shunt::agent {

using shunt::v1::PolicyRequest;
using shunt::v1::PolicyResponse;
using shunt::v1::Resource;

namespace {

// Applies `resp` (whose resources are moved out) to `state`.
absl::Status ApplyResponse(PolicyResponse& resp,
                           std::map<std::string, std::shared_ptr<const Resource>>& state) {
  for (const auto& r : resp.resources()) {
    // A body this agent cannot read (a kind newer than it, sent by a newer controller) is kept
    // as held, so that the controller knows the agent has it, and otherwise ignored: counted in
    // UnknownResources(). One with no body at all is an error.
    if (r.body_case() == Resource::BODY_NOT_SET &&
        r.GetReflection()->GetUnknownFields(r).empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("resource ", ResourceKeyString(r.key()), " has no body"));
    }
  }
  for (auto& r : *resp.mutable_resources()) {
    std::string key = ResourceKeyString(r.key());
    state[std::move(key)] = std::make_shared<const Resource>(std::move(r));
  }
  for (const auto& k : resp.removed()) state.erase(ResourceKeyString(k));
  return absl::OkStatus();
}

}  // namespace

ControllerPolicySource::ControllerPolicySource(ControllerSourceOptions options)
    : options_(std::move(options)), name_(absl::StrCat("controller:", options_.address)) {}

ControllerPolicySource::~ControllerPolicySource() { Stop(); }

std::string ControllerPolicySource::StatePath(const std::string& state_dir) {
  return absl::StrCat(state_dir, "/policy-state.pb");
}

absl::Status ControllerPolicySource::LoadPersisted() {
  if (options_.state_dir.empty()) return absl::OkStatus();
  const std::string path = StatePath(options_.state_dir);
  std::ifstream in(path, std::ios::binary);
  if (!in) return errno == ENOENT ? absl::OkStatus() : ErrnoStatus(errno, "open " + path);
  PolicyResponse saved;
  if (!saved.ParseFromIstream(&in)) {
    return absl::DataLossError(absl::StrCat(path, ": not a saved policy state"));
  }
  auto state = std::make_shared<HeldMap>();
  if (absl::Status s = ApplyResponse(saved, *state); !s.ok()) return s;
  if (absl::Status s = ValidatePolicyBundle(ToBundle(*state)); !s.ok()) {
    return absl::DataLossError(absl::StrCat(path, ": ", s.message()));
  }
  absl::MutexLock l(&mu_);
  held_ = std::move(state);
  version_ = saved.system_version_info();
  saved_version_ = version_;
  return absl::OkStatus();
}

void ControllerPolicySource::PersistLoop() {
  absl::Time last_save = absl::InfinitePast();
  while (true) {
    std::shared_ptr<const HeldMap> state;
    std::string version;
    {
      absl::MutexLock l(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return persister_stop_ || to_save_ != nullptr;
      };
      mu_.Await(absl::Condition(&ready));
      if (!to_save_) return;  // stopping, nothing pending
      // Not sooner than min_save_interval after the last save (unless stopping); changes that
      // come meanwhile replace the pending state.
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return persister_stop_; };
      mu_.AwaitWithDeadline(absl::Condition(&stopping), last_save + options_.min_save_interval);
      state = std::move(to_save_);
      to_save_ = nullptr;
      version = to_save_version_;
    }
    PolicyResponse saved;
    saved.set_system_version_info(version);
    for (const auto& [k, r] : *state) *saved.add_resources() = *r;
    absl::Status s = MkdirAll(options_.state_dir);
    if (s.ok()) s = WriteFileAtomic(StatePath(options_.state_dir), saved.SerializeAsString());
    last_save = absl::Now();
    if (s.ok()) {
      absl::MutexLock l(&mu_);
      saved_version_ = version;
    }
    if (!s.ok()) {
      SHUNT_LOG_EVERY_N_SEC(WARNING, 60) << "cannot save the policy state: " << s.message();
    }
  }
}

absl::Status ControllerPolicySource::Start(UpdateFn on_update) {
  on_update_ = std::move(on_update);
  if (absl::Status s = LoadPersisted(); !s.ok()) {
    SHUNT_LOG(WARNING) << "ignoring the saved policy state: " << s.message();
  }
  std::shared_ptr<const HeldMap> held;
  {
    absl::MutexLock l(&mu_);
    held = held_;
  }
  if (!held->empty()) {
    SHUNT_LOG(INFO) << "enforcing the saved policy (" << held->size() << " resources, version "
                    << version() << ") until the controller answers";
    on_update_(ToBundle(*held));
  }
  if (!options_.state_dir.empty()) persister_ = std::thread([this] { PersistLoop(); });
  thread_ = std::thread([this] { Run(); });
  return absl::OkStatus();
}

void ControllerPolicySource::Stop() {
  {
    absl::MutexLock l(&mu_);
    if (stop_) return;
    stop_ = true;
    if (context_) context_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
  {
    absl::MutexLock l(&mu_);
    persister_stop_ = true;  // the session wrote its last state: save it, then end
  }
  if (persister_.joinable()) persister_.join();
}

absl::Status ControllerPolicySource::InSync() const {
  absl::MutexLock l(&mu_);
  return sync_;
}

bool ControllerPolicySource::saved() const {
  absl::MutexLock l(&mu_);
  return !options_.state_dir.empty() && !version_.empty() && saved_version_ == version_;
}

std::string ControllerPolicySource::version() const {
  absl::MutexLock l(&mu_);
  return version_;
}

void ControllerPolicySource::Run() {
  std::mt19937_64 rng(std::random_device{}());
  absl::Duration backoff = options_.min_backoff;
  while (true) {
    const uint64_t nacks_before = nacks_sent_.load();
    const std::string version_before = version();
    Session();
    {
      absl::MutexLock l(&mu_);
      if (stop_) return;
    }
    ++reconnects_;
    // A session that made progress resets the backoff.
    if (version() != version_before || nacks_sent_.load() != nacks_before) {
      backoff = options_.min_backoff;
    }
    std::uniform_real_distribution<double> jitter(0.5, 1.5);
    const absl::Duration wait = backoff * jitter(rng);
    backoff = std::min(backoff * 2, options_.max_backoff);
    absl::MutexLock l(&mu_);
    auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping), wait)) return;
  }
}

void ControllerPolicySource::Session() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kPolicyResponseMaxBytes);
  args.SetMaxSendMessageSize(kPolicyRequestMaxBytes);
  if (options_.keepalive > absl::ZeroDuration()) {
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(options_.keepalive));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, ms);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ms);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // the stream is idle between changes
    // A connection attempt into a black hole gives up as soon (the minimum connect timeout,
    // 20 s by default).
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, ms);
  }
  auto channel = grpc::CreateCustomChannel(options_.address, options_.credentials, args);
  auto stub = shunt::v1::PolicyDiscovery::NewStub(channel);
  grpc::ClientContext context;
  PolicyRequest first;
  {
    absl::MutexLock l(&mu_);
    if (stop_) return;
    context_ = &context;
    first.set_node(options_.node);
    first.set_agent_version(options_.agent_version);
    first.set_version_info(version_);
    for (const auto& [k, r] : *held_) {
      (*first.mutable_initial_resource_versions())[k] = r->version();
    }
  }
  auto stream = stub->Stream(&context);
  PolicyResponse resp;
  bool got_response = false;
  // One write at a time (gRPC allows one, concurrent with a read): ACKs here, enforcement reports
  // from the reporter. A report follows the ACK of the version it describes.
  absl::Mutex write_mu;
  std::string last_report;  // serialized, as last sent
  bool acked_once = false;
  bool session_done = false;
  std::thread reporter;
  if (options_.enforcement) {
    reporter = std::thread([&] {
      absl::MutexLock l(&write_mu);
      while (true) {
        auto done = [&] { return session_done; };
        write_mu.AwaitWithTimeout(absl::Condition(&done), options_.report_interval);
        if (session_done) return;
        if (!acked_once) continue;
        PolicyRequest report;
        *report.mutable_enforcement() = options_.enforcement(absl::ZeroDuration());
        std::string bytes = report.enforcement().SerializeAsString();
        if (bytes == last_report) continue;
        report.set_version_info(version());
        if (!stream->Write(report)) return;
        last_report = std::move(bytes);
      }
    });
  }
  absl::Cleanup stop_reporter = [&] {
    {
      absl::MutexLock l(&write_mu);
      session_done = true;
    }
    if (reporter.joinable()) reporter.join();
  };
  if (stream->Write(first)) {
    while (stream->Read(&resp)) {
      got_response = true;
      std::shared_ptr<const HeldMap> held;
      std::string current_version;
      {
        absl::MutexLock l(&mu_);
        held = held_;
        current_version = version_;
      }
      // Responses are relative to what the agent holds (a first one too: the agent sent what it
      // held): change a copy of it, of pointers, not of resources.
      auto next = std::make_shared<HeldMap>(*held);
      absl::Status s = ApplyResponse(resp, *next);
      shunt::v1::PolicyBundle bundle;
      if (s.ok()) {
        bundle = ToBundle(*next);
        s = ValidatePolicyBundle(bundle);
      }
      PolicyRequest answer;
      answer.set_response_nonce(resp.nonce());
      absl::MutexLock write_lock(&write_mu);
      if (s.ok()) {
        uint64_t unknown = 0;
        for (const auto& [k, r] : *next) unknown += r->body_case() == Resource::BODY_NOT_SET;
        if (unknown != unknown_resources_.exchange(unknown) && unknown > 0) {
          SHUNT_LOG(WARNING) << unknown << " resources of kinds this agent does not know (a "
                                "newer controller) are ignored";
        }
        {
          absl::MutexLock l(&mu_);
          held_ = next;
          version_ = resp.system_version_info();
        }
        on_update_(std::move(bundle));  // enforce first, then save (off this path)
        {
          // In sync once the policy is in the store, not before (readiness said so a moment
          // early: a 100000-workload state read as in sync with none in force yet).
          absl::MutexLock l(&mu_);
          sync_ = absl::OkStatus();
        }
        if (options_.enforcement) {
          // ACK once the kernel holds it, saying what it could not enforce.
          *answer.mutable_enforcement() = options_.enforcement(options_.enforcement_wait);
          last_report = answer.enforcement().SerializeAsString();
          acked_once = true;
        }
        if (!options_.state_dir.empty()) {
          absl::MutexLock l(&mu_);
          to_save_ = std::move(next);
          to_save_version_ = resp.system_version_info();
        }
        answer.set_version_info(resp.system_version_info());
      } else {
        ++nacks_sent_;
        SHUNT_LOG(ERROR) << "policy version " << resp.system_version_info()
                         << " from the controller rejected (NACK), staying on "
                         << (current_version.empty() ? "no policy" : current_version) << ": "
                         << s.message();
        answer.set_version_info(current_version);
        answer.mutable_error_detail()->set_code(static_cast<int>(s.code()));
        answer.mutable_error_detail()->set_message(std::string(s.message()));
        absl::MutexLock l(&mu_);
        sync_ = absl::FailedPreconditionError(absl::StrCat(
            "policy version ", resp.system_version_info(), " rejected: ", s.message()));
      }
      if (!stream->Write(answer)) break;
    }
  }
  std::move(stop_reporter).Invoke();
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  std::string why = status.error_message();
  // Only a connection the controller closed (not refused, not unresolvable, not a handshake that
  // failed on our side, which says so itself).
  const bool closed_by_peer = why.find("Socket closed") != std::string::npos ||
                              why.find("Connection reset") != std::string::npos ||
                              why.find("End of TCP stream") != std::string::npos ||
                              why.find("Broken pipe") != std::string::npos;
  if (!got_response && (options_.tls || options_.client_certificate) &&
      status.error_code() == grpc::StatusCode::UNAVAILABLE && closed_by_peer) {
    // Under TLS 1.3 the server checks the client's certificate after the client has finished
    // its side of the handshake: a refusal reaches the client only as a closed connection.
    absl::StrAppend(&why, " (the controller closed the connection before its first response: if ",
                    "it requires client certificates, ",
                    options_.client_certificate
                        ? "check that --controller-cert is signed by the CA in the controller's "
                          "--tls-client-ca)"
                        : "give this agent one with --controller-cert and --controller-key)");
  }
  absl::MutexLock l(&mu_);
  context_ = nullptr;
  sync_ = absl::UnavailableError(
      absl::StrCat("no stream to the controller at ", options_.address, ": ", why));
  if (!stop_) SHUNT_LOG_EVERY_N_SEC(WARNING, 30) << sync_.message();
}

}  // namespace shunt::agent
