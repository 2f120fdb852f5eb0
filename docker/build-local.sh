#!/usr/bin/env bash
# Build both image targets with podman, without pulling any public base image:
#   1. a Debian bookworm base (Python 3.11) made with debootstrap and imported into podman
#   2. a wheelhouse of every Python dependency, downloaded once with pip (offline builds after that)
#   3. `podman build --target cpu` and `--target cuda` of docker/Dockerfile on that base
# Images: localhost/intermix:<version>-<commit12>-cpu / -cuda (components/image.py names them).
# Needs root (debootstrap), podman, runc and debootstrap: apt-get install podman runc debootstrap.
#
# Environment:
#   INTERMIX_IMAGE_CACHE  work folder (default .cache/images): rootfs, wheelhouse, containers.conf
#   TORCH_CPU_INDEX_URL   torch index of the cpu target (default empty: PyPI; the PyPI wheel is the
#                         CUDA build, so the local cpu image is larger than one from the CPU index)
#   TARGETS               targets to build (default "cpu cuda")
#   REBUILD               set to rebuild a target whose image for this commit exists
# Prints the image names and sizes at the end. Re-running reuses the base and the wheelhouse; build
# stages are pruned after each target (disk), so a rebuild re-runs the offline pip installs.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${INTERMIX_IMAGE_CACHE:-.cache/images}"
BASE="localhost/intermix-base:bookworm-py311"
TARGETS="${TARGETS:-cpu cuda}"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"

# podman on this kind of machine: runc (crun fails on hybrid cgroups) and no raised ulimits
# (the default ones exceed the machine's hard limits); a private containers.conf, /etc untouched
cat > "$CACHE/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$CACHE/containers.conf"

VERSION="$(.venv/bin/python -c 'import intermix_core; print(intermix_core.__version__)')"
GIT_COMMIT="$(git rev-parse HEAD)"
TAG="$VERSION-${GIT_COMMIT:0:12}"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "warning: uncommitted changes are built into images tagged $TAG" >&2
fi

if ! podman image exists "$BASE"; then
  echo "== debootstrap Debian bookworm into $CACHE/rootfs"
  rm -rf "$CACHE/rootfs"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
    bookworm "$CACHE/rootfs" > "$CACHE/debootstrap.log"
  rm -rf "$CACHE/rootfs/var/cache/apt/archives/"*.deb "$CACHE/rootfs/var/lib/apt/lists/"*
  tar -C "$CACHE/rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE"
  rm -rf "$CACHE/rootfs"
fi

WHEELS="$CACHE/wheelhouse"
if [ ! -f "$WHEELS/.complete-$VERSION" ]; then
  echo "== wheelhouse $WHEELS"
  mkdir -p "$WHEELS"
  # the project's dependencies for Linux x86_64 / CPython 3.11 (this machine's platform) and the
  # build tool the wheel stage pins; the project itself is built inside the image
  .venv/bin/pip download --quiet --dest "$WHEELS" setuptools==80.9.0 \
    $(.venv/bin/python - <<'PY'
import tomllib
print(" ".join(f"'{d}'" if " " in d else d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY
)
  touch "$WHEELS/.complete-$VERSION"
fi

# disk: each target is ~6 GB (torch with its CUDA wheels) plus as much again for its build stage
# while it builds; older builds of these images and finished build stages are removed
for old in $(podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/intermix:' | grep -v ":$TAG-" || true); do
  podman rmi --force "$old" > /dev/null
done
podman image prune --force > /dev/null

for target in $TARGETS; do
  if podman image exists "localhost/intermix:$TAG-$target" && [ -z "${REBUILD:-}" ]; then
    echo "== localhost/intermix:$TAG-$target exists (REBUILD=1 builds it again)"
    continue
  fi
  index_arg=()
  if [ "$target" = cpu ]; then
    index_arg=(--build-arg "TORCH_CPU_INDEX_URL=${TORCH_CPU_INDEX_URL:-}")
  fi
  echo "== podman build --target $target"
  podman build --runtime runc --file docker/Dockerfile --target "$target" \
    --build-arg PYTHON_IMAGE="$BASE" --build-arg VERSION="$VERSION" --build-arg GIT_COMMIT="$GIT_COMMIT" \
    "${index_arg[@]}" --build-arg PIP_FIND_LINKS=/wheelhouse --build-arg PIP_NO_INDEX=1 \
    --volume "$WHEELS:/wheelhouse:ro" --network none \
    --tag "localhost/intermix:$TAG-$target" .
  podman image prune --force > /dev/null   # the stage images (the venv alone is ~6 GB)
done

podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^localhost/intermix(-base)?:" || true
