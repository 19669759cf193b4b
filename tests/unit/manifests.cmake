# Unit tests of common/yaml_json and controller/manifests (no root needed). Included from
# tests/CMakeLists.txt.
shunt_test(yaml_json_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/yaml_json_test.cc LIBS shunt_common)
shunt_test(crd_schema_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/crd_schema_test.cc
           LIBS shunt_controller_manifests)
target_compile_definitions(crd_schema_test PRIVATE SHUNT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
shunt_test(manifests_source_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/manifests_source_test.cc
           LIBS shunt_controller_manifests)
target_compile_definitions(manifests_source_test PRIVATE SHUNT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
