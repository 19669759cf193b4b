# Unit tests: no root, no kernel objects.
shunt_test(sock_key_test SOURCES unit/sock_key_test.cc)
target_include_directories(sock_key_test PRIVATE ${PROJECT_SOURCE_DIR}/bpf/include)
shunt_test(abi_test SOURCES unit/abi_test.cc)
target_include_directories(abi_test PRIVATE ${PROJECT_SOURCE_DIR}/bpf/include)
shunt_test(local_dataplane_test SOURCES unit/local_dataplane_test.cc LIBS shunt_dataplane)
shunt_test(cgroup_test SOURCES unit/cgroup_test.cc LIBS shunt_common)
shunt_test(policy_stream_test SOURCES unit/policy_stream_test.cc
           LIBS shunt_policy shunt_policy_server)
shunt_test(service_policy_test SOURCES unit/service_policy_test.cc LIBS shunt_service_policy)
shunt_test(pod_capture_test SOURCES unit/pod_capture_test.cc LIBS shunt_capture)
shunt_test(policy_stages_test SOURCES unit/policy_stages_test.cc LIBS shunt_service_policy)
shunt_test(snapshot_builder_test SOURCES unit/snapshot_builder_test.cc LIBS shunt_controller_core)
target_include_directories(snapshot_builder_test PRIVATE ${PROJECT_SOURCE_DIR}/bpf/include)
shunt_test(cluster_state_test SOURCES unit/cluster_state_test.cc LIBS shunt_controller_core)
shunt_test(policy_stream_tls_test SOURCES unit/policy_stream_tls_test.cc
           LIBS shunt_policy shunt_policy_server shunt_test_certs)

# The transparent proxy's HTTP/1.1 framer and session, and their fuzz targets run for 45 s each
# (ASan, UBSan; libhttp-parser as the framer's differential oracle, a re-parse of what the
# session sends the server as its own: scripts/run-http1-fuzz.sh).
shunt_test(http1_framer_test SOURCES unit/http1_framer_test.cc LIBS shunt_http1)
shunt_test(http1_session_test SOURCES unit/http1_session_test.cc LIBS shunt_proxy)
shunt_test(sniff_test SOURCES unit/sniff_test.cc LIBS shunt_proxy)
shunt_test(l4_metrics_test SOURCES unit/l4_metrics_test.cc LIBS shunt_l4_metrics)
shunt_test(request_metrics_test SOURCES unit/request_metrics_test.cc
           LIBS shunt_request_metrics shunt_capture_reconciler shunt_cost_metrics shunt_l4_metrics)
add_test(NAME Http1Fuzz
         COMMAND ${PROJECT_SOURCE_DIR}/scripts/run-http1-fuzz.sh ${CMAKE_CURRENT_BINARY_DIR}/http1_fuzz 45)
set_tests_properties(Http1Fuzz PROPERTIES LABELS unit TIMEOUT 300 ENVIRONMENT SHUNT_FUZZ_SEED=1)

# The transparent proxy's HTTP/2 and gRPC session, and its fuzz target run for a fixed minute
# (ASan, UBSan: scripts/run-h2-fuzz.sh).
shunt_test(h2_session_test SOURCES unit/h2_session_test.cc LIBS shunt_http2)
add_test(NAME Http2Fuzz
         COMMAND ${PROJECT_SOURCE_DIR}/scripts/run-h2-fuzz.sh ${CMAKE_CURRENT_BINARY_DIR}/h2_fuzz 60)
set_tests_properties(Http2Fuzz PROPERTIES LABELS unit TIMEOUT 300 ENVIRONMENT SHUNT_FUZZ_SEED=1)

# Per-pod API cost below the proxy: prices, usage readers, ApiCostPolicy; the readers' fuzz
# target for a fixed 30 s (ASan, UBSan: scripts/run-cost-fuzz.sh).
shunt_test(cost_test SOURCES unit/cost_test.cc LIBS shunt_cost ZLIB::ZLIB)
add_test(NAME CostFuzz
         COMMAND ${PROJECT_SOURCE_DIR}/scripts/run-cost-fuzz.sh ${CMAKE_CURRENT_BINARY_DIR}/cost_fuzz 30)
set_tests_properties(CostFuzz PROPERTIES LABELS unit TIMEOUT 300 ENVIRONMENT SHUNT_FUZZ_SEED=1)

# The Grafana dashboards (deploy/grafana): the committed JSON is what generate.py writes, and it
# type-checks against Grafana's published schema (npm @grafana/schema, offline from setup.sh's
# cache). Every panel's query runs against a real Prometheus in tests/e2e (DashboardsTest).
add_test(NAME DashboardsGenerated
         COMMAND sh -c "rm -rf '${CMAKE_CURRENT_BINARY_DIR}/dashboards' && mkdir -p '${CMAKE_CURRENT_BINARY_DIR}/dashboards' && python3 '${PROJECT_SOURCE_DIR}/deploy/grafana/generate.py' '${CMAKE_CURRENT_BINARY_DIR}/dashboards' && diff -r -x '*.py' -x dashboards.md -x __pycache__ '${PROJECT_SOURCE_DIR}/deploy/grafana' '${CMAKE_CURRENT_BINARY_DIR}/dashboards' && diff '${PROJECT_SOURCE_DIR}/docs/dashboards.md' '${CMAKE_CURRENT_BINARY_DIR}/dashboards/dashboards.md'")
set_tests_properties(DashboardsGenerated PROPERTIES LABELS unit TIMEOUT 60)
add_test(NAME DashboardSchema
         COMMAND ${PROJECT_SOURCE_DIR}/scripts/check-dashboards.sh ${CMAKE_CURRENT_BINARY_DIR}/dashboard-schema)
set_tests_properties(DashboardSchema PROPERTIES LABELS unit TIMEOUT 120)
