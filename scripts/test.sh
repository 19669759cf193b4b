#!/usr/bin/env bash
# Installs what is missing, builds everything and runs every test (unit + kernel) with ctest.
# Kernel tests need root: they load BPF programs and create namespaces and cgroups (and remove them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the kernel tests need root (run: sudo $0)" >&2
  exit 1
fi
./scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j"$(nproc)" --timeout 900 "$@"
