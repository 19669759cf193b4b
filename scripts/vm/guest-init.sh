#!/bin/bash
# Stage 2 of the test VM, PID 1 on the shared root (see initramfs-init): mounts what the kernel
# tests expect of a host, runs ctest with the arguments the host left in the results dir, writes
# ctest's output and exit code there and powers off. Runs only inside the VM.
set -uo pipefail # no -e: PID 1 must reach the power-off whatever fails
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
results=/run/shunt-vm

# PID 1 exiting would panic the kernel: always power off instead (sysrq, then busybox's reboot(2)).
power_off() {
  sync
  umount "$results" 2>/dev/null # flushed and closed, not cut off by the power-off
  echo o >/proc/sysrq-trigger
  sleep 10
  busybox poweroff -f
}
trap power_off EXIT

if [ "$$" -ne 1 ]; then
  echo "guest-init.sh: runs only as PID 1 of the test VM (scripts/vm/run-kernel-tests.sh)" >&2
  trap - EXIT
  exit 1
fi

say() { echo "shunt-vm: $*"; }
must() { "$@" || say "FAILED: $*"; }

must mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
# The tests find cgroup2 in /proc/self/mountinfo; systemd's place for it.
must mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate cgroup2 /sys/fs/cgroup
must mount -t bpf -o nosuid,nodev,noexec,mode=700 bpf /sys/fs/bpf
must mount -t debugfs -o nosuid,nodev,noexec debugfs /sys/kernel/debug
must mount -t tracefs -o nosuid,nodev,noexec tracefs /sys/kernel/tracing
mkdir -p /dev/pts /dev/shm
must mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=000 devpts /dev/pts
must mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
# devtmpfs has no /dev/fd (bash's process substitution, /dev/stdin in scripts).
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr

# This kernel's modules (veth, bridge, ...) come from the host's cache, where the host's own kernel
# does not look: put them where modprobe, which the kernel runs to autoload them, does.
kver=$(uname -r)
mkdir -p "/lib/modules/$kver"
must mount --bind "${SHUNT_VM_MODULES:?}" "/lib/modules/$kver"

must hostname shunt-vm
must ip link set lo up
mkdir -p /run/netns

build_dir=$(cat "$results/build-dir")
mapfile -d '' -t args <"$results/ctest-args"
if [ -s "$results/env" ]; then
  mapfile -d '' -t test_env <"$results/env"
  for kv in "${test_env[@]}"; do export "$kv"; done
  say "test environment: ${test_env[*]}"
fi
say "kernel $kver, $(nproc) CPUs, $(awk '/MemTotal/ {printf "%d MiB", $2 / 1024}' /proc/meminfo)," \
  "no network device but lo: $(ls /sys/class/net | tr '\n' ' ')"
say "ctest --test-dir $build_dir ${args[*]}"

# In the background and waited for: a waiting bash also reaps the orphans tests leave to PID 1.
(
  cd "$build_dir" && ctest --test-dir "$build_dir" "${args[@]}"
  echo $? >"$results/ctest.rc.tmp"
) 2>&1 | tee "$results/ctest.log" &
wait $!
sync
if [ -e "$results/ctest.rc.tmp" ]; then
  mv "$results/ctest.rc.tmp" "$results/ctest.rc"
  say "ctest exit code $(cat "$results/ctest.rc")"
else
  say "ctest did not run"
fi
