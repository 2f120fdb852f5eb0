"""TEST DOUBLE of a container registry's OCI distribution API, for tests only.

No real registry can run or be reached here, so this http.server on 127.0.0.1 answers the one call
`pipelines.registry` makes: `HEAD /v2/<name>/manifests/<reference>` (200 with a Docker-Content-Digest
when the image is in `images`, 404 with the spec's MANIFEST_UNKNOWN otherwise), and, when `token`
is set, plays a registry that wants a bearer token (ghcr.io, Docker Hub): 401 with
`WWW-Authenticate: Bearer realm=".../token",service="...",scope="repository:<name>:pull"` on the
manifest, a token from `GET /token` (with Basic credentials if `users` is set), the manifest with
`Authorization: Bearer <token>`. Every request is recorded for the tests to assert on.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from http_double import serving


@dataclass
class RegistryDouble:
    """State of the double: which images it has, what auth it wants, what it was asked."""

    host: str = ""  # 127.0.0.1:<port>: prefix image names with it
    images: set[str] = field(default_factory=set)  # "<name>:<tag>" or "<name>@sha256:..."
    every_image: bool = False  # answer 200 for any manifest (a registry holding whatever is asked)
    token: str | None = None  # require this bearer token (from GET /token)
    users: dict[str, str] | None = None  # Basic credentials the token endpoint requires
    refresh_tokens: set[str] = field(default_factory=set)  # OAuth2 refresh tokens POST /token accepts (az acr login)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # (method, path, headers)

    def has(self, reference: str) -> None:
        """Hold an image: 'intermix:0.1.0-abc-cpu' (name:tag, name@digest) or a full reference with this host."""
        self.images.add(reference.removeprefix(f"{self.host}/"))


def _handler(state: RegistryDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _record(self) -> None:
            state.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._record()
            url = urlparse(self.path)
            if url.path == "/token" and state.token:
                if state.users:
                    given = self.headers.get("Authorization", "")
                    user, _, secret = base64.b64decode(given.removeprefix("Basic ") or b"").decode().partition(":")
                    if state.users.get(user) != secret or not user:
                        return self._reply(401, {"Content-Type": "application/json"},
                                           json.dumps({"errors": [{"code": "UNAUTHORIZED"}]}).encode())
                scope = parse_qs(url.query).get("scope", [""])[0]
                body = json.dumps({"token": state.token, "scope": scope}).encode()
                return self._reply(200, {"Content-Type": "application/json"}, body)
            return self._manifest()

        def do_POST(self) -> None:  # noqa: N802 - the OAuth2 token exchange (distribution docs/spec/auth/oauth.md)
            self._record()
            form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
            ok = (urlparse(self.path).path == "/token" and state.token
                  and form.get("grant_type") == ["refresh_token"] and form.get("refresh_token", [""])[0] in state.refresh_tokens)
            if not ok:
                return self._reply(401, {"Content-Type": "application/json"},
                                   json.dumps({"errors": [{"code": "UNAUTHORIZED"}]}).encode())
            body = json.dumps({"access_token": state.token, "scope": form.get("scope", [""])[0]}).encode()
            return self._reply(200, {"Content-Type": "application/json"}, body)

        def do_HEAD(self) -> None:  # noqa: N802
            self._record()
            return self._manifest()

        def _manifest(self) -> None:
            path = urlparse(self.path).path
            if not path.startswith("/v2/") or "/manifests/" not in path:
                return self._reply(404, {})
            name, _, reference = path[len("/v2/"):].partition("/manifests/")
            if state.token and self.headers.get("Authorization") != f"Bearer {state.token}":
                realm = f"http://{state.host}/token"
                challenge = f'Bearer realm="{realm}",service="{state.host}",scope="repository:{name}:pull"'
                return self._reply(401, {"WWW-Authenticate": challenge, "Content-Type": "application/json"},
                                   json.dumps({"errors": [{"code": "UNAUTHORIZED"}]}).encode())
            key = f"{name}@{reference}" if reference.startswith("sha256:") else f"{name}:{reference}"
            if state.every_image or key in state.images:
                digest = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
                return self._reply(200, {"Docker-Content-Digest": digest,
                                         "Content-Type": "application/vnd.oci.image.index.v1+json"})
            body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}).encode()
            return self._reply(404, {"Content-Type": "application/json"}, body)

    return Handler


@contextmanager
def registry_double(**behaviour: Any) -> Iterator[RegistryDouble]:
    """Serve the double on a free 127.0.0.1 port for the duration of the block (behaviour: RegistryDouble fields)."""
    state = RegistryDouble(**behaviour)
    with serving(_handler(state)) as port:
        state.host = f"127.0.0.1:{port}"
        yield state
