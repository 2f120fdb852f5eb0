#!/usr/bin/env bash
# Build both image targets with podman, without pulling any public base image:
#   1. a Debian bookworm base (Python 3.11) made with debootstrap and imported into podman
#   2. a wheelhouse of every Python dependency (docker/requirements.lock, torch and torchaudio from
#      PyPI), downloaded once with pip (offline builds after that)
#   3. `podman build --target cpu` and `--target cuda` of docker/Dockerfile on that base
# Images: localhost/intermix:<version>-<inputs hash>-cpu / -cuda13.0 (components/image.py names them).
# The cuda target is the cu130 flavour here: PyPI's torch 2.11.0 is that build, and the PyTorch index
# (the other flavours) is not reachable from this repository's CI.
# Needs root (debootstrap), podman, runc and debootstrap: apt-get install podman runc debootstrap.
#
# Environment:
#   INTERMIX_IMAGE_CACHE  work folder (default .cache/images): rootfs, wheelhouse, containers.conf
#   TORCH_CPU_INDEX_URL   torch index of the cpu target (default empty: PyPI; the PyPI wheel is the
#                         CUDA build, so the local cpu image is larger than one from the CPU index)
#   PYTHON                the project's interpreter (default .venv/bin/python)
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

PYTHON="${PYTHON:-.venv/bin/python}"
# VERSION, GIT_COMMIT, CUDA_FLAVOUR, IMAGE_CPU, IMAGE_GPU: the names compiled pipelines would use
eval "$("$PYTHON" -m components.image --shell --repository=localhost/intermix --cuda=13.0)"
TAG="${IMAGE_CPU#localhost/intermix:}"
TAG="${TAG%-cpu}"

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
LOCK_SUM="$(sha256sum docker/requirements.lock | cut -c1-12)"
if [ ! -f "$WHEELS/.complete-$LOCK_SUM" ]; then
  echo "== wheelhouse $WHEELS"
  mkdir -p "$WHEELS"
  # for Linux x86_64 / CPython 3.11 (this machine's platform): torch with its own dependencies, the
  # lock's pins, and the build tool the wheel stage pins; the project itself is built inside the image
  "$PYTHON" -m pip download --quiet --dest "$WHEELS" setuptools==80.9.0 torch==2.11.0 torchaudio==2.11.0
  "$PYTHON" -m pip download --quiet --no-deps --dest "$WHEELS" -r docker/requirements.lock
  touch "$WHEELS/.complete-$LOCK_SUM"
fi

# disk: each target is ~6 GB (torch with its CUDA wheels) plus as much again for its build stage
# while it builds; older builds of these images and finished build stages are removed
for old in $(podman images --format '{{.Repository}}:{{.Tag}}' | grep '^localhost/intermix:' | grep -v ":$TAG-" || true); do
  podman rmi --force "$old" > /dev/null
done
podman image prune --force > /dev/null

for target in $TARGETS; do
  image="$IMAGE_CPU"
  index_arg=(--build-arg "TORCH_CPU_INDEX_URL=${TORCH_CPU_INDEX_URL:-}")
  if [ "$target" = cuda ]; then
    image="$IMAGE_GPU"
    index_arg=(--build-arg "CUDA_FLAVOUR=$CUDA_FLAVOUR" --build-arg "TORCH_CUDA_INDEX_URL=")
  fi
  if podman image exists "$image" && [ -z "${REBUILD:-}" ]; then
    echo "== $image exists (REBUILD=1 builds it again)"
    continue
  fi
  echo "== podman build --target $target"
  podman build --runtime runc --file docker/Dockerfile --target "$target" \
    --build-arg PYTHON_IMAGE="$BASE" --build-arg VERSION="$VERSION" --build-arg GIT_COMMIT="$GIT_COMMIT" \
    "${index_arg[@]}" --build-arg PIP_FIND_LINKS=/wheelhouse --build-arg PIP_NO_INDEX=1 \
    --volume "$WHEELS:/wheelhouse:ro" --network none \
    --tag "$image" .
  podman image prune --force > /dev/null   # the stage images (the venv alone is ~6 GB)
done

podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^localhost/intermix(-base)?:" || true
