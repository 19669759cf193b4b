#!/usr/bin/env bash
# Installs every Debian package shunt needs to build, test, benchmark and run the demo, and caches
# the second kernel the kernel tests run on (Debian 12's own 6.1, in a VM: scripts/vm/).
# Idempotent and non-interactive; Debian packages by name, and two pinned npm packages (the
# dashboards' schema check) into a cache of their own.
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
  libnftables-dev libmnl-dev  # in-pod capture: nftables tables and policy routing (agent/capture)
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev iperf3 sockperf
  libhttp-parser-dev  # the HTTP/1.1 framer's differential fuzz target (scripts/run-http1-fuzz.sh)
  curl  # the proxy's tests and the demo speak HTTP through it with an ordinary client
  haproxy nginx libnginx-mod-stream wrk  # the relay bench's peers (bench/relay_bench.cc)
  nghttp2-client  # nghttp and h2load: HTTP/2 through the proxy (relay tests, the relay bench)
  openssl  # policy_stream_tls_test makes its certificates with the CLI
  python3  # the compatibility suite tries ordinary programs: Python's socket module
  # the simulated cluster
  iproute2 procps util-linux
  nftables  # tests that cut a path inside a test namespace (control_plane_test)
  # admin HTTP server (also what prometheus-cpp serves with)
  libcivetweb-dev
  # the kernel tests on the second kernel (scripts/vm/): qemu (qemu-system-common brings
  # virtiofsd, the cloud kernel has no 9p), busybox for the initramfs, cpio to pack it, kmod to
  # resolve module dependencies (and for the guest's module autoloading from the shared root)
  qemu-system-x86 busybox-static cpio kmod
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  updated=1
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: all packages present"

# The second kernel: linux-image-cloud-amd64 (Debian 12's 6.1), for scripts/vm/run-kernel-tests.sh.
# Not installed, only unpacked into a cache: installing it would pull in initramfs-tools, udev and
# systemd-sysv (a different init for this machine), write an initramfs into /boot and, on a machine
# booted by grub, add a menu entry that can become the default. The VM boots it with -kernel, so
# the files are all it needs; this machine boots exactly as before. depmod writes the modules.dep
# and modules.alias that the package's postinst would have made (initramfs and guest autoloading).
VM_CACHE=/var/cache/shunt-vm
if [ ! -e "$VM_CACHE/kernel/.complete" ]; then
  export DEBIAN_FRONTEND=noninteractive
  [ -n "${updated:-}" ] || apt-get update -qq
  # The metapackage depends on exactly one versioned image package (linux-image-6.1.0-N-cloud-amd64).
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '$1 == "Depends:" {print $2; exit}')
  [ -n "$pkg" ] || { echo "setup: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
  echo "setup: unpacking $pkg into $VM_CACHE"
  mkdir -p "$VM_CACHE"
  dl=$(mktemp -d "$VM_CACHE/.download.XXXXXX")
  trap 'rm -rf "$dl"' EXIT
  # apt drops privileges to _apt for downloads: let it write there.
  if id _apt >/dev/null 2>&1; then chown _apt "$dl"; fi
  (cd "$dl" && apt-get download -qq "$pkg")
  dpkg-deb -x "$dl"/*.deb "$dl/root"
  kver=$(ls "$dl/root/lib/modules")
  depmod -b "$dl/root" "$kver"
  dpkg-deb -W --showformat='${Package} ${Version}\n' "$dl"/*.deb >"$dl/root/.package"
  touch "$dl/root/.complete"
  rm -rf "$VM_CACHE/kernel"
  mv "$dl/root" "$VM_CACHE/kernel"
  rm -rf "$dl"
  trap - EXIT
fi
echo "setup: second kernel in $VM_CACHE/kernel: $(cat "$VM_CACHE/kernel/.package")"

# promtool (Debian package prometheus), for the tests that lint what /metrics serves. Unpacked,
# not installed: the package would also install and start a Prometheus server on this machine.
TOOLS_CACHE=/var/cache/shunt-tools
if [ ! -x "$TOOLS_CACHE/prometheus/usr/bin/promtool" ]; then
  export DEBIAN_FRONTEND=noninteractive
  [ -n "${updated:-}" ] || apt-get update -qq
  echo "setup: unpacking prometheus (promtool) into $TOOLS_CACHE/prometheus"
  mkdir -p "$TOOLS_CACHE"
  dl=$(mktemp -d "$TOOLS_CACHE/.download.XXXXXX")
  trap 'rm -rf "$dl"' EXIT
  if id _apt >/dev/null 2>&1; then chown _apt "$dl"; fi
  (cd "$dl" && apt-get download -qq prometheus)
  dpkg-deb -x "$dl"/prometheus_*.deb "$dl/root"
  rm -rf "$TOOLS_CACHE/prometheus"
  mv "$dl/root" "$TOOLS_CACHE/prometheus"
  rm -rf "$dl"
  trap - EXIT
fi
echo "setup: promtool: $("$TOOLS_CACHE/prometheus/usr/bin/promtool" --version 2>&1 | head -1)"

# The dashboards' schema check (scripts/check-dashboards.sh): Grafana's published schema types and
# the TypeScript compiler, from the npm registry, pinned, into a cache of their own (not global).
NPM_CACHE=$TOOLS_CACHE/npm
NPM_PACKAGES="@grafana/schema@13.2.3 typescript@7.0.2"
if [ "$(cat "$NPM_CACHE/.packages" 2>/dev/null)" != "$NPM_PACKAGES" ]; then
  if ! command -v npm >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    [ -n "${updated:-}" ] || apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm
  fi
  echo "setup: installing @grafana/schema and typescript into $NPM_CACHE"
  mkdir -p "$NPM_CACHE"
  (cd "$NPM_CACHE" && [ -f package.json ] || echo '{"private": true}' > "$NPM_CACHE/package.json")
  # shellcheck disable=SC2086  # one word per package
  npm install --prefix "$NPM_CACHE" --no-audit --no-fund --silent --save-exact $NPM_PACKAGES
  echo "$NPM_PACKAGES" > "$NPM_CACHE/.packages"
fi
echo "setup: tsc $("$NPM_CACHE/node_modules/.bin/tsc" --version)"
