// Lightweight stand-ins for agents on the policy stream: gRPC spoken directly over HTTP/2 with
// nghttp2, one TCP connection per client, all of them on one epoll thread.
//
// Why not 1000 gRPC clients: on a 2-vCPU machine their own polling is what gets measured.
// Measured here (gRPC 1.51): 1000 gRPC streams in one process (callback API, or one thread per
// stream with synchronous reads) received a change ~0.4 ms apart, the last ~400 ms after the
// controller had written all 1000 responses (its own log: every write done within 30 ms); spread
// over 10 processes they took the controller's CPU instead (writes done after ~300 ms). These
// clients cost a few microseconds per message, so the figures are the controller's. Each does
// what an agent does on the wire: subscribes with its node name, receives every response
// (system_version_info and nonce read from the protobuf) and ACKs it.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace shunt::bench {

class H2PolicyFleet {
 public:
  using Clock = std::chrono::steady_clock;

  // Connects `clients` streams to the controller at 127.0.0.1:`port` and serves them until
  // destroyed.
  static absl::StatusOr<std::unique_ptr<H2PolicyFleet>> Start(int port, int clients);
  ~H2PolicyFleet();

  int size() const { return static_cast<int>(versions_.size()); }
  std::string version(int i);           // the last version client i received ("" if none)
  bool AllOn(const std::string& v);     // every client has received v
  bool ArrivalOf(int i, const std::string& v, Clock::time_point* at);
  int closed();  // streams the server ended (a healthy run has none)
  // Resources in the first response client i received (-1 before it): the full state.
  int first_resources(int i);

  struct Conn;  // one client; public for the nghttp2 callbacks

 private:
  H2PolicyFleet() = default;
  void Loop();
  void OnMessage(Conn& c, const char* data, size_t len);
  void Flush(Conn& c);
  friend struct FleetCallbacks;

  int epoll_fd_ = -1;
  std::vector<std::unique_ptr<Conn>> conns_;
  std::thread thread_;
  bool stop_ = false;  // guarded by mu_

  std::mutex mu_;
  std::vector<std::string> versions_;
  std::vector<std::map<std::string, Clock::time_point>> arrivals_;
  std::vector<int> first_resources_;
  int closed_ = 0;
};

}  // namespace shunt::bench
