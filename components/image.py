"""The container images the components run in, named so that a tag never changes meaning.

A KFP cache entry keys on the image string and pods pull `IfNotPresent`, so a re-pushed tag would
serve stale code and stale cache hits. Compiled pipelines therefore name images by code identity:

    <repository>:<version>-<commit12>-cpu      <repository>:<version>-<commit12>-cuda
    <repository>@sha256:<digest>               (when a digest is pinned: the strongest identity)

`IMAGE_CPU` / `IMAGE_GPU` (version-only tags) remain for the local runner, which runs no images.
`python -m components.image` prints the names for the current checkout (docs/cluster.md builds
and pushes exactly those).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from intermix_core import __version__

IMAGE_REPOSITORY = "ghcr.io/intermix-project/intermix"
# version-only names: what the local runner is given (it runs no container)
IMAGE_CPU = f"{IMAGE_REPOSITORY}:{__version__}-cpu"
IMAGE_GPU = f"{IMAGE_REPOSITORY}:{__version__}-cuda"
TARGETS = ("cpu", "cuda")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPOSITORY = re.compile(r"^[a-z0-9]([a-z0-9._:/-]*[a-z0-9])?$")  # registry[:port]/path, lower case
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ImageError(ValueError):
    """The images cannot be named unambiguously (no commit, a malformed digest or repository)."""


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
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, False
    return (head or None), bool(dirty)


def code_tag(commit: str | None = None) -> str:
    """'<version>-<commit12>': the tag prefix of this checkout's images (ImageError outside a git checkout)."""
    if commit is None:
        commit, _ = git_state()
    if not commit:
        raise ImageError("cannot name the images by commit: this is not a git checkout; give --image-tag TAG "
                         "(an immutable tag you pushed) or --image-digest cpu=sha256:...,cuda=sha256:...")
    return f"{__version__}-{commit[:12]}"


def resolve_images(repository: str = IMAGE_REPOSITORY, tag: str | None = None,
                   digests: dict[str, str] | None = None) -> Images:
    """Image references by digest where one is pinned, else `<repository>:<tag>-<target>` (tag default: code_tag())."""
    if not _REPOSITORY.match(repository):
        raise ImageError(f"image repository {repository!r}: expected registry/path in lower case, e.g. ghcr.io/org/intermix")
    digests = dict(digests or {})
    for target, digest in digests.items():
        if target not in TARGETS:
            raise ImageError(f"image digest for {target!r}: expected one of {', '.join(TARGETS)}")
        if not _DIGEST.match(digest):
            raise ImageError(f"image digest {target}={digest!r}: expected sha256:<64 hex digits>")
    if tag is not None and not _TAG.match(tag):
        raise ImageError(f"image tag {tag!r}: expected [A-Za-z0-9_.-], at most 128 characters")
    needs_tag = [t for t in TARGETS if t not in digests]
    base = (tag or code_tag()) if needs_tag else ""
    refs = {t: f"{repository}@{digests[t]}" if t in digests else f"{repository}:{base}-{t}" for t in TARGETS}
    return Images(cpu=refs["cpu"], cuda=refs["cuda"])


def local_images() -> Images:
    """The version-only names given to the local runner (which ignores them)."""
    return Images(cpu=IMAGE_CPU, cuda=IMAGE_GPU)


def main(argv: list[str] | None = None) -> int:
    """Print this checkout's image names (`--shell`: as `export IMAGE_CPU=... IMAGE_GPU=...` lines)."""
    argv = sys.argv[1:] if argv is None else argv
    repository = next((a.split("=", 1)[1] for a in argv if a.startswith("--repository=")), IMAGE_REPOSITORY)
    commit, dirty = git_state()
    if dirty:
        print(f"warning: the checkout has uncommitted changes; images tagged {commit and commit[:12]} "
              "must be built from a clean checkout of that commit", file=sys.stderr)
    try:
        images = resolve_images(repository)
    except ImageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if "--shell" in argv:
        print(f"export GIT_COMMIT={commit}\nexport VERSION={__version__}\n"
              f"export IMAGE_CPU={images.cpu}\nexport IMAGE_GPU={images.cuda}")
    else:
        print(f"{images.cpu}\n{images.cuda}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
