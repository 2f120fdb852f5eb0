#!/usr/bin/env bash
# Set up (once) and run the demo grid on the embedded default: KFP's local runner, a local MLflow
# store and local directories, on the ESC-10 demo subset shipped in the package. Extra arguments
# go to `intermix run` (e.g. --workdir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "intermix needs Python 3.11"'
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e .
exec .venv/bin/intermix run "$@"
