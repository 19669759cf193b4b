#include "common/admin_server.h"

#include <civetweb.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace shunt {

struct AdminHandlers {
  static int Reply(mg_connection* conn, int code, const std::string& body) {
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
              "Connection: close\r\n\r\n",
              code, code == 200 ? "OK" : "Service Unavailable", body.size());
    mg_write(conn, body.data(), body.size());
    return code;
  }
  static int Healthz(mg_connection* conn, void*) { return Reply(conn, 200, "ok\n"); }
  static int Readyz(mg_connection* conn, void* cb) {
    auto* self = static_cast<AdminServer*>(cb);
    absl::Status s = self->ready_();
    return s.ok() ? Reply(conn, 200, "ready\n")
                  : Reply(conn, 503, absl::StrCat("not ready: ", s.message(), "\n"));
  }
};

std::string CivetwebListenSpec(const std::string& addr) {
  // civetweb takes "127.0.0.1:80", "[::1]:80" and "80" (any address) alike; "0.0.0.0:80" is fine.
  return addr;
}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& addr,
                                                                Check ready) {
  static const bool inited = (mg_init_library(0), true);
  (void)inited;
  std::unique_ptr<AdminServer> server(new AdminServer());
  server->ready_ = std::move(ready);
  const std::string ports = CivetwebListenSpec(addr);
  const char* options[] = {"listening_ports", ports.c_str(), "num_threads", "2", nullptr};
  mg_callbacks callbacks{};
  server->ctx_ = mg_start(&callbacks, nullptr, options);
  if (!server->ctx_) {
    return absl::UnavailableError(absl::StrCat("admin server cannot listen on ", addr));
  }
  mg_set_request_handler(server->ctx_, "/healthz", AdminHandlers::Healthz, server.get());
  mg_set_request_handler(server->ctx_, "/readyz", AdminHandlers::Readyz, server.get());
  return server;
}

AdminServer::~AdminServer() {
  if (ctx_) mg_stop(ctx_);
}

}  // namespace shunt
