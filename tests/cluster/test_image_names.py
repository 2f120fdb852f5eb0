"""Image names by what goes into the images (components/image.py), and the registry check (pipelines/registry.py)
against a registry test double speaking the OCI distribution API (tests/support/registry_double.py)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.image import DOCKERFILE, HASHED_PACKAGES, LOCK, PACKAGES, content_tag, image_inputs, resolve_images
from intermix_core import __version__
from pipelines.registry import ImageCheckError, check_images, manifest_exists, split_reference

from registry_double import registry_double

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of the repository's image inputs plus README and docs, as a clone would have them."""
    out = tmp_path / "checkout"
    for name in (*PACKAGES, "docs"):
        shutil.copytree(ROOT / name, out / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", DOCKERFILE, LOCK, ".dockerignore"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, out / name)
    return out


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_a_docs_only_change_keeps_the_image_names(checkout: Path) -> None:
    tag = content_tag(checkout)
    assert tag == content_tag(ROOT) and re.fullmatch(rf"{re.escape(__version__)}-[0-9a-f]{{12}}", tag)
    (checkout / "README.md").write_text("# a new README\n")
    _edit(checkout / "docs" / "cluster.md", "# Running the grid", "# Running the whole grid")
    (checkout / "tests").mkdir()
    (checkout / "tests" / "test_new.py").write_text("def test(): pass\n")
    _edit(checkout / "pyproject.toml", 'addopts = "', 'addopts = "-q ')  # a test setting is no image input
    (checkout / "intermix_core" / "__pycache__").mkdir(exist_ok=True)
    (checkout / "intermix_core" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")  # .dockerignore'd
    assert content_tag(checkout) == tag


def test_a_cli_only_change_keeps_the_image_names(checkout: Path) -> None:
    """pipelines/ (CLI, compiler, submit) travels in the image for its `intermix` command, but no task runs it: a
    change there must not re-key the 520 cached train tasks of the paper grid."""
    tag = content_tag(checkout)
    _edit(checkout / "pipelines" / "cli.py", '"""', '"""A changed CLI.\n', )
    (checkout / "pipelines" / "new_command.py").write_text('"""A new command."""\n')
    assert content_tag(checkout) == tag
    assert not any(path.startswith("pipelines/") for path in image_inputs(checkout))
    # and what the tasks do run still renames them
    _edit(checkout / "components" / "train.py", '"""', '"""\n', )
    assert content_tag(checkout) != tag


@pytest.mark.parametrize("change", ["code", "package-data", "lock", "dockerfile", "dependencies"])
def test_a_change_to_what_goes_into_the_images_renames_them(checkout: Path, change: str) -> None:
    tag = content_tag(checkout)
    if change == "code":
        _edit(checkout / "intermix_core" / "method" / "mixing.py", '"""', '"""\n', )
    elif change == "package-data":
        (checkout / "intermix_core" / "grids" / "extra.yaml").write_text("name: extra\n")
    elif change == "lock":
        _edit(checkout / LOCK, "numpy==", "numpy==0")
    elif change == "dockerfile":
        _edit(checkout / DOCKERFILE, "ARG CUDA_FLAVOUR=", "ARG CUDA_FLAVOUR=x")
    else:
        _edit(checkout / "pyproject.toml", '"tqdm>=4.66"', '"tqdm>=4.67"')
    assert content_tag(checkout) != tag


def test_the_hashed_inputs_are_what_the_build_copies() -> None:
    """.dockerignore admits exactly the hashed paths, and the Dockerfile copies nothing else from the context."""
    admitted = {line.rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.startswith("!")}
    assert admitted == {f"!{p}" for p in (*PACKAGES, "pyproject.toml", LOCK)}
    assert set(HASHED_PACKAGES) == set(PACKAGES) - {"pipelines"}  # carried for the image's CLI, run by no task
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", (ROOT / DOCKERFILE).read_text(), re.MULTILINE))
    assert {c.rstrip("/") for c in copied} == {*PACKAGES, "pyproject.toml", LOCK}
    assert "README.md" not in image_inputs(ROOT)  # the top-level README is no input (package data may hold one)


def test_the_lock_pins_every_runtime_dependency() -> None:
    """docker/requirements.lock is what scripts/lock_deps.py makes of this environment, and it satisfies pyproject."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    check = subprocess.run([sys.executable, "scripts/lock_deps.py", "--check"], cwd=ROOT, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr
    pins = dict(line.split("==") for line in (ROOT / LOCK).read_text().splitlines() if line and line[0] != "#")
    for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        if canonicalize_name(req.name) in ("torch", "torchaudio"):
            assert str(req.specifier) == "==2.11.0"  # from the CUDA flavour's index, pinned in the Dockerfile
            continue
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), dep


# ---------------------------------------------------------------------------------------- the registry check


def _docker_config(tmp_path: Path, host: str, user: str, secret: str) -> Path:
    folder = tmp_path / "docker"
    folder.mkdir()
    auth = base64.b64encode(f"{user}:{secret}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return folder


def test_manifest_head_with_bearer_token_from_docker_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no stray credentials
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with registry_double(token="t0k3n", users={"robot": "s3cret"}) as reg:
        image = resolve_images(f"{reg.host}/lab/intermix").cuda
        reg.has(image)
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nowhere"))
        with pytest.raises(ImageCheckError, match=rf"registry {re.escape(reg.host)} refused .* `docker login"):
            manifest_exists(image)
        monkeypatch.setenv("DOCKER_CONFIG", str(_docker_config(tmp_path, reg.host, "robot", "s3cret")))
        assert manifest_exists(image)
        token_calls = [h for m, p, h in reg.requests if p.startswith("/token")]
        assert token_calls[-1]["authorization"] == "Basic " + base64.b64encode(b"robot:s3cret").decode()
        assert any(p.startswith("/token?") and "scope=repository%3Alab%2Fintermix%3Apull" in p for _, p, _ in reg.requests)
        assert reg.requests[-1][2]["authorization"] == "Bearer t0k3n"
        assert not manifest_exists(image.replace("-cuda", "-cudaX"))  # 404 after the same dance: missing


def test_an_identity_token_from_az_acr_login_is_exchanged_for_an_access_token(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`az acr login` stores a placeholder `auth` and an `identitytoken` (an OAuth2 refresh token): the check POSTs it
    to the realm (grant_type=refresh_token) instead of sending the placeholder as Basic credentials."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with registry_double(token="acc3ss", refresh_tokens={"r3fresh"}) as reg:
        image = resolve_images(f"{reg.host}/lab/intermix").cuda
        reg.has(image)
        folder = tmp_path / "acr"
        folder.mkdir()
        placeholder = base64.b64encode(b"00000000-0000-0000-0000-000000000000:").decode()
        (folder / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": placeholder,
                                                                             "identitytoken": "r3fresh"}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(folder))
        assert manifest_exists(image)
        posts = [p for m, p, _ in reg.requests if m == "POST"]
        assert posts == ["/token"] and reg.requests[-1][2]["authorization"] == "Bearer acc3ss"
        (folder / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": placeholder,
                                                                             "identitytoken": "expired"}}}))
        with pytest.raises(ImageCheckError, match="refused"):
            manifest_exists(image)


def test_anonymous_tokens_digests_and_docker_hub_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    digest = "sha256:" + "ab" * 32
    with registry_double(token="anon") as reg:  # a public image on ghcr.io: a token without credentials
        reg.has(f"intermix@{digest}")
        check_images([f"{reg.host}/intermix@{digest}"])
        assert ("HEAD", f"/v2/intermix/manifests/{digest}") in [(m, p) for m, p, _ in reg.requests]
        with pytest.raises(ImageCheckError, match="push it, then pin the digest"):
            check_images([f"{reg.host}/intermix@sha256:{'cd' * 32}"])
    assert split_reference("python:3.11") == ("registry-1.docker.io", "library/python", "3.11")
    assert split_reference("docker.io/org/img") == ("registry-1.docker.io", "org/img", "latest")
    assert split_reference("registry.example.org:5000/lab/intermix:t-cpu") == ("registry.example.org:5000", "lab/intermix", "t-cpu")
