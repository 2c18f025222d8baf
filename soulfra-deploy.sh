#!/usr/bin/env bash
# Soulfra's front door for operators and developers.
#
#   ./soulfra-deploy.sh up       install what is missing, build (release), start the daemon (gateway, broker,
#                                admin) and a demo world "playground"; prints its key and a curl to try
#   ./soulfra-deploy.sh down     stop what `up` started
#   ./soulfra-deploy.sh status   is the daemon from `up` running?
#   ./soulfra-deploy.sh test     install what is missing and run the whole test suite
#   ./soulfra-deploy.sh bench [gateway|broker]  side-by-side benchmarks (bench/gateway-vs-nghttpx,
#                                bench/broker-vs-nats; both when no argument)
#   ./soulfra-deploy.sh fuzz [S] [frame|http1]  run a fuzzer for S seconds (default 60, the frame decoder)
#
# World commands (deploy, list, scale, logs, master, shutdown) arrive with the control plane.
set -euo pipefail
cd "$(dirname "$0")"
RUN_DIR=${SOULFRA_RUN_DIR:-/tmp/soulfra}
PID_FILE="$RUN_DIR/serve.pid"
LOG_FILE="$RUN_DIR/serve.log"
WORLD_PID_FILE="$RUN_DIR/playground.pid"
WORLD_LOG_FILE="$RUN_DIR/playground.log"
# The demo key for world "playground" (config/soulfra.json, key 2; development only).
DEMO_KEY=sk-slfr_kids_ztys355NrAlpgsJGcDc2bhARePpktW1LdIsn

# Debian packages the build needs; the tests also drive curl and nghttp (nghttp2-client) against the gateway
# and check /metrics with promtool (prometheus); python3 runs the loopback OpenAI-compatible server, and with
# python3-fuse a disk whose syncs are slow (the vault's backpressure test). The benchmark peers are installed by
# bench/ itself.
DEBS=(liburing-dev libnghttp2-dev libssl-dev libsqlite3-dev libcurl4-openssl-dev pkg-config)
TEST_DEBS=(curl nghttp2-client prometheus python3 python3-fuse)

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
  need_debs curl
  echo "==> building (release)"
  swift build -c release --product soulfra >/dev/null
  swift build -c release --product soulfra-loadtest >/dev/null
  mkdir -p "$RUN_DIR"
  if running; then
    echo "==> daemon already running (pid $(cat "$PID_FILE"))"
  else
    echo "==> starting the daemon (config/soulfra.json)"
    nohup .build/release/soulfra serve --config config/soulfra.json >"$LOG_FILE" 2>&1 &
    echo $! >"$PID_FILE"
    for _ in $(seq 50); do [ -S "$RUN_DIR/broker.sock" ] && break; sleep 0.1; done
    running || { echo "error: the daemon did not start; its log:" >&2; cat "$LOG_FILE" >&2; exit 1; }
  fi
  if [ -s "$WORLD_PID_FILE" ] && kill -0 "$(cat "$WORLD_PID_FILE")" 2>/dev/null; then
    echo "==> demo world \"playground\" already running (pid $(cat "$WORLD_PID_FILE"))"
  else
    # Until the worlds layer brings templates, the demo world is one agent instance: messages are stored in the
    # world's vault and answered by the agent "cal" in the daemon's runtime workers, token by token.
    echo "==> deploying the demo world \"playground\" (agent cal; vault under /tmp/soulfra/vault)"
    nohup .build/release/soulfra world --world playground --config config/soulfra.json \
      --agent "cal:cheerful:Hi, I am Cal!" >"$WORLD_LOG_FILE" 2>&1 &
    echo $! >"$WORLD_PID_FILE"
  fi
  local url=http://127.0.0.1:8080/v1/worlds/playground/messages
  for _ in $(seq 50); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $DEMO_KEY" -d '{}' "$url")" = 200 ] && break
    sleep 0.1
  done
  echo
  echo "Soulfra is up (daemon pid $(cat "$PID_FILE"); log $LOG_FILE)."
  echo "  gateway   http://127.0.0.1:8080 (HTTP/1.1, h2c)   https://127.0.0.1:8443 (TLS, self-signed dev certificate)"
  echo "  world     playground    key: $DEMO_KEY"
  echo
  echo "Try it:"
  echo "  curl -s $url -H 'Authorization: Bearer $DEMO_KEY' -d '{\"text\":\"hello\",\"session\":\"me\"}'"
  echo "  curl -sN $url -H 'Authorization: Bearer $DEMO_KEY' -d '{\"text\":\"hello\",\"session\":\"me\",\"stream\":true}'"
  echo "  curl -s -H 'Authorization: Bearer dev-admin-token-000001' http://127.0.0.1:7401/metrics | grep soulfra_gateway_requests"
  echo
  echo "It keeps running. Stop it with: ./soulfra-deploy.sh down"
}

cmd_down() {
  if [ -s "$WORLD_PID_FILE" ] && kill -0 "$(cat "$WORLD_PID_FILE")" 2>/dev/null; then
    kill -TERM "$(cat "$WORLD_PID_FILE")"
    echo "demo world (pid $(cat "$WORLD_PID_FILE")) stopped"
  fi
  rm -f "$WORLD_PID_FILE"
  if running; then
    local pid; pid=$(cat "$PID_FILE")
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "daemon (pid $pid) stopped"
  else
    echo "no daemon started by 'up' is running"
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
  status) if running; then echo "daemon running (pid $(cat "$PID_FILE"))"; else echo "daemon not running"; exit 1; fi ;;
  test) cmd_test ;;
  bench)
    shift; need_debs
    case "${1:-all}" in
      gateway) exec bench/gateway-vs-nghttpx ;;
      broker) exec bench/broker-vs-nats ;;
      all) bench/gateway-vs-nghttpx; exec bench/broker-vs-nats ;;
      *) echo "bench takes gateway, broker or nothing (both)" >&2; exit 2 ;;
    esac ;;
  fuzz) shift; need_debs; exec fuzz/run.sh "${1:-60}" "${2:-frame}" ;;
  -h|--help|help|"") sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "unknown command: $1 (see ./soulfra-deploy.sh --help)" >&2; exit 2 ;;
esac
