#!/usr/bin/env bash
# Set up (once) and run the demo grid on the embedded default: KFP's local runner, a local MLflow
# store and local directories, on the ESC-10 demo subset shipped in the package. Extra arguments
# go to `intermix run` (e.g. --workdir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
.venv/bin/pip install -q -e . -c docker/requirements.lock  # the versions the images pin
exec .venv/bin/intermix run "$@"
