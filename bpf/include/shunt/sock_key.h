/* Sockhash key construction, shared by the BPF programs and the agent's unit tests (PITFALLS 1-3).
 *
 * sock_ops and sk_msg hand a program the same raw fields: IPv4 addresses in network order,
 * local_port in host order, and remote_port in network order -- in the upper 16 bits of the u32 on
 * upstream kernels (since 5.x the ctx rewrite shifts it), in the lower 16 bits on older ones. The key
 * built by sock_ops for a socket and the reversed key built by sk_msg on its peer must be equal
 * byte for byte, whichever family each end uses.
 */
#ifndef SHUNT_SOCK_KEY_H
#define SHUNT_SOCK_KEY_H

#include "shunt/fastpath_abi.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define SHUNT_AF_INET 2
#define SHUNT_AF_INET6 10

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SHUNT_NTOHL(x) __builtin_bswap32(x)
#define SHUNT_NTOHS(x) __builtin_bswap16(x)
#else
#define SHUNT_NTOHL(x) (x)
#define SHUNT_NTOHS(x) (x)
#endif

/* The raw address fields of a bpf_sock_ops or sk_msg_md, copied out of the context. */
struct shunt_sock_tuple {
	__u32 family;
	__u32 local_ip4;  /* network order */
	__u32 remote_ip4; /* network order */
	__u32 local_ip6[4];  /* network order */
	__u32 remote_ip6[4]; /* network order */
	__u32 local_port;  /* host order */
	__u32 remote_port; /* network order, upper or lower 16 bits (see above) */
};

/* Host-order remote port from the raw ctx value of either kernel generation. Port 0 never occurs
 * on an established socket, so exactly one half of the u32 is non-zero. */
static __always_inline __u16 shunt_remote_port(__u32 raw)
{
	if (raw & 0xffff)
		return SHUNT_NTOHS((__u16)(raw & 0xffff));
	return (__u16)SHUNT_NTOHL(raw);
}

static __always_inline void shunt_ip_from_v4(__u32 w[4], __u32 ip4_be)
{
	w[0] = 0;
	w[1] = 0;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	w[2] = 0xffff0000;
#else
	w[2] = 0x0000ffff;
#endif
	w[3] = ip4_be;
}

static __always_inline void shunt_ip_from_v6(__u32 w[4], const __u32 ip6_be[4])
{
	w[0] = ip6_be[0];
	w[1] = ip6_be[1];
	w[2] = ip6_be[2];
	w[3] = ip6_be[3];
}

/* 127.0.0.0/8 (as v4-mapped) or ::1. */
static __always_inline int shunt_ip_is_loopback(const __u32 w[4])
{
	if (w[0] != 0 || w[1] != 0)
		return 0;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	if (w[2] == 0xffff0000)
		return (w[3] & 0xff) == 127;
	return w[2] == 0 && w[3] == 0x01000000;
#else
	if (w[2] == 0x0000ffff)
		return (w[3] >> 24) == 127;
	return w[2] == 0 && w[3] == 1;
#endif
}

/* Key of the socket described by `t`. Returns 0, or -1 for a family other than IPv4/IPv6. */
static __always_inline int shunt_sock_key_build(const struct shunt_sock_tuple *t, __u64 netns_cookie,
					       struct shunt_sock_key *key)
{
	if (t->family == SHUNT_AF_INET) {
		shunt_ip_from_v4(key->local_ip, t->local_ip4);
		shunt_ip_from_v4(key->remote_ip, t->remote_ip4);
	} else if (t->family == SHUNT_AF_INET6) {
		shunt_ip_from_v6(key->local_ip, t->local_ip6);
		shunt_ip_from_v6(key->remote_ip, t->remote_ip6);
	} else {
		return -1;
	}
	key->local_port = (__u16)t->local_port;
	key->remote_port = shunt_remote_port(t->remote_port);
	key->pad = 0;
	/* Loopback 4-tuples exist in every pod: scope them to the namespace. A loopback connection
	 * has both ends in one namespace, so both keys carry the same cookie. */
	key->netns = (shunt_ip_is_loopback(key->local_ip) || shunt_ip_is_loopback(key->remote_ip))
			     ? netns_cookie
			     : 0;
	return 0;
}

/* The key under which the peer socket of `key` is stored. */
static __always_inline void shunt_sock_key_peer(const struct shunt_sock_key *key,
					       struct shunt_sock_key *peer)
{
	for (int i = 0; i < 4; i++) {
		peer->local_ip[i] = key->remote_ip[i];
		peer->remote_ip[i] = key->local_ip[i];
	}
	peer->local_port = key->remote_port;
	peer->remote_port = key->local_port;
	peer->netns = key->netns;
	peer->pad = 0;
}

#endif /* SHUNT_SOCK_KEY_H */
