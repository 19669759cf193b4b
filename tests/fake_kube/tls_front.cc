#include "tests/fake_kube/tls_front.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace shunt::testing {
namespace {

std::string OpensslError() {
  char buf[256];
  ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
  return buf;
}

// Writes all of `data` to a non-blocking plain socket.
bool WriteAll(int fd, const char* data, size_t n, const std::atomic<bool>& stopping) {
  while (n > 0 && !stopping) {
    const ssize_t w = send(fd, data, n, MSG_NOSIGNAL);
    if (w > 0) {
      data += w;
      n -= static_cast<size_t>(w);
    } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
      pollfd p{fd, POLLOUT, 0};
      poll(&p, 1, 100);
    } else {
      return false;
    }
  }
  return n == 0;
}

// Writes all of `data` through a non-blocking SSL connection on `fd`.
bool SslWriteAll(SSL* ssl, int fd, const char* data, size_t n, const std::atomic<bool>& stopping) {
  while (n > 0 && !stopping) {
    const int w = SSL_write(ssl, data, static_cast<int>(n));
    if (w > 0) {
      data += w;
      n -= static_cast<size_t>(w);
      continue;
    }
    const int err = SSL_get_error(ssl, w);
    if (err != SSL_ERROR_WANT_WRITE && err != SSL_ERROR_WANT_READ) return false;
    pollfd p{fd, static_cast<short>(err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN), 0};
    poll(&p, 1, 100);
  }
  return n == 0;
}

}  // namespace

TlsFront::~TlsFront() { Stop(); }

absl::Status TlsFront::Start(const std::string& cert_chain_and_key_file,
                             const std::string& client_ca_file, int backend_port) {
  backend_port_ = backend_port;
  ctx_ = SSL_CTX_new(TLS_server_method());
  if (!ctx_) return absl::InternalError("SSL_CTX_new: " + OpensslError());
  SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx_, cert_chain_and_key_file.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx_, cert_chain_and_key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS front: ", cert_chain_and_key_file, ": ", OpensslError()));
  }
  if (!client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx_, client_ca_file.c_str(), nullptr) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS front: ", client_ca_file, ": ", OpensslError()));
    }
    SSL_CTX_set_client_CA_list(ctx_, SSL_load_client_CA_file(client_ca_file.c_str()));
    // Verified if offered; not required (a client may authenticate with a bearer token).
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
  }
  listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (listen_fd_ < 0 || bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(listen_fd_, 128) != 0 ||
      getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return absl::InternalError(absl::StrCat("TLS front: listen: ", std::strerror(errno)));
  }
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { AcceptLoop(); });
  return absl::OkStatus();
}

void TlsFront::Stop() {
  stopping_ = true;
  if (acceptor_.joinable()) acceptor_.join();
  std::list<Connection> conns;
  {
    std::lock_guard<std::mutex> l(mu_);
    conns.swap(connections_);
  }
  for (auto& c : conns) c.thread.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  listen_fd_ = -1;
  if (ctx_) SSL_CTX_free(ctx_);
  ctx_ = nullptr;
}

void TlsFront::AcceptLoop() {
  while (!stopping_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::lock_guard<std::mutex> l(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      if (!it->done->load()) {
        ++it;
        continue;
      }
      it->thread.join();  // returning already
      it = connections_.erase(it);
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    connections_.push_back({std::thread([this, fd, done] {
                              Serve(fd);
                              done->store(true);
                            }),
                            done});
  }
}

void TlsFront::Serve(int client_fd) {
  // The handshake, blocking but bounded.
  timeval tv{5, 0};
  setsockopt(client_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(client_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  SSL* ssl = SSL_new(ctx_);
  SSL_set_fd(ssl, client_fd);
  int backend_fd = -1;
  auto done = [&] {
    SSL_free(ssl);
    close(client_fd);
    if (backend_fd >= 0) close(backend_fd);
  };
  if (SSL_accept(ssl) != 1) {  // e.g. a client certificate that does not verify
    done();
    return;
  }
  std::string subject;
  if (X509* cert = SSL_get1_peer_certificate(ssl)) {
    if (SSL_get_verify_result(ssl) == X509_V_OK) {
      char buf[512];
      X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof(buf));
      subject = buf;
    }
    X509_free(cert);
  }
  backend_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(backend_port_));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(backend_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    done();
    return;
  }
  fcntl(client_fd, F_SETFL, fcntl(client_fd, F_GETFL) | O_NONBLOCK);
  fcntl(backend_fd, F_SETFL, fcntl(backend_fd, F_GETFL) | O_NONBLOCK);

  std::string head;  // the request up to its first line, until the header is added
  bool header_added = false;
  char buf[16384];
  while (!stopping_) {
    pollfd p[2] = {{client_fd, POLLIN, 0}, {backend_fd, POLLIN, 0}};
    if (SSL_pending(ssl) == 0 && poll(p, 2, 100) <= 0) continue;
    if (SSL_pending(ssl) > 0 || (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      const int n = SSL_read(ssl, buf, sizeof(buf));
      if (n > 0) {
        if (header_added) {
          if (!WriteAll(backend_fd, buf, static_cast<size_t>(n), stopping_)) break;
        } else {
          head.append(buf, static_cast<size_t>(n));
          const size_t eol = head.find("\r\n");
          if (eol != std::string::npos) {
            // Any header of that name from the client is not trusted: ours comes first and
            // the backend reads the first one.
            head.insert(eol + 2, absl::StrCat(kClientSubjectHeader, ": ", subject, "\r\n"));
            header_added = true;
            if (!WriteAll(backend_fd, head.data(), head.size(), stopping_)) break;
            head.clear();
          }
        }
      } else {
        const int err = SSL_get_error(ssl, n);
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) break;
      }
    }
    if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      const ssize_t n = recv(backend_fd, buf, sizeof(buf), 0);
      if (n > 0) {
        if (!SslWriteAll(ssl, client_fd, buf, static_cast<size_t>(n), stopping_)) break;
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        SSL_shutdown(ssl);  // the backend closed: so does the client's connection
        break;
      }
    }
  }
  done();
}

}  // namespace shunt::testing
