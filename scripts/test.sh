#!/usr/bin/env bash
# Set up .venv with the test requirements (first run only) and run the whole test suite.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh tests/test_card.py -x   # extra arguments go to pytest
#
# The browser test drives Debian's chromium through Playwright's Python API; this script installs
# chromium and chromium-driver with apt-get when they are missing (as root, or through sudo
# without a password). It never runs `playwright install` (no browser downloads). If chromium
# cannot be installed the browser test is skipped with a reason and everything else still runs.
# Set FAIRDX_NO_APT=1 to skip the apt-get step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh test

have_chromium() {
  command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]
}

install_chromium() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      echo "warning: chromium is missing and installing it needs root (or sudo without a password);"
      echo "warning: the browser test will be skipped. Install it with: sudo apt-get install chromium chromium-driver"
      return 0
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "warning: chromium is missing and apt-get is not available; the browser test will be skipped"
    return 0
  fi
  local log
  log="$(mktemp)"
  echo "test: installing chromium and chromium-driver with apt-get (about 500 MB, once; log in $log)"
  if ! { ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update &&
         ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; } \
       >"$log" 2>&1; then
    tail -n 20 "$log"
    echo "warning: apt-get could not install chromium (log: $log); the browser test will be skipped"
    return 0
  fi
  echo "test: $(chromium --version 2>/dev/null || echo chromium) installed"
}

if [ "${FAIRDX_NO_APT:-0}" != "1" ] && ! have_chromium; then
  install_chromium
fi

exec .venv/bin/python -m pytest -q "$@"
