// The Echo service of tests/e2e/proto/echo.proto, as the tests' servers run it: Unary returns
// the request (trailing metadata "x-echo-seq": its seq), Chat echoes every message, Admin
// answers OK; the calls are counted, for the tests to check what reached the server.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <string>

#include "echo.grpc.pb.h"

namespace shunt::test {

class EchoService final : public Echo::Service {
 public:
  grpc::Status Unary(grpc::ServerContext* ctx, const Chunk* req, Chunk* resp) override {
    ++unary_calls;
    *resp = *req;
    ctx->AddTrailingMetadata("x-echo-seq", std::to_string(req->seq()));
    return grpc::Status::OK;
  }
  grpc::Status Chat(grpc::ServerContext*, grpc::ServerReaderWriter<Chunk, Chunk>* stream) override {
    Chunk c;
    while (stream->Read(&c)) {
      if (!stream->Write(c)) break;
    }
    return grpc::Status::OK;
  }
  grpc::Status Admin(grpc::ServerContext*, const Chunk*, Chunk*) override {
    ++admin_calls;
    return grpc::Status::OK;
  }
  std::atomic<int> unary_calls{0}, admin_calls{0};
};

}  // namespace shunt::test
