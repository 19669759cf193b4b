// A BodyObserver (agent/proxy/l7_session.h) that keeps everything it is shown, for the sessions'
// tests.
#pragma once

#include <string>
#include <string_view>

#include "agent/proxy/l7_session.h"

namespace shunt::agent {

class RecordingObserver final : public BodyObserver {
 public:
  void RequestBody(std::string_view d) override { request += d; }
  void ResponseHead(int s, std::string_view type, std::string_view encoding) override {
    status = s;
    head = std::string(type) + "|" + std::string(encoding);
  }
  void ResponseBody(std::string_view d) override { response += d; }
  std::string request, response, head;
  int status = 0;
};

}  // namespace shunt::agent
