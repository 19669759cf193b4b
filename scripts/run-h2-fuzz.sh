#!/usr/bin/env bash
# Builds the HTTP/2 session's libFuzzer target (agent/proxy/http2/h2_fuzz.cc: client bytes, and
# optionally raw server bytes, against a fake nghttp2 server) with ASan and UBSan, and runs it
# over a copy of the seed corpus. Usage: run-h2-fuzz.sh OUT_DIR [SECONDS (60)]. OUT_DIR receives
# the binary, the working corpus and any crash-* / leak-* input; the exit status is non-zero when
# the target crashed or leaked (reproduce with `OUT_DIR/h2_fuzz crash-...`).
# Needs clang, libabsl-dev and libnghttp2-dev (scripts/setup.sh). Run by ctest (label unit).
set -euo pipefail
if (($# < 1)); then
  echo "usage: $0 OUT_DIR [SECONDS]" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$1
seconds=${2:-60}
# SHUNT_FUZZ_SEED: libFuzzer's -seed; ctest fixes it (1), so that a CI run replays the same
# mutations over the corpus and fails only on a regression; unset or 0 by hand: a random seed,
# to explore (a crash found so goes into the corpus as a seed, and so into every CI run).
fuzz_seed=${SHUNT_FUZZ_SEED:-0}
src=$repo/agent/proxy/http2
mkdir -p "$out"
out=$(cd "$out" && pwd)

# shellcheck disable=SC2046  # pkg-config prints one flag per word
clang++ -std=c++20 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I"$repo" $(pkg-config --cflags libnghttp2) "$src/h2_session.cc" "$src/h2_fuzz.cc" \
  $(pkg-config --libs libnghttp2 absl_strings absl_status absl_statusor absl_time absl_hash \
    absl_raw_hash_set) \
  -o "$out/h2_fuzz"

# The seeds stay as they are; what the run adds goes to the copy.
rm -rf "$out/corpus"
cp -r "$src/corpus" "$out/corpus"
cd "$out"
exec ./h2_fuzz -max_total_time="$seconds" -seed="$fuzz_seed" -max_len=16384 -timeout=10 -print_final_stats=1 \
  -artifact_prefix="$out/" corpus
