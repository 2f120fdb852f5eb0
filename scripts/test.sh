#!/usr/bin/env bash
# Set up (once) and run the whole test suite: the package with its test extras, Chromium for the
# MLflow UI test, helm/kubectl for the chart checks. The tests start their own SeaweedFS (S3) and
# MLflow servers on 127.0.0.1. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "intermix needs Python 3.11"'
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test]"
bash .ci/install_browser.sh
bash .ci/cluster_tools.sh
exec .venv/bin/python -m pytest "$@"
