// A TLS front for the fake API server: accepts TLS (OpenSSL) on 127.0.0.1:<port 0>, verifies a
// client certificate if one is offered (against the client CA; a certificate that does not verify
// fails the handshake, as on the real API server), and forwards the bytes of each connection to
// a plain-HTTP backend on 127.0.0.1. The verified client subject reaches the backend as an
// "X-Shunt-Client-Subject" header added to the request (one request per connection: the backend
// does not keep connections alive).
//
// Why not civetweb's own TLS: Debian's civetweb 1.15 loads libssl at run time and calls a symbol
// OpenSSL 3 no longer exports (SSL_get_peer_certificate is a macro there): it crashes on the
// first TLS connection.
#pragma once

#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace shunt::testing {

inline constexpr char kClientSubjectHeader[] = "X-Shunt-Client-Subject";

class TlsFront {
 public:
  TlsFront() = default;
  ~TlsFront();
  TlsFront(const TlsFront&) = delete;
  TlsFront& operator=(const TlsFront&) = delete;

  // `cert_chain_and_key_file`: PEM with the server certificate and its key; `client_ca_file`
  // ("" for none): CA for client certificates.
  absl::Status Start(const std::string& cert_chain_and_key_file,
                     const std::string& client_ca_file, int backend_port);
  // Closes the listener and every connection; joins the threads.
  void Stop();
  int port() const { return port_; }

 private:
  void AcceptLoop();
  void Serve(int client_fd);

  SSL_CTX* ctx_ = nullptr;
  int listen_fd_ = -1;
  int port_ = 0;
  int backend_port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  struct Connection {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;  // set by the thread as it returns
  };
  std::mutex mu_;
  std::list<Connection> connections_;  // finished ones are joined by the accept loop
};

}  // namespace shunt::testing
