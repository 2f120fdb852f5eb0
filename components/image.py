"""The container images the components run in, named by what goes into them, so a name never changes meaning.

A KFP cache entry keys on the image string and pods pull `IfNotPresent`, so a re-pushed tag would
serve stale code and stale cache hits; a name that changes with every commit would re-key every
cached task after a README edit (520 train pods rescheduled on GPUs) and name an image nobody built.
Compiled pipelines therefore name images by a hash of what the images run:

    <repository>:<version>-<inputs12>-cpu      <repository>:<version>-<inputs12>-cuda<CUDA version>
    <repository>@sha256:<digest>               (when a digest is pinned: the strongest identity)

The inputs (`image_inputs`) are what docker/Dockerfile copies into the build and the components run:
`intermix_core/` and `components/` (less what .dockerignore drops), the dependency lock
docker/requirements.lock, the Dockerfile itself, and the tables of pyproject.toml that make the wheel
([build-system], [project], [tool.setuptools]). `pipelines/` (the CLI, compilation, submission) is
copied too, for the image's `intermix` command, but no task runs it (a component's function body
imports only intermix_core), so it is no input: a change to the CLI keeps the names, the pushed
images and every cached task. README.md, docs, tests and charts are not inputs either. The CUDA version in the
cuda image's tag is the flavour it was built with (`CUDA_FLAVOUR`, intermix_core.method.devices.CUDA_BUILDS).

`IMAGE_CPU` / `IMAGE_GPU` (version-only tags) remain for the local runner, which runs no images.
`python -m components.image` prints the names for this checkout (docs/cluster.md builds and pushes
exactly those).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from intermix_core import __version__
from intermix_core.method.devices import CUDA_BUILDS, DEFAULT_CUDA

IMAGE_REPOSITORY = "ghcr.io/intermix-project/intermix"
# version-only names: what the local runner is given (it runs no container)
IMAGE_CPU = f"{IMAGE_REPOSITORY}:{__version__}-cpu"
IMAGE_GPU = f"{IMAGE_REPOSITORY}:{__version__}-cuda"
TARGETS = ("cpu", "cuda")
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout holding this package
PACKAGES = ("intermix_core", "components", "pipelines")  # what docker/Dockerfile copies (and .dockerignore admits)
# what the component tasks run, and so what names the images; pipelines/ is carried for the image's CLI only
HASHED_PACKAGES = ("intermix_core", "components")
DOCKERFILE = "docker/Dockerfile"
LOCK = "docker/requirements.lock"
PYPROJECT_TABLES = ("build-system", "project", "tool.setuptools")  # what of pyproject.toml reaches the wheel
_IGNORED_DIRS = {"__pycache__", ".pytest_cache"}  # as .dockerignore: **/__pycache__, **/.pytest_cache
_IGNORED_SUFFIXES = (".pyc", ".pyo", ".pyd")  # **/*.py[cod]
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPOSITORY = re.compile(r"^[a-z0-9]([a-z0-9._:/-]*[a-z0-9])?$")  # registry[:port]/path, lower case
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ImageError(ValueError):
    """The images cannot be named unambiguously (no source checkout, a malformed digest, repository or CUDA version)."""


@dataclass(frozen=True)
class Images:
    """The two image references a compiled pipeline uses."""

    cpu: str
    cuda: str

    def for_target(self, target: str) -> str:
        """The reference of target 'cpu' or 'cuda'."""
        return self.cpu if target == "cpu" else self.cuda


def git_state(cwd: str | Path | None = None) -> tuple[str | None, bool]:
    """(HEAD commit of the checkout holding this package, whether its tracked files have changes); (None, False) outside git."""
    where = Path(cwd) if cwd else SOURCE_ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, False
    return (head or None), bool(dirty)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pyproject_tables(path: Path) -> bytes:
    """The pyproject.toml tables that make the wheel, as canonical JSON (tool.pytest or lint settings are not inputs)."""
    data = tomllib.loads(path.read_text())
    picked: dict[str, object] = {}
    for dotted in PYPROJECT_TABLES:
        node: object = data
        for key in dotted.split("."):
            node = node.get(key, {}) if isinstance(node, dict) else {}
        picked[dotted] = node
    return json.dumps(picked, sort_keys=True, separators=(",", ":")).encode()


def image_inputs(root: str | Path = SOURCE_ROOT) -> dict[str, str]:
    """{path: sha256} of what the images run, from the repository at `root` (ImageError without a checkout)."""
    root = Path(root)
    missing = [p for p in (DOCKERFILE, LOCK, "pyproject.toml", *PACKAGES) if not (root / p).exists()]
    if missing:
        raise ImageError(f"cannot name the images by their inputs: {root / missing[0]} not found (a source checkout "
                         "of intermix is needed); give --image-tag TAG (an immutable tag you pushed) or "
                         "--image-digest cpu=sha256:...,cuda=sha256:...")
    inputs = {DOCKERFILE: _sha256((root / DOCKERFILE).read_bytes()), LOCK: _sha256((root / LOCK).read_bytes()),
              "pyproject.toml": _sha256(_pyproject_tables(root / "pyproject.toml"))}
    for package in HASHED_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not _IGNORED_DIRS & set(rel.parts) and path.suffix not in _IGNORED_SUFFIXES:
                inputs[rel.as_posix()] = _sha256(path.read_bytes())
    return inputs


def content_tag(root: str | Path = SOURCE_ROOT) -> str:
    """'<version>-<12 hex digits>': the tag prefix of the images built from the inputs at `root`."""
    listing = "".join(f"{path}\0{digest}\n" for path, digest in sorted(image_inputs(root).items()))
    return f"{__version__}-{_sha256(listing.encode())[:12]}"


def cuda_build(cuda: str) -> str:
    """The CUDA_FLAVOUR build argument of a CUDA version ('12.8' -> 'cu128'); ImageError for an unknown one."""
    if cuda not in CUDA_BUILDS:
        raise ImageError(f"CUDA version {cuda!r}: expected one of {', '.join(CUDA_BUILDS)} (docs/cluster.md, driver matrix)")
    return CUDA_BUILDS[cuda].flavour


def resolve_images(repository: str = IMAGE_REPOSITORY, tag: str | None = None,
                   digests: dict[str, str] | None = None, cuda: str = DEFAULT_CUDA) -> Images:
    """Image references by digest where one is pinned, else `<repository>:<tag>-cpu` / `-cuda<cuda>` (tag default: content_tag())."""
    if not _REPOSITORY.match(repository):
        raise ImageError(f"image repository {repository!r}: expected registry/path in lower case, e.g. ghcr.io/org/intermix")
    cuda_build(cuda)
    digests = dict(digests or {})
    for target, digest in digests.items():
        if target not in TARGETS:
            raise ImageError(f"image digest for {target!r}: expected one of {', '.join(TARGETS)}")
        if not _DIGEST.match(digest):
            raise ImageError(f"image digest {target}={digest!r}: expected sha256:<64 hex digits>")
    if tag is not None and not _TAG.match(tag):
        raise ImageError(f"image tag {tag!r}: expected [A-Za-z0-9_.-], at most 128 characters")
    needs_tag = [t for t in TARGETS if t not in digests]
    base = (tag or content_tag()) if needs_tag else ""
    suffix = {"cpu": "cpu", "cuda": f"cuda{cuda}"}
    refs = {t: f"{repository}@{digests[t]}" if t in digests else f"{repository}:{base}-{suffix[t]}" for t in TARGETS}
    return Images(cpu=refs["cpu"], cuda=refs["cuda"])


def build_command(image: str) -> str:
    """The command (from the repository root) that builds and pushes `image`, a tag resolve_images gave."""
    cuda = re.search(r"-cuda([0-9]+\.[0-9]+)$", image)
    target = "cuda" if cuda else "cpu"
    flavour = f" --build-arg CUDA_FLAVOUR={cuda_build(cuda.group(1))}" if cuda else ""
    return (f"docker buildx build -f {DOCKERFILE} --target {target} --platform linux/amd64 --build-arg "
            f"VERSION={__version__}{flavour} --build-arg GIT_COMMIT=\"$(git rev-parse HEAD)\" --tag {image} --push .")


def local_images() -> Images:
    """The version-only names given to the local runner (which ignores them)."""
    return Images(cpu=IMAGE_CPU, cuda=IMAGE_GPU)


def main(argv: list[str] | None = None) -> int:
    """Print this checkout's image names (`--shell`: as `export ...` lines); --repository=R, --cuda=12.6 choose others."""
    argv = sys.argv[1:] if argv is None else argv
    options = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    repository, cuda = options.get("repository", IMAGE_REPOSITORY), options.get("cuda", DEFAULT_CUDA)
    try:
        images = resolve_images(repository, cuda=cuda)
    except ImageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "--shell" in argv:
        commit, _ = git_state()
        print(f"export GIT_COMMIT={commit or ''}\nexport VERSION={__version__}\nexport CUDA_FLAVOUR={cuda_build(cuda)}\n"
              f"export IMAGE_CPU={images.cpu}\nexport IMAGE_GPU={images.cuda}")
    else:
        print(f"{images.cpu}\n{images.cuda}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
