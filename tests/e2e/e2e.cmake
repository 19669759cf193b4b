# End-to-end tests in the simulated cluster: root, real kernel programs, namespaces, cgroups.
add_library(shunt_e2e_util STATIC e2e/e2e_util.cc)
target_link_libraries(shunt_e2e_util PUBLIC shunt_testbed shunt_common absl::strings
                      nlohmann_json::nlohmann_json)
target_compile_definitions(shunt_e2e_util PUBLIC
  SHUNT_AGENT_BIN="$<TARGET_FILE:shunt-agent>"
  SHUNT_TESTPEER_BIN="$<TARGET_FILE:shunt-testpeer>")

shunt_test(fastpath_test KERNEL SOURCES e2e/fastpath_test.cc
           LIBS shunt_e2e_util nlohmann_json::nlohmann_json)
add_dependencies(fastpath_test shunt-agent shunt-testpeer)

# The application-compatibility suite (ctest -R Compat): shunt-compat cases meshed vs unmeshed.
shunt_test(compat_test KERNEL SOURCES e2e/compat_test.cc
           LIBS shunt_e2e_util nlohmann_json::nlohmann_json)
target_compile_definitions(compat_test PRIVATE SHUNT_COMPAT_BIN="$<TARGET_FILE:shunt-compat>")
add_dependencies(compat_test shunt-agent shunt-compat)



# Another party's sock_ops program, to test coexistence on one cgroup.
shunt_bpf_object(foreign_sockops SOURCE e2e/foreign_sockops.bpf.c)
shunt_test(coexistence_test KERNEL SOURCES e2e/coexistence_test.cc
           LIBS shunt_e2e_util foreign_sockops_skel PkgConfig::LIBBPF nlohmann_json::nlohmann_json)
add_dependencies(coexistence_test shunt-agent shunt-testpeer)

shunt_test(socklb_test KERNEL SOURCES e2e/socklb_test.cc
           LIBS shunt_e2e_util nlohmann_json::nlohmann_json)
add_dependencies(socklb_test shunt-agent shunt-testpeer)

if(TARGET shunt-controller)
  # README's demo: a 2-node simulated cluster, the controller, agents, traffic, counters.
  add_executable(shunt-demo e2e/demo_main.cc)
  target_link_libraries(shunt-demo PRIVATE shunt_e2e_util nlohmann_json::nlohmann_json
                        absl::str_format)
  target_compile_definitions(shunt-demo PRIVATE
    SHUNT_CONTROLLER_BIN="$<TARGET_FILE:shunt-controller>")
  set_target_properties(shunt-demo PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
  add_dependencies(shunt-demo shunt-agent shunt-testpeer shunt-controller)

  shunt_test(control_plane_test KERNEL SOURCES e2e/control_plane_test.cc LIBS shunt_e2e_util)
  target_compile_definitions(control_plane_test PRIVATE
    SHUNT_CONTROLLER_BIN="$<TARGET_FILE:shunt-controller>")
  add_dependencies(control_plane_test shunt-agent shunt-testpeer shunt-controller)

  # The Grafana dashboards' every query against a real Prometheus scraping the test bed.
  shunt_test(dashboards_test KERNEL SOURCES e2e/dashboards_test.cc LIBS shunt_e2e_util
             nlohmann_json::nlohmann_json)
  target_compile_definitions(dashboards_test PRIVATE
    SHUNT_CONTROLLER_BIN="$<TARGET_FILE:shunt-controller>" SHUNT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  add_dependencies(dashboards_test shunt-agent shunt-testpeer shunt-controller)
endif()

# Verifier cost of every BPF program against bpf/verifier_baseline.txt.
shunt_test(verifier_baseline_test KERNEL SOURCES e2e/verifier_baseline_test.cc
           LIBS shunt_fastpath socklb_skel PkgConfig::LIBBPF)
target_compile_definitions(verifier_baseline_test PRIVATE
  SHUNT_VERIFIER_BASELINE="${PROJECT_SOURCE_DIR}/bpf/verifier_baseline.txt")

# In-pod capture: nftables TPROXY, policy routing and transparent sockets in a pod's namespace.
shunt_test(capture_test KERNEL SOURCES e2e/capture_test.cc LIBS shunt_e2e_util shunt_capture
           nlohmann_json::nlohmann_json)
add_dependencies(capture_test shunt-agent shunt-testpeer)

# The opaque TCP relay on loopback (root: IP_TRANSPARENT).
shunt_test(relay_test KERNEL SOURCES e2e/relay_test.cc LIBS shunt_proxy)

# HTTP/2 and gRPC through the relay: ordinary clients (curl, nghttp2's h2load, a gRPC client of
# the test's Echo service) against nginx (h2c) and the Echo server.
set(echo_gen ${CMAKE_CURRENT_BINARY_DIR}/echo_gen)
file(MAKE_DIRECTORY ${echo_gen})
set(echo_proto ${CMAKE_CURRENT_SOURCE_DIR}/e2e/proto/echo.proto)
add_custom_command(
  OUTPUT ${echo_gen}/echo.pb.cc ${echo_gen}/echo.pb.h ${echo_gen}/echo.grpc.pb.cc
         ${echo_gen}/echo.grpc.pb.h
  COMMAND protobuf::protoc --proto_path=${CMAKE_CURRENT_SOURCE_DIR}/e2e/proto
          --cpp_out=${echo_gen} --grpc_out=${echo_gen}
          --plugin=protoc-gen-grpc=$<TARGET_FILE:gRPC::grpc_cpp_plugin> ${echo_proto}
  DEPENDS ${echo_proto}
  COMMENT "protoc echo.proto"
  VERBATIM)
add_library(shunt_test_echo_proto STATIC ${echo_gen}/echo.pb.cc ${echo_gen}/echo.grpc.pb.cc)
target_include_directories(shunt_test_echo_proto PUBLIC ${echo_gen})
target_link_libraries(shunt_test_echo_proto PUBLIC protobuf::libprotobuf gRPC::grpc++)
shunt_test(relay_h2_test KERNEL SOURCES e2e/relay_h2_test.cc LIBS shunt_proxy shunt_test_echo_proto)
# The Echo service's server and load client as a program, for the test bed's pods.
add_executable(shunt-test-grpc e2e/grpc_echo_main.cc)
target_include_directories(shunt-test-grpc PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(shunt-test-grpc PRIVATE shunt_test_echo_proto)
target_compile_definitions(capture_test PRIVATE SHUNT_GRPC_BIN="$<TARGET_FILE:shunt-test-grpc>")
add_dependencies(capture_test shunt-test-grpc)
