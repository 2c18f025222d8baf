#!/usr/bin/env bash
# Builds the frame-decoder fuzzer (libFuzzer + AddressSanitizer) and runs it for N seconds (default 60).
#   fuzz/run.sh 600        # the 10-minute run required before a protocol change lands
# Findings land in fuzz/crash-*; the committed seed corpus is fuzz/corpus, the working corpus fuzz/corpus-work.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
mkdir -p fuzz/out fuzz/corpus-work
swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name FrameDecoderFuzz \
  Sources/SoulfraWire/*.swift fuzz/FrameDecoderFuzz.swift -o fuzz/out/frame-decoder-fuzz
exec fuzz/out/frame-decoder-fuzz fuzz/corpus-work fuzz/corpus \
  -max_total_time="$secs" -max_len=4096 -artifact_prefix=fuzz/ -print_final_stats=1
