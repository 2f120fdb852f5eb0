# Sourced by demo.sh and test.sh: make .venv with Python 3.11 if it is missing, and upgrade pip.
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "intermix needs Python 3.11"'
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
