#!/usr/bin/env bash
# Installs every Debian package shunt needs to build, test, benchmark and run the demo.
# Idempotent and non-interactive; only Debian packages, by name.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config clang llvm
  # eBPF
  libbpf-dev bpftool libelf-dev zlib1g-dev
  # gRPC / protobuf / abseil
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  # metrics, config
  prometheus-cpp-dev nlohmann-json3-dev libyaml-cpp-dev
  libcurl4-openssl-dev  # Kubernetes API client
  libnghttp2-dev  # HTTP/2 (control-plane bench stream clients; the L7 proxy)
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev iperf3 sockperf
  openssl  # policy_stream_tls_test makes its certificates with the CLI
  # the simulated cluster
  iproute2 procps util-linux
  # admin HTTP server (also what prometheus-cpp serves with)
  libcivetweb-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: all packages present"
