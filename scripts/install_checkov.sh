#!/usr/bin/env bash
# Install checkov (terraform policy checks) in its own virtual environment and put it on PATH.
# checkov pins older boto3/packaging than requirements.txt, so it cannot share the project's .venv.
# tests/deploy/test_terraform.py runs it when `checkov` is on PATH (or CHECKOV names it) and skips otherwise.
set -euo pipefail
VENV="${CHECKOV_VENV:-/opt/checkov}"
PYTHON="${PYTHON:-python3.11}"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q checkov==3.3.30
if [ -w /usr/local/bin ]; then
  ln -sf "$VENV/bin/checkov" /usr/local/bin/checkov
  echo "checkov: /usr/local/bin/checkov -> $VENV/bin/checkov"
else
  echo "checkov: $VENV/bin/checkov (not on PATH: export CHECKOV=$VENV/bin/checkov)"
fi
