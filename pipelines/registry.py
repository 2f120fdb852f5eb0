"""Check that container images exist in their registries before a pipeline names them.

A pod whose image was never pushed waits in ImagePullBackOff while its retry window runs out, so
`submit`, `rerun --host` and `compile --check-images` ask each image's registry first, the way
`docker manifest inspect` does: the OCI distribution API's `HEAD /v2/<name>/manifests/<reference>`
(200: there, 404: missing). A registry that answers 401 with a Bearer challenge (ghcr.io, Docker
Hub, most registries, also for public images) gets the token request the challenge names
(`realm?service=...&scope=repository:<name>:pull`), anonymously or with the credentials `docker
login` / `podman login` stored (DOCKER_CONFIG or ~/.docker/config.json, REGISTRY_AUTH_FILE or
$XDG_RUNTIME_DIR/containers/auth.json: an `auth` entry, an `identitytoken` entry (what `az acr login`
writes: an OAuth2 refresh token, exchanged with a POST to the realm, `grant_type=refresh_token`, as
the distribution spec's docs/spec/auth/oauth.md describe) or a `docker-credential-*` helper); a Basic
challenge gets those credentials directly. Loopback registries (localhost, 127.0.0.1) are spoken to
over plain HTTP, as Docker does; every other over HTTPS.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from components.image import build_command

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.docker.distribution.manifest.v2+json",
])
DOCKER_HUB = "registry-1.docker.io"
_LOOPBACK = {"localhost", "127.0.0.1", "[::1]"}
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class ImageCheckError(Exception):
    """An image is missing from its registry, or the registry cannot be asked; one line naming the image."""


def split_reference(image: str) -> tuple[str, str, str]:
    """(registry host, repository name, tag or digest) of an image reference, with Docker's defaults."""
    name, sep, digest = image.partition("@")
    if not sep:
        slash = name.rfind("/")
        colon = name.rfind(":")
        name, reference = (name[:colon], name[colon + 1:]) if colon > slash else (name, "latest")
    else:
        reference = digest
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = DOCKER_HUB, name if "/" in name else f"library/{name}"
    return (DOCKER_HUB if host == "docker.io" else host), path, reference


# the user name docker and its credential helpers give for an identity token (docker/cli: types.AuthConfig.IdentityToken)
IDENTITY_TOKEN_USER = "<token>"


def _auth_files() -> list[Path]:
    docker = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    files = [docker]
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if runtime:
        files.append(Path(runtime) / "containers" / "auth.json")
    return files


def credentials(host: str) -> tuple[str, str] | None:
    """(user, secret) that `docker login` / `podman login` stored for `host`; None if there are none."""
    keys = {host, f"https://{host}", f"http://{host}"}
    if host == DOCKER_HUB:
        keys |= {"docker.io", "index.docker.io", "https://index.docker.io/v1/"}
    for path in _auth_files():
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for key, entry in (config.get("auths") or {}).items():
            if key.rstrip("/") in keys or key in keys:
                if entry.get("identitytoken"):  # its `auth` is a placeholder user with no password
                    return IDENTITY_TOKEN_USER, entry["identitytoken"]
                if entry.get("auth"):
                    user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
                    return user, secret
                if entry.get("username"):
                    return entry["username"], entry.get("password", "")
        helper = (config.get("credHelpers") or {}).get(host) or config.get("credsStore")
        if helper:
            try:
                out = subprocess.run([f"docker-credential-{helper}", "get"], input=host, capture_output=True,
                                     text=True, timeout=30, check=True).stdout
                data = json.loads(out)
                return data["Username"], data["Secret"]
            except (OSError, subprocess.SubprocessError, ValueError, KeyError):
                continue
    return None


def _base(host: str) -> str:
    return f"{'http' if host.split(':')[0] in _LOOPBACK or host.startswith('[::1]') else 'https'}://{host}"


def _request(url: str, method: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers or {}), err.read()


def _token(challenge: str, name: str, creds: tuple[str, str] | None) -> str | None:
    params = dict(_CHALLENGE.findall(challenge))
    realm = params.pop("realm", None)
    if not realm:
        return None
    query = {"service": params.get("service", ""), "scope": params.get("scope") or f"repository:{name}:pull"}
    if creds and creds[0] == IDENTITY_TOKEN_USER:  # an OAuth2 refresh token: POST it for an access token
        form = {**{k: v for k, v in query.items() if v}, "grant_type": "refresh_token", "refresh_token": creds[1],
                "client_id": "intermix"}
        req = urllib.request.Request(realm, method="POST", data=urllib.parse.urlencode(form).encode(),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                data = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError:
            return None
        return data.get("access_token") or data.get("token")
    headers = {}
    if creds:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    status, _, body = _request(f"{realm}?{urllib.parse.urlencode({k: v for k, v in query.items() if v})}", "GET", headers)
    if status != 200:
        return None
    data = json.loads(body or b"{}")
    return data.get("token") or data.get("access_token")


def manifest_exists(image: str) -> bool:
    """True if the registry has a manifest for `image`, False if it answers 404; ImageCheckError otherwise."""
    host, name, reference = split_reference(image)
    url = f"{_base(host)}/v2/{name}/manifests/{reference}"
    headers = {"Accept": MANIFEST_TYPES}
    try:
        status, answer, _ = _request(url, "HEAD", headers)
        if status == 401:
            challenge = next((v for k, v in answer.items() if k.lower() == "www-authenticate"), "")
            creds = credentials(host)
            if challenge.lower().startswith("bearer"):
                token = _token(challenge, name, creds)
                if token:
                    headers["Authorization"] = f"Bearer {token}"
            elif challenge.lower().startswith("basic") and creds:
                headers["Authorization"] = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            if "Authorization" in headers:
                status, answer, _ = _request(url, "HEAD", headers)
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise ImageCheckError(f"image {image}: cannot reach its registry {host} ({reason}); "
                              "--skip-image-check submits without asking it") from None
    if status == 200:
        return True
    if status == 404:
        return False
    if status in (401, 403):
        raise ImageCheckError(f"image {image}: registry {host} refused to say whether it exists (HTTP {status}); "
                              f"log in with `docker login {host}` (or podman login), or --skip-image-check")
    raise ImageCheckError(f"image {image}: registry {host} answered HTTP {status} to HEAD /v2/{name}/manifests/"
                          f"{reference}; --skip-image-check submits without asking it")


def check_images(images: Iterable[str]) -> None:
    """ImageCheckError naming the first image its registry does not have, with the command that builds and pushes it."""
    for image in sorted(set(images)):
        if not manifest_exists(image):
            how = build_command(image) if "@" not in image else "push it, then pin the digest the registry reports"
            raise ImageCheckError(f"image {image} is not in its registry; build and push it from the repository "
                                  f"root: {how} (docs/cluster.md, section 2)")


def compiled_images(packages: Iterable[Path]) -> set[str]:
    """Every container image named by compiled KFP packages (IR YAML)."""
    found: set[str] = set()
    for path in packages:
        spec: Any = next(d for d in yaml.safe_load_all(Path(path).read_text()) if d)
        for executor in spec.get("deploymentSpec", {}).get("executors", {}).values():
            if "container" in executor:
                found.add(executor["container"]["image"])
    return found
