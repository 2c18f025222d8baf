#!/usr/bin/env bash
# Builds a fuzzer (libFuzzer + AddressSanitizer) and runs it for N seconds (default 60).
#   fuzz/run.sh 600            # the broker frame decoder: the 10-minute run required before a protocol change lands
#   fuzz/run.sh 600 http1      # the HTTP/1.1 request parser
# Findings land in fuzz/crash-*; committed seed corpora are fuzz/corpus (frames) and fuzz/corpus-http1;
# working corpora go to fuzz/corpus-work*.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
target=${2:-frame}
mkdir -p fuzz/out
case "$target" in
  frame)
    mkdir -p fuzz/corpus-work
    swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name FrameDecoderFuzz \
      Sources/SoulfraWire/*.swift fuzz/FrameDecoderFuzz.swift -o fuzz/out/frame-decoder-fuzz
    exec fuzz/out/frame-decoder-fuzz fuzz/corpus-work fuzz/corpus \
      -max_total_time="$secs" -max_len=4096 -artifact_prefix=fuzz/ -print_final_stats=1 ;;
  http1)
    mkdir -p fuzz/corpus-work-http1
    swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name HTTP1ParserFuzz \
      Sources/SoulfraHTTP/*.swift fuzz/HTTP1ParserFuzz.swift -o fuzz/out/http1-parser-fuzz
    exec fuzz/out/http1-parser-fuzz fuzz/corpus-work-http1 fuzz/corpus-http1 \
      -max_total_time="$secs" -max_len=4096 -artifact_prefix=fuzz/ -print_final_stats=1 ;;
  *) echo "usage: fuzz/run.sh [seconds] [frame|http1]" >&2; exit 2 ;;
esac
