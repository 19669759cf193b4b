// kubeconfig `users[].user.exec`: credentials from an external command (client-go's credential
// plugins, client.authentication.k8s.io ExecCredential), as managed clusters use them
// (aws eks get-token, gke-gcloud-auth-plugin, kubelogin).
//
// The command runs without a terminal, with the controller's environment plus the configured
// `env` and KUBERNETES_EXEC_INFO; it must print an ExecCredential of the configured apiVersion
// whose status has a bearer token or a client certificate and key (PEM), and may say until when
// they are valid. A command that fails, hangs (timeout) or prints anything else is an error that
// carries its stderr.
#pragma once

#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace shunt::controller {

struct ExecConfig {
  std::string api_version;  // client.authentication.k8s.io/v1 or v1beta1
  std::string command;      // a name looked up in PATH, or a path (relative: to the kubeconfig)
  std::vector<std::string> args;
  std::vector<std::pair<std::string, std::string>> env;
  std::string interactive_mode;  // Never, IfAvailable, Always ("" = IfAvailable)
};

struct ExecCredential {
  std::string token;
  std::string client_cert_pem;
  std::string client_key_pem;
  absl::Time expiry = absl::InfiniteFuture();
};

// Runs the plugin once (bounded by `timeout`, and ended early -- Cancelled -- when `*cancel`
// becomes true) and parses what it printed.
absl::StatusOr<ExecCredential> RunExecCredential(const ExecConfig& config,
                                                 absl::Duration timeout = absl::Seconds(30),
                                                 const std::atomic<bool>* cancel = nullptr);

// Parses an ExecCredential (exposed for tests and fuzzing).
absl::StatusOr<ExecCredential> ParseExecCredential(const std::string& json,
                                                   const std::string& api_version);

}  // namespace shunt::controller
