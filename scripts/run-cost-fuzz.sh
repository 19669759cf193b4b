#!/usr/bin/env bash
# Builds the usage readers' libFuzzer target (agent/cost/usage_fuzz.cc: JSON bodies, server-sent
# event streams and request bodies, whole against sliced) with ASan and UBSan, and runs it over a
# copy of the seed corpus. Usage: run-cost-fuzz.sh OUT_DIR [SECONDS (30)]. OUT_DIR receives the
# binary, the working corpus and any crash-* / leak-* input; the exit status is non-zero when the
# target crashed, leaked or found a slicing that changes the result (reproduce with
# `OUT_DIR/usage_fuzz crash-...`). Needs clang and libabsl-dev (scripts/setup.sh). Run by ctest.
set -euo pipefail
if (($# < 1)); then
  echo "usage: $0 OUT_DIR [SECONDS]" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$1
seconds=${2:-30}
# SHUNT_FUZZ_SEED: libFuzzer's -seed; ctest fixes it (1) so that CI replays the same mutations;
# unset or 0 by hand: a random seed, to explore (add what it finds to the corpus).
fuzz_seed=${SHUNT_FUZZ_SEED:-0}
src=$repo/agent/cost
mkdir -p "$out"
out=$(cd "$out" && pwd)

# shellcheck disable=SC2046  # pkg-config prints one flag per word
clang++ -std=c++20 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I"$repo" "$src/usage.cc" "$src/price.cc" "$src/usage_fuzz.cc" \
  $(pkg-config --libs absl_strings absl_status absl_statusor) \
  -o "$out/usage_fuzz"

rm -rf "$out/corpus"
cp -r "$src/corpus" "$out/corpus"
cd "$out"
exec ./usage_fuzz -max_total_time="$seconds" -seed="$fuzz_seed" -max_len=8192 -timeout=10 \
  -print_final_stats=1 -artifact_prefix="$out/" corpus
