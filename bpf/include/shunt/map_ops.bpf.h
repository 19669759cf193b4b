/* SPDX-License-Identifier: GPL-2.0 */
/* Error codes of map updates, the same on every kernel. */
#ifndef SHUNT_MAP_OPS_BPF_H
#define SHUNT_MAP_OPS_BPF_H

/* Before Linux 6.4 the verifier turns bpf_map_update_elem() into a direct call of the map's
 * update op (any map type), which returned int: the upper half of r0 is not sign-extended, so
 * on 6.1 -E2BIG arrives as 0x00000000fffffff9 and `err == -E2BIG` on a long never holds. Only the
 * low 32 bits are the error code on every kernel. */
#define shunt_map_update(map, key, value, flags) \
	((int)bpf_map_update_elem((map), (key), (value), (flags)))

#endif
