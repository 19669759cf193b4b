#!/usr/bin/env bash
# Builds the HTTP/1.1 libFuzzer targets with ASan and UBSan and runs each over a copy of the seed
# corpus: the framer's (agent/proxy/http1/http1_fuzz.cc: resumability, and a differential against
# libhttp-parser) and the proxy session's (agent/proxy/http1_session_fuzz.cc: what reaches the
# server frames as the requests forwarded, never a denied one). Usage: run-http1-fuzz.sh OUT_DIR
# [SECONDS (60), each]. OUT_DIR receives the binaries, the working corpora and any crash-* input;
# the exit status is non-zero when a target crashed (a trap is a broken invariant: the crash file
# reproduces it with `OUT_DIR/http1_fuzz crash-...` or `OUT_DIR/http1_session_fuzz crash-...`).
# Needs clang, libabsl-dev and libhttp-parser-dev (scripts/setup.sh). Run by ctest (label unit).
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
src=$repo/agent/proxy/http1
mkdir -p "$out"
out=$(cd "$out" && pwd)

# shellcheck disable=SC2046  # pkg-config prints one flag per word
clang++ -std=c++20 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I"$repo" "$src/framer.cc" "$src/http1_fuzz.cc" \
  $(pkg-config --libs absl_strings absl_status) -lhttp_parser \
  -o "$out/http1_fuzz"

clang++ -std=c++20 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -I"$repo" "$src/framer.cc" "$repo/agent/proxy/http1_session.cc" \
  "$repo/agent/proxy/http1_session_fuzz.cc" \
  $(pkg-config --libs absl_strings absl_status absl_time) \
  -o "$out/http1_session_fuzz"

# The seeds stay as they are; what the runs add goes to the copies.
cd "$out"
for target in http1_fuzz http1_session_fuzz; do
  rm -rf "$out/corpus-$target"
  cp -r "$src/corpus" "$out/corpus-$target"
  ./"$target" -max_total_time="$seconds" -seed="$fuzz_seed" -max_len=16384 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$out/" "corpus-$target"
done
