#!/usr/bin/env bash
# Soulfra's front door for operators and developers.
#
#   ./soulfra-deploy.sh up       install what is missing, build (release), `init` (config, admin token, daemon in
#                                the background) and deploy the demo kids world "playground": prints its key
#                                and a curl to try
#   ./soulfra-deploy.sh down     stop the daemon (instances keep running; the next start adopts them)
#   ./soulfra-deploy.sh test     install what is missing and run the whole test suite
#   ./soulfra-deploy.sh bench [gateway|broker]  side-by-side benchmarks (bench/gateway-vs-nghttpx,
#                                bench/broker-vs-nats; both when no argument)
#   ./soulfra-deploy.sh fuzz [S] [frame|http1]  run a fuzzer for S seconds (default 60, the frame decoder)
#
# And the soulfra commands themselves (built on first use), e.g.:
#   ./soulfra-deploy.sh init
#   ./soulfra-deploy.sh deploy --type kids --name playground --agents cal,domingo,arty --runtime balanced --stream 3way_full
#   ./soulfra-deploy.sh list | status [world] | scale <world> --instances N | logs <world> -f | master
#   ./soulfra-deploy.sh shutdown <world> | keys create|list|revoke|rotate <world>
# (`./soulfra-deploy.sh <command> --help` explains each.)
set -euo pipefail
cd "$(dirname "$0")"
export SOULFRA_HOME=${SOULFRA_HOME:-/tmp/soulfra}
BIN=.build/release/soulfra

# Debian packages the build needs; the tests also drive curl and nghttp (nghttp2-client) against the gateway
# and check /metrics with promtool (prometheus); python3 runs the loopback OpenAI-compatible server, and with
# python3-fuse a disk whose syncs are slow (the vault's backpressure test). The benchmark peers are installed by
# bench/ itself.
DEBS=(liburing-dev libnghttp2-dev libssl-dev libsqlite3-dev libcurl4-openssl-dev pkg-config)
# docker.io: the docker driver's tests run containers on a real engine (the test command starts dockerd);
# docker-compose (1.29): the daemon-in-a-container path (docker-compose.yml). chromium and python3-venv: the
# control panel's browser test (Playwright from PyPI, pinned, in .build/panel-venv, driving Debian's chromium).
TEST_DEBS=(curl nghttp2-client prometheus python3 python3-fuse docker.io docker-compose chromium python3-venv)
PLAYWRIGHT=playwright==1.65.2

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

build() {
  need_debs curl
  echo "==> building (release)"
  swift build -c release --product soulfra >/dev/null
}

cmd_up() {
  build
  swift build -c release --product soulfra-loadtest >/dev/null
  "$BIN" init
  if "$BIN" status playground >/dev/null 2>&1; then
    echo "==> the demo world \"playground\" is already deployed (its key was shown when it was made;"
    echo "    a new one: $BIN keys create playground)"
    "$BIN" list
  else
    "$BIN" deploy --type kids --name playground --agents cal,domingo,arty --runtime balanced --stream 3way_full
  fi
  echo
  echo "Next: $BIN list · $BIN status playground · $BIN logs playground -f · $BIN scale playground --instances 3"
  echo "It keeps running. Stop the daemon with: ./soulfra-deploy.sh down"
}

# The docker engine the docker driver's tests use: started in the background unless one answers already.
# Where none can start, those tests say loudly that they were skipped.
start_dockerd() {
  docker_ping() { curl -sf --max-time 2 --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1; }
  docker_ping && return 0
  command -v dockerd >/dev/null || return 0
  echo "==> starting dockerd (log: /tmp/soulfra-dockerd.log)"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo setsid dockerd >/tmp/soulfra-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 120); do docker_ping && return 0; sleep 0.5; done
  echo "warning: dockerd did not answer within 60 s (see /tmp/soulfra-dockerd.log); the docker driver tests will be skipped" >&2
}

# Playwright (the Python package only: it drives /usr/bin/chromium, it never downloads a browser).
panel_venv() {
  local venv=.build/panel-venv
  if ! "$venv/bin/python" -c 'import playwright' >/dev/null 2>&1; then
    echo "==> installing $PLAYWRIGHT into $venv (the panel's browser test)"
    python3 -m venv "$venv" && "$venv/bin/pip" install -q "$PLAYWRIGHT" \
      || echo "warning: Playwright could not be installed; the panel's browser test will be skipped" >&2
  fi
  export SOULFRA_PANEL_PYTHON=$PWD/$venv/bin/python
}

cmd_test() {
  need_debs "${TEST_DEBS[@]}"
  start_dockerd
  panel_venv
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
  down) [ -x "$BIN" ] || build; exec "$BIN" down ;;
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
  init|deploy|list|status|scale|logs|master|shutdown|keys)
    [ -x "$BIN" ] || build
    exec "$BIN" "$@" ;;
  -h|--help|help|"") sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "unknown command: $1 (see ./soulfra-deploy.sh --help)" >&2; exit 2 ;;
esac
