#!/usr/bin/env bash
# Installs the app into a fresh venv exactly as the Dockerfile's build stage does (same files, same
# uv, same commands: tests/deploy/test_dockerfile.py keeps the marked block identical to the
# Dockerfile's), then runs the installed console script the way the image does: `check-config` on
# a sample config, and `serve` against `token-broker emulator` until /health/live answers 200.
# Last, the caller SDK (client/) is installed the way a caller installs it and used against it.
# No Docker engine runs on CI's machines; this is what stands in for building and starting the image.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# The uv the Dockerfile pins, installed the way both the Makefile and the Dockerfile install it.
UV_VERSION=$(sed -n 's/^ARG UV_VERSION=//p' Dockerfile)
make --no-print-directory -s .tools/uv/bin/uv
export PATH="$ROOT/.tools/uv/bin:$PATH"
if [[ "$(uv --version)" != "uv $UV_VERSION "* ]]; then
  echo "wheel-smoke: .tools/uv is $(uv --version), the Dockerfile pins $UV_VERSION" >&2
  exit 1
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# The same build context as the image: what .dockerignore lets through.
mkdir -p "$WORK/src"
cp -r pyproject.toml uv.lock README.md app "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +

# The Dockerfile's ENV for the build stage.
export PIP_DISABLE_PIP_VERSION_CHECK=1 UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy UV_NO_CACHE=1
export VENV="$WORK/venv" BUILD="$WORK/out"

echo "wheel-smoke: installing into $VENV as the Dockerfile does"
(
  cd "$WORK/src"
  # >>> install (identical in Dockerfile)
  uv export --quiet --frozen --no-dev --no-editable --no-emit-project --format requirements.txt --output-file "$BUILD/requirements.txt" \
   && uv build --wheel --out-dir "$BUILD/dist" \
   && python -m venv --without-pip "$VENV" \
   && uv pip install --python "$VENV/bin/python" --require-hashes --no-deps --compile-bytecode --requirement "$BUILD/requirements.txt" \
   && uv pip install --python "$VENV/bin/python" --no-deps --compile-bytecode "$BUILD"/dist/*.whl
  # <<< install
)

# The image's runtime ENV; run from a folder without the source tree so only the venv is used.
export PATH="$VENV/bin:$PATH" PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
cd "$WORK"

site=$("$VENV/bin/python" -c 'import app, os; print(os.path.dirname(app.__file__))')
if [[ "$site" != "$VENV"/* ]]; then
  echo "wheel-smoke: app was imported from $site, not from the venv" >&2
  exit 1
fi
if ! compgen -G "$site/__pycache__/*.pyc" >/dev/null; then
  echo "wheel-smoke: no bytecode was compiled for $site" >&2
  exit 1
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
EMULATOR_PORT=$(free_port)
BROKER_PORT=$(free_port)
OPS_PORT=$(free_port)

printf 'smoke-client-secret\n' >"$WORK/client_secret"
API_KEY_SHA256=$(printf '%s' smoke-api-key | sha256sum | cut -d' ' -f1)
cat >"$WORK/config.toml" <<EOF
[server]
host = "127.0.0.1"
port = $BROKER_PORT
ops_port = $OPS_PORT

[clients.checkout]
token_url = "http://127.0.0.1:$EMULATOR_PORT/auth/realms/Paysera/protocol/openid-connect/token"
api_base_url = "http://127.0.0.1:$EMULATOR_PORT"
client_id = "smoke"
client_secret_file = "$WORK/client_secret"

[callers.smoke]
api_key_sha256 = "$API_KEY_SHA256"
clients = ["checkout"]
EOF

echo "wheel-smoke: token-broker check-config"
token-broker check-config --config "$WORK/config.toml"

# Answers 0 once GET url returns 200, 1 after `tries` half-second attempts.
wait_for_200() {
  local url=$1 tries=$2
  python3 - "$url" "$tries" <<'EOF'
import sys, time, urllib.request

url, tries = sys.argv[1], int(sys.argv[2])
for _ in range(tries):
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
print(f"wheel-smoke: no 200 from {url}", file=sys.stderr)
sys.exit(1)
EOF
}

echo "wheel-smoke: token-broker emulator on :$EMULATOR_PORT, serve on :$BROKER_PORT (ops :$OPS_PORT)"
EMULATOR_CLIENTS=smoke:smoke-client-secret \
  token-broker emulator --host 127.0.0.1 --port "$EMULATOR_PORT" >"$WORK/emulator.log" 2>&1 &
PIDS+=("$!")
token-broker serve --config "$WORK/config.toml" >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
PIDS+=("$SERVE_PID")

status=0
wait_for_200 "http://127.0.0.1:$BROKER_PORT/health/live" 40 || status=1
[[ $status -eq 0 ]] && { wait_for_200 "http://127.0.0.1:$OPS_PORT/health/live" 4 || status=1; }
[[ $status -eq 0 ]] && { wait_for_200 "http://127.0.0.1:$OPS_PORT/metrics" 4 || status=1; }

# End to end: a caller's API key gets a token the broker fetched from the emulator.
if [[ $status -eq 0 ]]; then
  echo "wheel-smoke: GET /token?client=checkout"
  python3 - "http://127.0.0.1:$BROKER_PORT/token?client=checkout" <<'EOF' || status=1
import json, sys, urllib.request

request = urllib.request.Request(sys.argv[1], headers={"X-API-Key": "smoke-api-key"})
with urllib.request.urlopen(request, timeout=10) as response:
    body = json.load(response)
if response.status != 200 or not body.get("access_token") or body.get("token_type") != "Bearer":
    sys.exit(f"wheel-smoke: unexpected /token answer {response.status} {sorted(body)}")
EOF
fi

# The caller SDK as a caller installs it (`pip install ./client`, into a venv of its own, httpx its
# only dependency), then upstream calls through BrokerAuth with the broker's token.
if [[ $status -eq 0 ]]; then
  echo "wheel-smoke: the caller SDK from client/, against the running broker"
  CLIENT_VENV="$WORK/client-venv"
  (
    uv build --quiet --wheel --out-dir "$WORK/client-dist" "$ROOT/client" \
      && python3 -m venv --without-pip "$CLIENT_VENV" \
      && uv pip install --quiet --python "$CLIENT_VENV/bin/python" "$WORK"/client-dist/*.whl
  ) || status=1
fi
if [[ $status -eq 0 ]]; then
  "$CLIENT_VENV/bin/python" - "http://127.0.0.1:$BROKER_PORT" \
    "http://127.0.0.1:$EMULATOR_PORT/checkout-project/integration/v1/methods" <<'EOF' || status=1
import importlib.util, sys

import httpx
from token_broker_client import BrokerAuth

if importlib.util.find_spec("requests") is not None:
    sys.exit("wheel-smoke: requests came with the SDK; httpx is its only dependency")
with BrokerAuth(sys.argv[1], client="checkout", api_key="smoke-api-key") as auth:
    with httpx.Client(auth=auth) as client:
        answers = [client.get(sys.argv[2]) for _ in range(2)]
if [r.status_code for r in answers] != [200, 200] or not answers[0].json().get("methods"):
    sys.exit(f"wheel-smoke: SDK calls answered {[r.status_code for r in answers]}")
EOF
fi

# The image's STOPSIGNAL: serve must exit by itself, promptly, on SIGTERM.
if [[ $status -eq 0 ]]; then
  kill -TERM "$SERVE_PID"
  for _ in $(seq 50); do
    kill -0 "$SERVE_PID" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$SERVE_PID" 2>/dev/null; then
    echo "wheel-smoke: serve did not exit within 10 s of SIGTERM" >&2
    status=1
  fi
fi

if [[ $status -ne 0 ]]; then
  echo "--- serve.log"; cat "$WORK/serve.log"
  echo "--- emulator.log"; cat "$WORK/emulator.log"
  exit 1
fi
echo "wheel-smoke: ok"
