#!/usr/bin/env bash
# Set up (once) and run the whole test suite: the package with its test extras, Chromium for the
# MLflow UI test, helm/kubectl for the chart checks. The tests start their own SeaweedFS (S3) and
# MLflow servers on 127.0.0.1. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
# the runtime dependencies at the versions the images pin (docker/requirements.lock), so tests run what the images run
.venv/bin/pip install -q -e ".[test]" -c docker/requirements.lock
bash .ci/install_browser.sh
bash .ci/cluster_tools.sh
exec .venv/bin/python -m pytest "$@"
