#!/usr/bin/env bash
# promtool for the tests (alert rules, /metrics lint), from Debian's `prometheus` package:
# `apt-get download` the pinned version (the current one if the archive has moved on), then
# `dpkg -x` it and keep only usr/bin/promtool, so the Prometheus server is never installed.
# Usage: promtool.sh VERSION DEST   (DEST: where promtool goes, e.g. .tools/bin/promtool)
# A promtool already on PATH is used as it is. Failure is one line saying what to do.
set -euo pipefail
version=$1 dest=$2

if found=$(command -v promtool); then
  echo "promtool: using $found"
  exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
  echo "promtool is missing and this is no Debian (apt-get, dpkg): install Prometheus' promtool on PATH" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
download() { apt-get download -qq "$1" >/dev/null 2>&1; }
if ! download "prometheus=$version"; then
  # A fresh machine may have no package lists yet; root can fetch them.
  [[ "$(id -u)" != 0 ]] || apt-get update -qq
  if ! download "prometheus=$version"; then
    echo "promtool: prometheus $version is not in the archive; taking its current version"
    if ! download prometheus; then
      echo "promtool: could not download Debian's prometheus package; run 'sudo apt-get update' and try again" >&2
      exit 1
    fi
  fi
fi
dpkg -x prometheus_*.deb root
cd - >/dev/null
mkdir -p "$(dirname "$dest")"
cp "$work/root/usr/bin/promtool" "$dest"
"$dest" --version 2>&1 | head -1
