# Unit tests of agent/policy (no root needed). Included from tests/CMakeLists.txt.
shunt_test(policy_file_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/policy_file_test.cc
           LIBS shunt_policy)
shunt_test(policy_store_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/policy_store_test.cc
           LIBS shunt_policy)
shunt_test(file_source_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/file_source_test.cc
           LIBS shunt_policy)
shunt_test(pod_cgroups_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/pod_cgroups_test.cc
           LIBS shunt_policy)
