# Sourced by demo.sh and test.sh: make .venv with Python 3.11 (3.12 and 3.13 work too) if it is missing, and upgrade pip.
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 13), "intermix needs Python 3.11, 3.12 or 3.13"'
  "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
