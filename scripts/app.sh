#!/usr/bin/env bash
# Set up .venv (first run only) and launch the FairDx app on the embedded default models.
#
#   bash scripts/app.sh            # then open http://127.0.0.1:7860
#
# Extra arguments go to app.py. Gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; runs are
# read from and written to $FAIRDX_RUNS_DIR (default: runs/ in the repository).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh app
if [ ! -f app.py ]; then
  echo "error: app.py is missing from $ROOT; this checkout is incomplete" >&2
  exit 1
fi
export GRADIO_ANALYTICS_ENABLED="${GRADIO_ANALYTICS_ENABLED:-False}"
exec .venv/bin/python app.py "$@"
