# Unit tests of controller/kube against the fake API server (no root, no cluster needed).
# Included from tests/CMakeLists.txt.
shunt_test(kube_client_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/kube_client_test.cc
           LIBS shunt_controller_kube shunt_fake_kube shunt_test_certs)
shunt_test(kube_source_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/kube_source_test.cc
           LIBS shunt_controller_kube shunt_fake_kube)
shunt_test(kube_to_agent_test SOURCES unit/kube_to_agent_test.cc
           LIBS shunt_controller_kube shunt_fake_kube shunt_policy_server shunt_policy
                shunt_service_policy)
