#!/usr/bin/env bash
# Soulfra's front door for operators and developers.
#
#   ./soulfra-deploy.sh up       install what is missing, build (release), start the broker, run a short load test
#   ./soulfra-deploy.sh down     stop the broker started by `up`
#   ./soulfra-deploy.sh status   is the broker from `up` running?
#   ./soulfra-deploy.sh test     install what is missing and run the whole test suite
#   ./soulfra-deploy.sh bench    the side-by-side benchmarks (bench/broker-vs-nats)
#   ./soulfra-deploy.sh fuzz [S] [frame|http1]  run a fuzzer for S seconds (default 60, the frame decoder)
#
# World commands (deploy, list, scale, logs, master, shutdown) arrive with the control plane.
set -euo pipefail
cd "$(dirname "$0")"
RUN_DIR=${SOULFRA_RUN_DIR:-/tmp/soulfra}
PID_FILE="$RUN_DIR/serve.pid"
LOG_FILE="$RUN_DIR/serve.log"

# Debian packages the build needs; the tests also drive curl and check /metrics with promtool (prometheus).
# The benchmark peers are installed by bench/ itself.
DEBS=(liburing-dev libnghttp2-dev libssl-dev libsqlite3-dev pkg-config)
TEST_DEBS=(curl prometheus)

need_debs() {
  local missing=()
  for p in "${DEBS[@]}" "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing: ${missing[*]}"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  command -v swift >/dev/null || { [ -x /opt/swift/usr/bin/swift ] && export PATH="/opt/swift/usr/bin:$PATH"; }
  command -v swift >/dev/null || { echo "error: the Swift toolchain (swift) is not on PATH" >&2; exit 1; }
}

running() { [ -s "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

cmd_up() {
  need_debs
  echo "==> building (release)"
  swift build -c release --product soulfra >/dev/null
  swift build -c release --product soulfra-loadtest >/dev/null
  mkdir -p "$RUN_DIR"
  if running; then
    echo "==> broker already running (pid $(cat "$PID_FILE"))"
  else
    echo "==> starting the broker (config/soulfra.json)"
    nohup .build/release/soulfra serve --config config/soulfra.json >"$LOG_FILE" 2>&1 &
    echo $! >"$PID_FILE"
    for _ in $(seq 50); do [ -S "$RUN_DIR/broker.sock" ] && break; sleep 0.1; done
    running || { echo "error: the broker did not start; its log:" >&2; cat "$LOG_FILE" >&2; exit 1; }
  fi
  local pid; pid=$(cat "$PID_FILE")
  echo "==> broker pid $pid, listening on unix:$RUN_DIR/broker.sock and 127.0.0.1:7400 (log: $LOG_FILE)"
  echo "==> load test: 1 producer -> 1 consumer, 256 B frames, 3 s"
  .build/release/soulfra-loadtest pipe --broker tcp:127.0.0.1:7400 --server-pid "$pid" --seconds 3
  echo "==> load test: app -> instance -> runtime -> vault and back, 16 conversations, 3 s"
  .build/release/soulfra-loadtest chain --broker unix:"$RUN_DIR/broker.sock" --server-pid "$pid" --seconds 3
  echo
  echo "Metrics:  curl -s -H 'Authorization: Bearer dev-admin-token-000001' http://127.0.0.1:7401/metrics | head"
  echo "Health:   curl -s http://127.0.0.1:7401/healthz"
  echo "The broker keeps running. Stop it with: ./soulfra-deploy.sh down"
}

cmd_down() {
  if running; then
    local pid; pid=$(cat "$PID_FILE")
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "broker (pid $pid) stopped"
  else
    echo "no broker started by 'up' is running"
  fi
  rm -f "$PID_FILE"
}

cmd_test() {
  need_debs "${TEST_DEBS[@]}"
  echo "==> building tests"
  swift build --build-tests
  echo "==> running tests"
  local log; log=$(mktemp)
  set +e
  swift test --skip-build 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  # One plain summary line (Swift Testing's own closing line precedes it).
  local total failed
  total=$(sed -n 's/.*Test run with \([0-9]*\) tests\{0,1\} .*/\1/p' "$log" | tail -1)
  failed=$(grep '^✘ Test "' "$log" | grep -c ' failed after' || true)
  rm -f "$log"
  [ -n "$total" ] && echo "tests: $((total - failed)) passed, $failed failed"
  return "$rc"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) if running; then echo "broker running (pid $(cat "$PID_FILE"))"; else echo "broker not running"; exit 1; fi ;;
  test) cmd_test ;;
  bench) shift; need_debs; exec bench/broker-vs-nats "$@" ;;
  fuzz) shift; need_debs; exec fuzz/run.sh "${1:-60}" "${2:-frame}" ;;
  -h|--help|help|"") sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "unknown command: $1 (see ./soulfra-deploy.sh --help)" >&2; exit 2 ;;
esac
