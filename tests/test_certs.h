// Real X.509 certificates for TLS tests, made at test time with the openssl CLI (package
// openssl) in a temporary directory that is removed with the object.
//   ca, other_ca          two unrelated CAs
//   server                serverAuth for IP 127.0.0.1, signed by ca
//   wrong_ip_server       signed by ca, but for 127.0.0.2
//   client                clientAuth, CN and DNS node-a, signed by ca
//   rogue_client          the same, signed by other_ca
// Each NAME has NAME.crt and NAME.key (PEM) under dir().
#pragma once

#include <string>
#include <vector>

namespace shunt::test {

class Certs {
 public:
  Certs();
  ~Certs();
  Certs(const Certs&) = delete;
  Certs& operator=(const Certs&) = delete;
  // "" when all were made, else what went wrong (with openssl's output).
  const std::string& error() const { return error_; }
  const std::string& dir() const { return dir_; }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

 private:
  bool MakeCa(const std::string& name, const std::string& cn);
  bool MakeLeaf(const std::string& name, const std::string& cn, const std::string& ca,
                const std::string& ext, int serial);
  bool Openssl(std::vector<std::string> args);

  std::string dir_;
  std::string error_;
};

// The whole content of a file ("" if it cannot be read).
std::string ReadWholeFile(const std::string& path);

}  // namespace shunt::test
