// shunt-controller: watches Kubernetes (or a directory of manifests) and streams policy to every
// shunt-agent over gRPC. See docs/controller.md.
#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/admin_server.h"
#include "common/flags.h"
#include "common/files.h"
#include "common/log.h"
#include "controller/cluster_state.h"
#include "controller/controller.h"
#include "controller/kube/kube_client.h"
#include "controller/kube/kube_source.h"
#include "controller/manifests/manifests_source.h"
#include "controller/policy_server.h"
#include "grpcpp/grpcpp.h"
#include "prometheus/exposer.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"

ABSL_FLAG(std::string, manifests, "",
          "Directory of YAML/JSON manifests (Namespaces, Pods, Services, EndpointSlices and the "
          "policy CRs) to serve instead of a Kubernetes API server; re-read when files change.");
ABSL_FLAG(int, manifests_poll_ms, 500, "How often --manifests is checked for changes.");
ABSL_FLAG(std::string, kubeconfig, "",
          "kubeconfig file; without it and without --manifests the in-cluster service account "
          "is used.");
ABSL_FLAG(int, kube_list_page_size, 500,
          "Objects per Kubernetes list request (limit/continue); 0 lists each kind in one request.");
ABSL_FLAG(int, max_full_pushes, 64,
          "Full-state responses (agents connecting) written at once; others wait their turn.");
ABSL_FLAG(int, max_full_push_mib, 128,
          "MiB of full-state responses written at once (the first always goes).");
ABSL_FLAG(int, push_timeout_ms, 60000,
          "A full state not written to an agent within this, while another agent waits for a "
          "write slot, ends its stream (the agent reconnects); 0: never.");
ABSL_FLAG(int, max_streams, 20000,
          "Policy streams open at once (one per agent; more are refused and counted).");
ABSL_FLAG(int, keepalive_ms, 10000,
          "Keepalive ping interval on policy streams; an agent that answers none within as long "
          "again is disconnected. 0: none.");
ABSL_FLAG(std::string, listen, "0.0.0.0:15010", "gRPC policy stream listen address.");
ABSL_FLAG(std::string, tls_cert, "", "Server certificate (PEM) for the policy stream.");
ABSL_FLAG(std::string, tls_key, "", "Server private key (PEM).");
ABSL_FLAG(std::string, tls_client_ca, "",
          "CA (PEM) that agents' client certificates must chain to: enables mutual TLS.");
ABSL_FLAG(bool, plaintext, false, "Serve the policy stream without TLS (tests, demos).");
ABSL_FLAG(std::string, metrics_addr, "0.0.0.0:15014", "Prometheus /metrics listen address.");
ABSL_FLAG(std::string, admin_addr, "0.0.0.0:15015", "/healthz and /readyz listen address.");
ABSL_FLAG(bool, version, false, "Print the version and exit.");
ABSL_FLAG(bool, verbose, false, "Debug logging.");

namespace {

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials() {
  if (absl::GetFlag(FLAGS_plaintext)) return grpc::InsecureServerCredentials();
  if (absl::GetFlag(FLAGS_tls_cert).empty() || absl::GetFlag(FLAGS_tls_key).empty()) {
    return absl::InvalidArgumentError(
        "the policy stream needs --tls-cert and --tls-key (or --plaintext, for tests only)");
  }
  auto cert = shunt::ReadFileToString(absl::GetFlag(FLAGS_tls_cert));
  auto key = shunt::ReadFileToString(absl::GetFlag(FLAGS_tls_key));
  if (!cert.ok()) return cert.status();
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions opts;
  opts.pem_key_cert_pairs.push_back({*key, *cert});
  if (!absl::GetFlag(FLAGS_tls_client_ca).empty()) {
    auto ca = shunt::ReadFileToString(absl::GetFlag(FLAGS_tls_client_ca));
    if (!ca.ok()) return ca.status();
    opts.pem_root_certs = *ca;
    opts.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(opts);
}

// Source metrics, read at scrape time.
class SourceCollector : public prometheus::Collectable {
 public:
  SourceCollector(const shunt::controller::ManifestsSource* manifests,
                  const shunt::controller::KubernetesSource* kube)
      : manifests_(manifests), kube_(kube) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::MetricType;
    std::vector<prometheus::MetricFamily> out;
    auto counter = [&out](std::string name, std::string help, double v) {
      prometheus::MetricFamily f{std::move(name), std::move(help), MetricType::Counter, {}};
      prometheus::ClientMetric m;
      m.counter.value = v;
      f.metric.push_back(m);
      out.push_back(std::move(f));
    };
    if (manifests_) {
      counter("shunt_controller_manifest_errors_total",
              "Malformed or invalid manifest files/documents seen (each was skipped).",
              static_cast<double>(manifests_->malformed_total()));
    }
    if (kube_) {
      const auto& c = kube_->counters();
      counter("shunt_controller_kube_lists_total", "List calls to the API server.", c.lists);
      counter("shunt_controller_kube_relists_total", "Re-lists after 410 Gone.", c.relists);
      counter("shunt_controller_kube_watch_restarts_total", "Watches resumed.", c.watch_restarts);
      counter("shunt_controller_kube_events_total", "Watch events applied.", c.events);
      counter("shunt_controller_kube_errors_total", "Failed lists and watches.", c.errors);
    }
    return out;
  }

 private:
  const shunt::controller::ManifestsSource* manifests_;
  const shunt::controller::KubernetesSource* kube_;
};

int Run() {
  using namespace shunt::controller;
  // One connection per agent: lift the soft fd limit to the hard one.
  rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto creds = ServerCredentials();
  if (!creds.ok()) {
    SHUNT_LOG(ERROR) << creds.status().message();
    return 2;
  }
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildGauge()
      .Name("shunt_controller_info")
      .Help("Build of this controller (agents export theirs in shunt_agent_info).")
      .Register(*registry)
      .Add({{"version", SHUNT_VERSION}})
      .Set(1);
  ClusterState state;
  PolicyServer server(registry.get(), std::max(1, absl::GetFlag(FLAGS_max_full_pushes)),
                      size_t(std::max(1, absl::GetFlag(FLAGS_max_full_push_mib))) << 20,
                      absl::Milliseconds(std::max(0, absl::GetFlag(FLAGS_push_timeout_ms))),
                      absl::GetFlag(FLAGS_max_streams));

  std::unique_ptr<ManifestsSource> manifests;
  std::unique_ptr<KubernetesSource> kube;
  std::unique_ptr<StatusWriter> status_writer;
  ClusterSource* source = nullptr;
  if (!absl::GetFlag(FLAGS_manifests).empty()) {
    ManifestsOptions o;
    o.dir = absl::GetFlag(FLAGS_manifests);
    o.poll_interval = absl::Milliseconds(absl::GetFlag(FLAGS_manifests_poll_ms));
    manifests = std::make_unique<ManifestsSource>(o);
    source = manifests.get();
  } else {
    auto config = absl::GetFlag(FLAGS_kubeconfig).empty()
                      ? InClusterConfig()
                      : KubeConfigFromFile(absl::GetFlag(FLAGS_kubeconfig));
    if (!config.ok()) {
      SHUNT_LOG(ERROR) << "Kubernetes configuration: " << config.status().message();
      return 2;
    }
    auto watch_client = KubeClient::Create(*config);
    auto status_client = KubeClient::Create(*config);
    if (!watch_client.ok() || !status_client.ok()) {
      SHUNT_LOG(ERROR)
          << "Kubernetes client: "
          << (watch_client.ok() ? status_client.status() : watch_client.status()).message();
      return 2;
    }
    shunt::controller::KubernetesSourceOptions kube_options;
    kube_options.list_page_size = std::max(0, absl::GetFlag(FLAGS_kube_list_page_size));
    kube = std::make_unique<KubernetesSource>(std::move(*watch_client), kube_options);
    status_writer = std::make_unique<KubernetesStatusWriter>(std::move(*status_client));
    source = kube.get();
  }

  Controller controller({}, state, server, status_writer.get());
  controller.Start();
  if (absl::Status s = source->Start(state); !s.ok()) {
    SHUNT_LOG(ERROR) << "source " << source->name() << ": " << s.message();
    return 1;
  }

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), *creds, &port);
  builder.RegisterService(&server);
  PolicyServer::ConfigureServer(builder,
                                absl::Milliseconds(std::max(0, absl::GetFlag(FLAGS_keepalive_ms))));
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  if (!grpc_server || port == 0) {
    SHUNT_LOG(ERROR) << "cannot listen on " << absl::GetFlag(FLAGS_listen);
    return 1;
  }

  std::unique_ptr<prometheus::Exposer> exposer;
  auto source_collector = std::make_shared<SourceCollector>(manifests.get(), kube.get());
  try {
    exposer = std::make_unique<prometheus::Exposer>(absl::GetFlag(FLAGS_metrics_addr));
    exposer->RegisterCollectable(registry);
    exposer->RegisterCollectable(source_collector);
  } catch (const std::exception& e) {
    SHUNT_LOG(ERROR) << "metrics endpoint: " << e.what();
    return 1;
  }
  auto admin = shunt::AdminServer::Start(absl::GetFlag(FLAGS_admin_addr), [&]() -> absl::Status {
    if (!source->synced()) return absl::UnavailableError("source not synced yet");
    return absl::OkStatus();
  });
  if (!admin.ok()) {
    SHUNT_LOG(ERROR) << admin.status().message();
    return 1;
  }
  SHUNT_LOG(INFO) << "shunt-controller " << SHUNT_VERSION << ": source " << source->name()
                  << ", policy stream on " << absl::GetFlag(FLAGS_listen)
                  << (absl::GetFlag(FLAGS_plaintext) ? " (plaintext)" : " (TLS)") << ", metrics on "
                  << absl::GetFlag(FLAGS_metrics_addr);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  SHUNT_LOG(INFO) << "signal " << sig << ": stopping";
  source->Stop();
  controller.Stop();
  grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

}  // namespace

int main(int argc_in, char** argv_in) {
  return shunt::WithNormalizedFlags(argc_in, argv_in, [](int argc, char** argv) {
    absl::SetProgramUsageMessage(
        "shunt control plane.\n  shunt-controller --manifests=DIR --plaintext\n"
        "  shunt-controller [--kubeconfig=F] --tls-cert=C --tls-key=K [--tls-client-ca=CA]");
    absl::ParseCommandLine(argc, argv);
    shunt::log::SetProgramName("shunt-controller");
    if (absl::GetFlag(FLAGS_version)) {
      std::printf("shunt-controller %s\n", SHUNT_VERSION);
      return 0;
    }
    if (absl::GetFlag(FLAGS_verbose)) shunt::log::SetMinLevel(shunt::log::Level::kDebug);
    return Run();
  });
}
