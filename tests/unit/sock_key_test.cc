// Sockhash key construction (PITFALLS 1-3): the key that sock_ops stores for a socket and the
// reversed key that sk_msg builds on its peer must match byte for byte, for both families, for
// v4-mapped dual-stack sockets, for both kernel encodings of remote_port, and loopback keys must
// be scoped to their network namespace.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>

extern "C" {
#include "shunt/sock_key.h"
}

namespace {

uint32_t V4(const char* s) {
  in_addr a;
  EXPECT_EQ(inet_pton(AF_INET, s, &a), 1);
  return a.s_addr;
}

void V6(const char* s, uint32_t out[4]) {
  in6_addr a;
  EXPECT_EQ(inet_pton(AF_INET6, s, &a), 1);
  std::memcpy(out, &a, 16);
}

// remote_port as upstream kernels present it: network order in the upper 16 bits.
uint32_t RemotePortUpstream(uint16_t port) { return static_cast<uint32_t>(htons(port)) << 16; }
// ... and as older kernels did: network order in the lower 16 bits.
uint32_t RemotePortLegacy(uint16_t port) { return htons(port); }

shunt_sock_tuple Tuple4(const char* local, uint16_t lport, const char* remote, uint16_t rport,
                        bool legacy = false) {
  shunt_sock_tuple t{};
  t.family = AF_INET;
  t.local_ip4 = V4(local);
  t.remote_ip4 = V4(remote);
  t.local_port = lport;
  t.remote_port = legacy ? RemotePortLegacy(rport) : RemotePortUpstream(rport);
  return t;
}

shunt_sock_tuple Tuple6(const char* local, uint16_t lport, const char* remote, uint16_t rport) {
  shunt_sock_tuple t{};
  t.family = AF_INET6;
  V6(local, t.local_ip6);
  V6(remote, t.remote_ip6);
  t.local_port = lport;
  t.remote_port = RemotePortUpstream(rport);
  return t;
}

shunt_sock_key Key(const shunt_sock_tuple& t, uint64_t netns = 0) {
  shunt_sock_key k;
  std::memset(&k, 0xAB, sizeof(k));  // garbage: every byte must be written
  EXPECT_EQ(shunt_sock_key_build(&t, netns, &k), 0);
  return k;
}

shunt_sock_key Peer(const shunt_sock_key& k) {
  shunt_sock_key p;
  std::memset(&p, 0xCD, sizeof(p));
  shunt_sock_key_peer(&k, &p);
  return p;
}

bool SameBytes(const shunt_sock_key& a, const shunt_sock_key& b) {
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

TEST(SockKey, RemotePortBothKernelEncodings) {
  for (uint16_t port : {1, 80, 255, 256, 8080, 40000, 65535}) {
    EXPECT_EQ(shunt_remote_port(RemotePortUpstream(port)), port);
    EXPECT_EQ(shunt_remote_port(RemotePortLegacy(port)), port);
  }
}

TEST(SockKey, PortsAreHostOrder) {
  shunt_sock_key k = Key(Tuple4("198.18.0.2", 40000, "198.18.0.3", 8080));
  EXPECT_EQ(k.local_port, 40000);
  EXPECT_EQ(k.remote_port, 8080);
  EXPECT_EQ(k.pad, 0u);
}

TEST(SockKey, Ipv4IsStoredV4Mapped) {
  shunt_sock_key k = Key(Tuple4("198.18.0.2", 1, "198.18.0.3", 2));
  uint32_t mapped[4];
  V6("::ffff:198.18.0.2", mapped);
  EXPECT_EQ(std::memcmp(k.local_ip, mapped, 16), 0);
}

TEST(SockKey, Ipv4ClientAndServerKeysMatch) {
  // Client 198.18.0.2:40000 -> server 198.18.0.3:8080.
  shunt_sock_key client = Key(Tuple4("198.18.0.2", 40000, "198.18.0.3", 8080));
  shunt_sock_key server = Key(Tuple4("198.18.0.3", 8080, "198.18.0.2", 40000));
  EXPECT_TRUE(SameBytes(Peer(client), server));
  EXPECT_TRUE(SameBytes(Peer(server), client));
  EXPECT_FALSE(SameBytes(client, server));
}

TEST(SockKey, LegacyAndUpstreamKernelsBuildTheSameKey) {
  EXPECT_TRUE(SameBytes(Key(Tuple4("198.18.0.2", 40000, "198.18.0.3", 8080, false)),
                        Key(Tuple4("198.18.0.2", 40000, "198.18.0.3", 8080, true))));
}

TEST(SockKey, Ipv6ClientAndServerKeysMatch) {
  shunt_sock_key client = Key(Tuple6("fd5a:1::2", 40000, "fd5a:1::3", 8080));
  shunt_sock_key server = Key(Tuple6("fd5a:1::3", 8080, "fd5a:1::2", 40000));
  EXPECT_TRUE(SameBytes(Peer(client), server));
}

TEST(SockKey, DualStackServerMatchesIpv4Client) {
  // The server listens on [::]: its accepted socket is AF_INET6 with v4-mapped addresses.
  shunt_sock_key client = Key(Tuple4("198.18.0.2", 40000, "198.18.0.3", 8080));
  shunt_sock_key server = Key(Tuple6("::ffff:198.18.0.3", 8080, "::ffff:198.18.0.2", 40000));
  EXPECT_TRUE(SameBytes(Peer(client), server));
  EXPECT_TRUE(SameBytes(Peer(server), client));
}

TEST(SockKey, LoopbackIsScopedToTheNamespace) {
  // The same loopback 4-tuple in two pods: different keys, and each peer lookup stays in its pod.
  shunt_sock_key pod_a = Key(Tuple4("127.0.0.1", 40000, "127.0.0.1", 8080), 1111);
  shunt_sock_key pod_b = Key(Tuple4("127.0.0.1", 40000, "127.0.0.1", 8080), 2222);
  EXPECT_FALSE(SameBytes(pod_a, pod_b));
  EXPECT_EQ(pod_a.netns, 1111u);
  shunt_sock_key server_a = Key(Tuple4("127.0.0.1", 8080, "127.0.0.1", 40000), 1111);
  EXPECT_TRUE(SameBytes(Peer(pod_a), server_a));
  EXPECT_FALSE(SameBytes(Peer(pod_b), server_a));
  // The whole of 127/8, ::1 and v4-mapped loopback count.
  EXPECT_EQ(Key(Tuple4("127.1.2.3", 1, "127.0.0.1", 2), 7).netns, 7u);
  EXPECT_EQ(Key(Tuple6("::1", 1, "::1", 2), 7).netns, 7u);
  EXPECT_EQ(Key(Tuple6("::ffff:127.0.0.1", 1, "::ffff:127.0.0.1", 2), 7).netns, 7u);
}

TEST(SockKey, PodAddressesAreNotScoped) {
  // Pod IPs are unique on a node: the two ends live in different namespaces and must still meet.
  EXPECT_EQ(Key(Tuple4("198.18.0.2", 1, "198.18.0.3", 2), 7).netns, 0u);
  EXPECT_EQ(Key(Tuple6("fd5a:1::2", 1, "fd5a:1::3", 2), 7).netns, 0u);
  EXPECT_EQ(Key(Tuple6("::2", 1, "::3", 2), 7).netns, 0u);  // not ::1
}

TEST(SockKey, UnknownFamilyIsRejected) {
  shunt_sock_tuple t{};
  t.family = 1;  // AF_UNIX
  shunt_sock_key k;
  EXPECT_EQ(shunt_sock_key_build(&t, 0, &k), -1);
}

}  // namespace
