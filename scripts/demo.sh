#!/usr/bin/env bash
# Brings up a simulated 2-node cluster on this machine (network namespaces, veth, kubelet-style
# cgroups), starts shunt-agent on each node, sends traffic between pods and shows what the kernel
# redirect did. Everything it creates is removed at the end (also on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: needs root (run: sudo $0)" >&2
  exit 1
fi
./scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target shunt-demo shunt-agent shunt-testpeer shunt-controller
exec ./build/shunt-demo "$@"
