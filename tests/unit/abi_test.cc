// The BPF/C++ shared structs: sizes and offsets are the ABI of the pinned maps. A change here must
// come with a new _vN map name.
#include <gtest/gtest.h>

#include <cstddef>

#include "shunt/fastpath_abi.h"
#include "shunt/socklb_abi.h"

namespace {

static_assert(sizeof(shunt_sock_key) == 48);
static_assert(offsetof(shunt_sock_key, local_ip) == 0);
static_assert(offsetof(shunt_sock_key, remote_ip) == 16);
static_assert(offsetof(shunt_sock_key, netns) == 32);
static_assert(offsetof(shunt_sock_key, local_port) == 40);
static_assert(offsetof(shunt_sock_key, remote_port) == 42);
static_assert(offsetof(shunt_sock_key, pad) == 44);
static_assert(sizeof(shunt_pod) == 8);
static_assert(sizeof(shunt_pod_uid) == SHUNT_POD_UID_LEN);  // a UUID (36) and NUL padding
static_assert(sizeof(shunt_ip_key) == 16);
static_assert(sizeof(shunt_sock_state) == 96);
static_assert(offsetof(shunt_sock_state, mode) == 8);
static_assert(offsetof(shunt_sock_state, in_map) == 9);
static_assert(offsetof(shunt_sock_state, reader) == 10);
static_assert(offsetof(shunt_sock_state, flags) == 11);
static_assert(offsetof(shunt_sock_state, netns_cookie) == 16);
static_assert(offsetof(shunt_sock_state, slot) == 12);
static_assert(offsetof(shunt_sock_state, key) == 24);
static_assert(offsetof(shunt_sock_state, cookie) == 72);
static_assert(offsetof(shunt_sock_state, peer_slot) == 88);
static_assert(sizeof(shunt_reader_ref) == 16);
static_assert(sizeof(shunt_reader_view) == 64, "one cache line per reader");
static_assert(offsetof(shunt_reader_view, copied_seq) == 8);
static_assert(offsetof(shunt_reader_view, queued) == 16);
static_assert(offsetof(shunt_reader_view, reader) == 24);
static_assert(offsetof(shunt_reader_view, drained) == 25);
static_assert(offsetof(shunt_reader_view, last_read) == 28);
static_assert(offsetof(shunt_reader_view, delivered) == 40);
static_assert(sizeof(shunt_listener_key) == 16);
static_assert(offsetof(shunt_listener_key, port) == 8);
static_assert(offsetof(shunt_listener_key, kind) == 10);
static_assert(sizeof(shunt_listener) == 8);
static_assert(sizeof(shunt_msg_stats_key) == 16);
static_assert(sizeof(shunt_msg_stats) == 16);
static_assert(sizeof(shunt_sock_stats_key) == 8);
static_assert(sizeof(shunt_l4_conn) == 120);
static_assert(offsetof(shunt_l4_conn, start_ns) == 88);
static_assert(offsetof(shunt_l4_conn, flags) == 112);
static_assert(sizeof(shunt_l4_event) == 88);
static_assert(offsetof(shunt_l4_event, cookie) == 48);
static_assert(offsetof(shunt_l4_event, workload_id) == 8);
static_assert(offsetof(shunt_l4_event, remote_ip) == 16);
static_assert(offsetof(shunt_l4_event, vip) == 32);
static_assert(offsetof(shunt_l4_event, duration_ns) == 56);
static_assert(offsetof(shunt_l4_event, srtt_us) == 80);

// socklb
static_assert(sizeof(shunt_svc_key) == 20);
static_assert(offsetof(shunt_svc_key, port) == 16);
static_assert(sizeof(shunt_svc) == 8);
static_assert(sizeof(shunt_slot_key) == 20);
static_assert(offsetof(shunt_slot_key, port) == 16);
static_assert(offsetof(shunt_slot_key, slot) == 18);
static_assert(sizeof(shunt_backend) == 20);
static_assert(offsetof(shunt_backend, port) == 16);
static_assert(sizeof(shunt_lb_sock) == 40);
static_assert(offsetof(shunt_lb_sock, backend) == 16);
static_assert(offsetof(shunt_lb_sock, vip_port) == 32);
static_assert(offsetof(shunt_lb_sock, backend_port) == 34);
static_assert(sizeof(shunt_ap_dst) == 16);
static_assert(sizeof(shunt_ap_ports) == 2 * 2 * SHUNT_AP_MAX_PORT_RANGES + 8);
static_assert(offsetof(shunt_ap_ports, to) == 2 * SHUNT_AP_MAX_PORT_RANGES);
static_assert(offsetof(shunt_ap_ports, count) == 4 * SHUNT_AP_MAX_PORT_RANGES);
static_assert(sizeof(shunt_lb_stats_key) == 16);
static_assert(SHUNT_AP_MAX_POLICIES == 64, "policy masks are a u64");

TEST(Abi, MapNamesFitTheKernelLimit) {
  for (const char* name : {SHUNT_MAP_SOCKHASH, SHUNT_MAP_SOCKSTATE, SHUNT_MAP_READERS,
                           SHUNT_MAP_READER_SLOTS, SHUNT_MAP_LISTENERS, SHUNT_MAP_CONTROL, SHUNT_MAP_PODS,
                           SHUNT_MAP_ENDPOINTS, SHUNT_MAP_MSG_STATS, SHUNT_MAP_SOCK_STATS,
                           SHUNT_MAP_LB_SERVICES, SHUNT_MAP_LB_SLOTS, SHUNT_MAP_LB_SOCKS,
                           SHUNT_MAP_AP_SOURCES, SHUNT_MAP_AP_DESTS, SHUNT_MAP_AP_PORTS,
                           SHUNT_MAP_LB_STATS}) {
    EXPECT_LT(std::char_traits<char>::length(name), 16u) << name;  // BPF_OBJ_NAME_LEN
  }
}

TEST(Abi, NoImplicitPadding) {
  // Keys are hashed byte for byte: every byte must be a named field.
  EXPECT_EQ(sizeof(shunt_sock_key), 16u + 16u + 8u + 2u + 2u + 4u);
  EXPECT_EQ(sizeof(shunt_msg_stats_key), 4u * 4u);
  EXPECT_EQ(sizeof(shunt_sock_state),
            4u + 4u + 4u * 1u + 4u + 8u + sizeof(shunt_sock_key) + 8u + 8u + 4u + 4u);
  EXPECT_EQ(sizeof(shunt_reader_ref), 8u + 4u + 4u);
  EXPECT_EQ(sizeof(shunt_listener_key), 8u + 2u + 2u + 2u * 2u);
}

}  // namespace
