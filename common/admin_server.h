// Admin HTTP endpoints of shunt-agent and shunt-controller: /healthz (the process serves) and
// /readyz (the owner says whether it is ready). Served by civetweb, separate from /metrics.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct mg_context;

namespace shunt {

class AdminServer {
 public:
  using Check = std::function<absl::Status()>;
  // `addr` is "host:port" or "[v6]:port".
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(const std::string& addr, Check ready);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

 private:
  AdminServer() = default;
  mg_context* ctx_ = nullptr;
  Check ready_;
  friend struct AdminHandlers;
};

// "host:port" -> civetweb's listening_ports syntax.
std::string CivetwebListenSpec(const std::string& addr);

}  // namespace shunt
