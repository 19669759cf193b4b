#!/usr/bin/env bash
# Runs ctest inside a VM on a second kernel, by default Debian 12's own 6.1 (linux-image-cloud-amd64,
# unpacked by scripts/setup.sh into /var/cache/shunt-vm/kernel):
#   scripts/vm/run-kernel-tests.sh [--kernel=<vmlinuz>] [--modules=<dir>] [--build-dir=<dir>]
#       [--accel=auto|kvm|tcg] [--timeout=<seconds>] [--mem=<size>] -- <ctest args>
# The VM (qemu, 2 vCPUs, under KVM where KVM can run it) has no network device: the tests make their own namespaces and
# veths inside it. It sees this machine's / read-only over virtiofs (under a tmpfs overlay, so
# nothing it writes reaches the host) and writes its results into a fresh temp dir shared
# read-write. Its console (ctest's output and kernel errors) is printed as it runs; the exit code
# is ctest's in the guest, or non-zero with a message if the VM could not boot or timed out.
# The build dir must be built already: ctest in the guest only runs what is there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=/var/cache/shunt-vm

kernel=""
modules=""
build_dir="$repo/build"
timeout=""   # s; default below, by accelerator
mem=4G       # tests keep their files in the guest's tmpfs /tmp
accel=${SHUNT_VM_ACCEL:-auto}
while (($#)); do
  case "$1" in
    --kernel=*) kernel=${1#*=} ;;
    --modules=*) modules=${1#*=} ;;
    --build-dir=*) build_dir=${1#*=} ;;
    --timeout=*) timeout=${1#*=} ;;
    --mem=*) mem=${1#*=} ;;
    --accel=*) accel=${1#*=} ;;
    --) shift; break ;;
    *) echo "run-kernel-tests: unknown option $1 (ctest's arguments go after --)" >&2; exit 2 ;;
  esac
  shift
done
ctest_args=("$@")

die() { echo "run-kernel-tests: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (virtiofsd shares / and mounts in its own namespace); run it as root"
qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 missing: run scripts/setup.sh"
virtiofsd=/usr/lib/qemu/virtiofsd
[ -x "$virtiofsd" ] || die "$virtiofsd missing (package qemu-system-common): run scripts/setup.sh"
busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox missing (package busybox-static): run scripts/setup.sh"
command -v cpio >/dev/null && command -v modprobe >/dev/null || die "cpio or kmod missing: run scripts/setup.sh"

# KVM, unless it cannot run a stock kernel: /dev/kvm backed by PVM (kvm_pvm, the nested hypervisor
# of some cloud VMs, this project's development VM among them) runs the guest kernel through an
# instruction emulator that lacks cmpxchg16b, xrstor and int3 ("KVM internal error. Suberror: 1"
# during boot, measured with the 6.1 cloud kernel). There qemu's TCG emulates the CPU instead:
# same kernel and tests, slower.
case "$accel" in
  auto)
    if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then
      accel=kvm
    else
      accel=tcg
      echo "run-kernel-tests: $([ -w /dev/kvm ] && echo "KVM here is PVM (kvm_pvm), which cannot run a stock kernel" ||
        echo "no usable /dev/kvm"): emulating the CPU with TCG (slower; --accel=kvm to force KVM)"
    fi
    ;;
  kvm) [ -w /dev/kvm ] || die "/dev/kvm is missing or not writable: --accel=kvm needs KVM" ;;
  tcg) ;;
  *) die "--accel=$accel: want auto, kvm or tcg" ;;
esac
# The timeout only catches a VM that hangs (ctest has its own per test): the kernel tests take
# ~5 min on the host, about as long under KVM and ~30 min under TCG (measured on 2 CPUs).
if [ "$accel" = kvm ]; then
  accel_args=(-enable-kvm -cpu host)
  timeout=${timeout:-2700}
else
  # Multi-threaded TCG: one host thread per vCPU.
  accel_args=(-accel tcg,thread=multi,tb-size=512 -cpu max)
  timeout=${timeout:-5400}
fi

# The kernel: <root>/boot/vmlinuz-<version>, its modules in <root>/lib/modules/<version> (the
# cache's layout, and an installed kernel's with root /).
if [ -z "$kernel" ]; then
  kernel=$(ls "$cache"/kernel/boot/vmlinuz-* 2>/dev/null | head -n 1) || true
  [ -n "$kernel" ] && [ -e "$cache/kernel/.complete" ] ||
    die "the second kernel is missing in $cache/kernel: run scripts/setup.sh"
fi
[ -f "$kernel" ] || die "kernel $kernel not found"
kernel=$(realpath "$kernel")
kver=${kernel##*/vmlinuz-}
[ "$kver" != "$kernel" ] || die "cannot tell the kernel version from the name $kernel (want vmlinuz-<version>)"
[ -n "$modules" ] || modules="$(dirname "$(dirname "$kernel")")/lib/modules/$kver"
modules=$(realpath "$modules" 2>/dev/null) || die "no modules for $kver (looked in $modules)"
[ -f "$modules/modules.dep" ] || die "$modules has no modules.dep (run depmod, or scripts/setup.sh)"
# modprobe -d takes the root above lib/modules/<version>.
modroot=${modules%/lib/modules/"$kver"}
[ "$modroot" != "$modules" ] || die "$modules: the modules dir must be <root>/lib/modules/$kver"
[ -f "$build_dir/CTestTestfile.cmake" ] || die "$build_dir is not a built cmake build dir"
build_dir=$(realpath "$build_dir")

# The guest sees only the filesystem mounted at / (the share is not recursive: the host's /proc,
# /sys, /dev, /run and other mounts stay out of it), so what it runs must live there.
for p in "$repo" "$build_dir" "$modules"; do
  [ "$(findmnt -n -o TARGET -T "$p")" = / ] || die "$p is not on the filesystem mounted at / (the VM would not see it)"
  case "$p" in *[!A-Za-z0-9._/+-]*) die "$p: the guest gets it on the kernel command line, keep it to [A-Za-z0-9._/+-]" ;; esac
  for d in /tmp /var/tmp /run; do
    case "$p/" in "$d"/*) die "$p: the guest has a fresh, empty $d (tmpfs); keep it elsewhere" ;; esac
  done
done

# --- the initramfs: busybox, the init, and the modules that mount the shared root. Cached,
# rebuilt when any input changes (the name carries a hash of them all).
initramfs_modules() {
  local m
  for m in virtio_pci virtiofs overlay; do
    # "insmod <path>" for each module not built in, dependencies first.
    modprobe -d "${modroot:-/}" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
  done | awk '!seen[$0]++'
}
mapfile -t kos < <(initramfs_modules)
((${#kos[@]})) || die "cannot resolve virtio_pci/virtiofs/overlay in $modules"
inputs_hash=$(
  {
    echo "format 1 $kver"
    sha256sum "$here/initramfs-init" "$busybox" "${kos[@]}"
  } | sha256sum | cut -c1-16
)
initrd="$cache/initramfs-$kver-$inputs_hash.cpio.gz"
mkdir -p "$cache"
(
  flock 9 # two runs at once build it once
  [ -s "$initrd" ] && exit 0
  stage=$(mktemp -d "$cache/.initramfs.XXXXXX")
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{bin,dev,proc,sys,lib/modules}
  cp "$busybox" "$stage/bin/busybox"
  cp "$here/initramfs-init" "$stage/init"
  chmod 0755 "$stage/init"
  # The kernel opens /dev/console for init's stdio before anything is mounted.
  mknod -m 600 "$stage/dev/console" c 5 1
  for ko in "${kos[@]}"; do
    cp "$ko" "$stage/lib/modules/"
    basename "$ko" >>"$stage/modules"
  done
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9) >"$stage.cpio.gz"
  mv "$stage.cpio.gz" "$initrd"
  # Older builds of it are of no use any more.
  find "$cache" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -path "$initrd" -delete
  echo "run-kernel-tests: built $initrd (${kos[*]##*/})"
) 9>"$cache/.initramfs.lock"

# --- the run. Everything it makes is in $tmp and goes with it; qemu and the virtiofsd's die with
# this script even if it is SIGKILLed (setpriv --pdeathsig).
tmp=$(mktemp -d /tmp/shunt-vm.XXXXXX)
qemu_pid="" tail_pid="" sed_pid="" console="" vfs_pids=()
# A child that has exited but is not waited for yet is a zombie: kill -0 still finds it.
running() {
  local state
  state=$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null) && [ -n "$state" ] && [ "$state" != Z ]
}
# stop <pid> <grace>: lets it end by itself for <grace> tenths of a second, then TERM, then KILL.
stop() {
  local pid=$1 grace=$2 i
  [ -n "$pid" ] || return 0
  for ((i = 0; i < grace; i++)); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do running "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM HUP
  stop "$qemu_pid" 0
  # A virtiofsd exits by itself once qemu is gone; killed, it would leave its sandboxed child
  # (its own pid namespace) to init for a moment.
  for pid in "${vfs_pids[@]}"; do stop "$pid" 50; done
  stop "$tail_pid" 0
  [ -z "${console:-}" ] || exec {console}>&- # sed's input: it ends at EOF
  stop "$sed_pid" 10
  # The read-only bind of / is made in virtiofsd's own mount namespace, never here; if anything
  # were mounted under $tmp, rm -rf would walk into it.
  if findmnt -rn -o TARGET | grep -qF "$tmp"; then
    echo "run-kernel-tests: something is mounted under $tmp; left it in place" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

mkdir "$tmp/results" "$tmp/root"
printf '%s\0' "${ctest_args[@]}" >"$tmp/results/ctest-args"
echo "$build_dir" >"$tmp/results/build-dir"
# An emulated CPU copies ~10x slower: the compatibility cases move 256 KiB per connection there,
# not 4 MiB (still more than a socket's initial receive buffer, and still 200 connections each,
# which is what catches a race; SHUNT_COMPAT_BYTES=0 for the tool's default).
if [ "$accel" = tcg ] && [ -z "${SHUNT_COMPAT_BYTES+set}" ]; then
  export SHUNT_COMPAT_BYTES=262144
  echo "run-kernel-tests: TCG: SHUNT_COMPAT_BYTES=$SHUNT_COMPAT_BYTES (compatibility cases)"
fi
# The tests' own knobs (SHUNT_COMPAT_CONNS, SHUNT_DEBUG_COUNTERS, ...) reach the guest's ctest.
env -0 | grep -z '^SHUNT_' | grep -zv '^SHUNT_VM_\|^SHUNT_TEST_VM=' >"$tmp/results/env" || true

# / read-only: virtiofsd (qemu 7.2's; it has no read-only option) serves a read-only bind of /
# made in a private mount namespace, so even root in the guest cannot write to the host.
# No --thread-pool-size: with a pool of 8 it died silently once mid-run (its seccomp filter kills
# it on any syscall not allowed, and glib's pool threads come and go); one thread per queue is
# enough with cache=always.
setpriv --pdeathsig KILL -- unshare --mount --propagation private -- sh -c '
  mount --bind / "$1" && mount -o remount,bind,ro "$1" || exit 1
  exec "$2" --socket-path="$3" -o source="$1" -o cache=always -o sandbox=namespace \
    -o log_level=err' \
  sh "$tmp/root" "$virtiofsd" "$tmp/root.sock" 2>>"$tmp/virtiofsd.log" &
vfs_pids+=($!)
setpriv --pdeathsig KILL -- "$virtiofsd" --socket-path="$tmp/results.sock" -o source="$tmp/results" \
  -o cache=none -o sandbox=namespace -o log_level=err 2>>"$tmp/virtiofsd.log" &
vfs_pids+=($!)
for _ in $(seq 100); do
  [ -S "$tmp/root.sock" ] && [ -S "$tmp/results.sock" ] && break
  sleep 0.1
done
[ -S "$tmp/root.sock" ] && [ -S "$tmp/results.sock" ] ||
  die "virtiofsd did not start: $(cat "$tmp/virtiofsd.log")"

echo "run-kernel-tests: booting $kernel ($accel, 2 vCPUs, $mem, no network), timeout ${timeout}s"
start=$SECONDS
: >"$tmp/console.log"
# virtiofs needs the guest's RAM shared with virtiofsd: a memfd backend.
setpriv --pdeathsig KILL -- "$qemu" \
  "${accel_args[@]}" -machine q35 -smp 2 -m "$mem" \
  -object memory-backend-memfd,id=mem,size="$mem",share=on -numa node,memdev=mem \
  -nodefaults -nographic -no-reboot -nic none -monitor none \
  -serial file:"$tmp/console.log" \
  -kernel "$kernel" -initrd "$initrd" \
  -append "console=ttyS0 quiet panic=1 ${SHUNT_VM_KERNEL_ARGS:-} SHUNT_STAGE2=$repo/scripts/vm/guest-init.sh SHUNT_VM_MODULES=$modules" \
  -chardev socket,id=vfs-root,path="$tmp/root.sock" \
  -device vhost-user-fs-pci,chardev=vfs-root,tag=shunt-root \
  -chardev socket,id=vfs-results,path="$tmp/results.sock" \
  -device vhost-user-fs-pci,chardev=vfs-results,tag=shunt-results \
  </dev/null >"$tmp/qemu.log" 2>&1 &
qemu_pid=$!
# The console as it comes, less the terminal resets SeaBIOS sends to a serial console.
exec {console}> >(sed -u 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g')
sed_pid=$!
tail -n +1 -f --pid="$qemu_pid" "$tmp/console.log" >&"$console" &
tail_pid=$!

vfs_names=("/ (read-only)" "the results dir")
while running "$qemu_pid"; do
  if ((SECONDS - start > timeout)); then
    die "the VM did not finish within ${timeout}s; killed it"
  fi
  # On an emulation failure qemu stops the guest and waits forever: no point waiting for it.
  if grep -q '^KVM internal error' "$tmp/qemu.log"; then
    cat "$tmp/qemu.log" >&2
    die "KVM cannot run this guest (emulation failure above, after $((SECONDS - start))s); try --accel=tcg"
  fi
  # A guest CPU stuck in its kernel: under TCG seen twice at call sites being patched while they
  # ran (docs/testbed.md); the guest does not recover. Under TCG exit 75 (EX_TEMPFAIL: the
  # emulator, test.sh runs the VM once more), under KVM it is a failure like any other.
  if grep -q 'watchdog: BUG: soft lockup' "$tmp/console.log"; then
    grep -E 'soft lockup|RIP: 0010' "$tmp/console.log" | head -4 >&2
    if [ "$accel" = tcg ]; then
      echo "run-kernel-tests: a guest CPU locked up (above) after $((SECONDS - start))s under TCG;" \
        "stopped the VM (exit 75: run it again)" >&2
      exit 75
    fi
    die "a guest CPU locked up (above) after $((SECONDS - start))s"
  fi
  # Without its virtiofsd the guest blocks on every file access until the timeout: fail now.
  for i in "${!vfs_pids[@]}"; do
    if ! running "${vfs_pids[$i]}"; then
      sleep 2
      running "$qemu_pid" || break 2 # qemu ended first, virtiofsd followed: normal
      st=0
      wait "${vfs_pids[$i]}" || st=$?
      vfs_pids[$i]=""
      die "virtiofsd serving ${vfs_names[$i]} to the guest exited (status $st) while the VM ran" \
        "($((SECONDS - start))s in); its log: $(cat "$tmp/virtiofsd.log")"
    fi
  done
  sleep 1
done
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=""
wait "$tail_pid" || true
tail_pid=""
exec {console}>&-
console=""
wait "$sed_pid" || true
sed_pid=""
elapsed=$((SECONDS - start))

if [ ! -s "$tmp/results/ctest.rc" ]; then
  [ ! -s "$tmp/qemu.log" ] || echo "run-kernel-tests: qemu said: $(cat "$tmp/qemu.log")" >&2
  die "the VM ended after ${elapsed}s without a ctest exit code (qemu exit $qemu_rc): it failed to boot or crashed, see its console above"
fi
rc=$(cat "$tmp/results/ctest.rc")
echo "run-kernel-tests: ctest in the VM on $kver exited $rc after ${elapsed}s"
exit "$rc"
