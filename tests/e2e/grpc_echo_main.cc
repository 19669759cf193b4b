// shunt-test-grpc: the test suite's gRPC peer (tests/e2e/proto/echo.proto), run inside the test
// bed's pods by the kernel tests.
//   server --port=N --ready=FILE
//       the Echo service (echo_service.h) on [::]:N;
//       FILE is created once it listens.
//   load --to=HOST:PORT --until=FILE
//       until FILE exists, on one channel: unary calls one after the other, and at the same time
//       bidirectional Chat streams one after the other, each 20 messages 20 ms apart (checked
//       one by one) then closed. Prints one JSON line: unary_ok, unary_fail, streams_ok,
//       streams_fail, first_error. Exit 0 (the caller judges the counts).
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

#include "echo.grpc.pb.h"
#include "tests/e2e/echo_service.h"

namespace {

using namespace std::chrono_literals;

std::string Arg(int argc, char** argv, const char* name) {
  const std::string prefix = std::string("--") + name + "=";
  for (int i = 2; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return argv[i] + prefix.size();
  }
  return "";
}

int Server(int argc, char** argv) {
  const std::string port = Arg(argc, argv, "port"), ready = Arg(argc, argv, "ready");
  if (port.empty()) {
    std::fprintf(stderr, "server: --port is needed\n");
    return 2;
  }
  shunt::test::EchoService echo;
  grpc::ServerBuilder b;
  b.AddListeningPort("[::]:" + port, grpc::InsecureServerCredentials());
  b.RegisterService(&echo);
  std::unique_ptr<grpc::Server> server = b.BuildAndStart();
  if (!server) {
    std::fprintf(stderr, "server: cannot listen on %s\n", port.c_str());
    return 1;
  }
  if (!ready.empty()) std::ofstream(ready).close();
  server->Wait();
  return 0;
}

int Load(int argc, char** argv) {
  const std::string to = Arg(argc, argv, "to"), until = Arg(argc, argv, "until");
  if (to.empty() || until.empty()) {
    std::fprintf(stderr, "load: --to and --until are needed\n");
    return 2;
  }
  auto stub = shunt::test::Echo::NewStub(
      grpc::CreateChannel(to, grpc::InsecureChannelCredentials()));
  auto done = [&] { return access(until.c_str(), F_OK) == 0; };
  std::atomic<long> unary_ok{0}, unary_fail{0}, streams_ok{0}, streams_fail{0};
  std::mutex mu;
  std::string first_error;
  auto failed = [&](const std::string& what) {
    std::lock_guard<std::mutex> l(mu);
    if (first_error.empty()) first_error = what;
  };
  std::thread unary([&] {
    for (long seq = 0; !done(); ++seq) {
      shunt::test::Chunk req, resp;
      req.set_seq(seq);
      req.set_data("unary " + std::to_string(seq));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 10s);
      grpc::Status st = stub->Unary(&ctx, req, &resp);
      if (st.ok() && resp.data() == req.data()) {
        ++unary_ok;
      } else {
        ++unary_fail;
        failed("unary: " + std::to_string(st.error_code()) + " " + st.error_message());
      }
      std::this_thread::sleep_for(2ms);
    }
  });
  std::thread streams([&] {
    while (!done()) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 20s);
      auto stream = stub->Chat(&ctx);
      bool good = true;
      for (int i = 0; i < 20 && good; ++i) {
        shunt::test::Chunk out, in;
        out.set_seq(i);
        out.set_data(std::string(100 + i, 'a' + i % 26));
        good = stream->Write(out) && stream->Read(&in) && in.seq() == i && in.data() == out.data();
        std::this_thread::sleep_for(20ms);
      }
      if (good) stream->WritesDone();
      grpc::Status st = stream->Finish();
      if (good && st.ok()) {
        ++streams_ok;
      } else {
        ++streams_fail;
        failed("stream: " + std::to_string(st.error_code()) + " " + st.error_message());
      }
    }
  });
  unary.join();
  streams.join();
  std::string escaped;
  for (char c : first_error) {
    if (c == '"' || c == '\\') escaped += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) escaped += c;
  }
  std::printf(
      "{\"unary_ok\": %ld, \"unary_fail\": %ld, \"streams_ok\": %ld, \"streams_fail\": %ld, "
      "\"first_error\": \"%s\"}\n",
      unary_ok.load(), unary_fail.load(), streams_ok.load(), streams_fail.load(),
      escaped.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "server") return Server(argc, argv);
  if (mode == "load") return Load(argc, argv);
  std::fprintf(stderr, "usage: %s server --port=N [--ready=FILE] | load --to=H:P --until=FILE\n",
               argv[0]);
  return 2;
}
