#!/usr/bin/env bash
# Create the project's virtual environment (.venv) and install the pinned requirements into it.
#
#   bash scripts/setup.sh app    # requirements.txt       (what the app needs)
#   bash scripts/setup.sh test   # requirements-test.txt  (the app plus the test tools)
#
# Then it installs FairDx itself from pyproject.toml in editable mode (offline: no dependencies, no
# build isolation; torch's requirements bring the setuptools it builds with), which puts the
# `fairdx` command in .venv/bin. Needs only Python >= 3.11 with venv and pip. Idempotent: after a
# successful install it records the sha256 of the requirements files and pyproject.toml in
# .venv/.fairdx-<profile>.sha256, so a second call with unchanged files returns in well under a
# second. Set FAIRDX_PYTHON to choose the interpreter.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${1:-app}"
case "$PROFILE" in
  app) REQUIREMENTS=("$ROOT/requirements.txt") ;;
  test) REQUIREMENTS=("$ROOT/requirements-test.txt" "$ROOT/requirements.txt") ;;
  *) echo "usage: bash scripts/setup.sh [app|test]" >&2; exit 2 ;;
esac
VENV="$ROOT/.venv"
STAMP="$VENV/.fairdx-$PROFILE.sha256"
PROJECT="$ROOT/pyproject.toml"
DIGESTED=("${REQUIREMENTS[@]}")
if [ -f "$PROJECT" ]; then
  DIGESTED+=("$PROJECT")
fi

for file in "${REQUIREMENTS[@]}"; do
  if [ ! -f "$file" ]; then
    echo "error: $file is missing; run this script from a complete FairDx checkout" >&2
    exit 1
  fi
done

find_python() {
  local candidate
  for candidate in "${FAIRDX_PYTHON:-}" python3.11 python3 python; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  if ! PYTHON="$(find_python)"; then
    echo "error: FairDx needs Python 3.11 or newer (python3.11 or python3 on PATH, or set FAIRDX_PYTHON)" >&2
    exit 1
  fi
  echo "setup: creating $VENV with $("$PYTHON" --version 2>&1)"
  if ! "$PYTHON" -m venv "$VENV"; then
    rm -rf "$VENV"
    echo "error: '$PYTHON -m venv' failed; on Debian/Ubuntu install the venv module (apt-get install python3-venv)" >&2
    exit 1
  fi
fi

# sha256 over the requirements files and pyproject.toml, computed by the venv's own Python (no
# sha256sum/shasum needed).
DIGEST="$("$VENV/bin/python" - "${DIGESTED[@]}" <<'PY'
import hashlib, sys
h = hashlib.sha256()
for name in sys.argv[1:]:
    h.update(open(name, "rb").read())
print(h.hexdigest())
PY
)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$DIGEST" ]; then
  echo "setup: $PROFILE requirements already installed in .venv"
  exit 0
fi

echo "setup: installing ${REQUIREMENTS[0]##*/} into .venv (the first time takes a few minutes)"
rm -f "$STAMP"
"$VENV/bin/python" -m pip install --disable-pip-version-check -r "${REQUIREMENTS[0]}"
if [ -f "$PROJECT" ]; then
  echo "setup: installing FairDx (pyproject.toml, editable) into .venv"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --no-deps --no-build-isolation \
    --editable "$ROOT"
fi
echo "$DIGEST" > "$STAMP"
echo "setup: done"
