"""TEST DOUBLE of the Kubeflow Pipelines REST API (v2beta1, plus v1beta1 healthz), for tests only.

No real KFP backend can run here, so this small http.server on 127.0.0.1 answers the calls
`kfp.Client` and `pipelines.submit` make: healthz, list/create/get experiments, list/create/get
runs. It schedules nothing: it records every request (method, path, query, headers, JSON body)
so tests can assert what a submission sent, and reports new runs as PENDING.

It can play the servers a submission meets (see `kfp_api_double(...)`):

* single-user or multi-user: multi-user answers `multi_user: true` and, like the real API server
  (backend/src/apiserver/server/experiment_server.go, run_server.go), rejects experiments and
  runs without a namespace with HTTP 400;
* a release tag (`tag_name`, what the API server reports from TAG_NAME, backend/src/apiserver/main.go),
  "unknown" (a build from source), or a KFP 1.x server without the v2 API (404; v1beta1 healthz only);
* behind a login (Istio + oauth2-proxy/Dex): requests without the expected bearer token or cookie
  get a 302 to a login page;
* a failure after N created runs (HTTP 500), to test partial submissions.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

from http_double import serving

API = "/apis/v2beta1"


@dataclass
class Recorded:
    """One request the double received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: Any


@dataclass
class KfpApiDouble:
    """State and behaviour of the double: experiments and runs created, requests received."""

    url: str = ""
    multi_user: bool = False
    tag_name: str | None = "2.17.0"  # None: the healthz answer has no tag_name
    v2: bool = True  # False: a KFP 1.x server
    auth: dict[str, str] | None = None  # required headers, e.g. {"cookie": "oauth2_proxy_kubeflow=abc"}
    fail_runs_after: int | None = None  # answer 500 to POST /runs after this many succeeded
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def created_runs(self) -> list[dict[str, Any]]:
        """Bodies of every POST /runs that created a run, in order."""
        return [r for r in self.runs.values()]

    def set_state(self, display_name: str, state: str) -> None:
        """Give every run of that name a state, as the backend would when it runs (e.g. FAILED)."""
        for run in self.runs.values():
            if run["display_name"] == display_name:
                run["state"] = state


def _handler(state: KfpApiDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _reply(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(payload, bytes) else "text/html")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            # the grpc-gateway error shape of the real server
            self._reply(status, {"error": message, "code": 3 if status == 400 else 13, "message": message})

        def _record(self) -> tuple[str, dict[str, list[str]], Any]:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            with state.lock:
                state.requests.append(Recorded(self.command, url.path, parse_qs(url.query),
                                               {k.lower(): v for k, v in self.headers.items()}, body))
            return url.path, parse_qs(url.query), body

        def _authorized(self) -> bool:
            for name, value in (state.auth or {}).items():
                if value not in (self.headers.get(name) or ""):
                    self._reply(302, b"<html><body>login</body></html>", {"Location": "/dex/auth?client_id=kubeflow"})
                    return False
            return True

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path, query, _ = self._record()
            if not self._authorized():
                return None
            if path in (f"{API}/healthz", "/apis/v1beta1/healthz"):
                if path.startswith(API) and not state.v2:
                    return self._reply(404, {"error": "Not Found"})
                answer: dict[str, Any] = {"commit_sha": "0" * 40, "multi_user": state.multi_user}
                if state.tag_name is not None:
                    answer["tag_name"] = state.tag_name if state.v2 else "1.8.5"
                return self._reply(200, answer)
            if not state.v2:
                return self._reply(404, {"error": "Not Found"})
            if path == f"{API}/experiments":
                namespace = (query.get("namespace") or [""])[0]
                if state.multi_user and not namespace:
                    return self._error(400, "Invalid input error: ListExperiments must filter by namespace in multi-user mode")
                wanted = None
                if "filter" in query:
                    preds = json.loads(query["filter"][0]).get("predicates", [])
                    wanted = next((p.get("string_value", p.get("stringValue")) for p in preds), None)
                found = [e for e in state.experiments.values()
                         if (wanted is None or e["display_name"] == wanted) and (not namespace or e.get("namespace") == namespace)]
                return self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
            if path.startswith(f"{API}/experiments/"):
                exp = state.experiments.get(path.rsplit("/", 1)[1])
                return self._reply(200, exp) if exp else self._error(404, "not found")
            if path == f"{API}/runs":
                return self._list_runs(query)
            if path.startswith(f"{API}/runs/"):
                run = state.runs.get(path.rsplit("/", 1)[1])
                return self._reply(200, run) if run else self._error(404, "not found")
            return self._reply(404, {"error": f"the test double does not implement GET {path}"})

        def _list_runs(self, query: dict[str, list[str]]) -> None:
            exp_id = (query.get("experiment_id") or [""])[0]
            namespace = (query.get("namespace") or [""])[0]
            if state.multi_user and not (exp_id or namespace):
                return self._error(400, "Invalid input error: Resource cannot have an empty namespace and experiment id in multi-user mode")
            runs = [r for r in state.runs.values() if not exp_id or r["experiment_id"] == exp_id]
            runs.sort(key=lambda r: r["created_at"], reverse=True)
            size = int((query.get("page_size") or ["10"])[0])
            start = int((query.get("page_token") or ["0"])[0] or 0)
            page = runs[start:start + size]
            token = str(start + size) if start + size < len(runs) else ""
            return self._reply(200, {"runs": page, "total_size": len(runs), "next_page_token": token} if page else {})

        def do_POST(self) -> None:  # noqa: N802
            path, _, body = self._record()
            if not self._authorized():
                return None
            if not state.v2:
                return self._reply(404, {"error": "Not Found"})
            if path == f"{API}/experiments":
                if state.multi_user and not body.get("namespace"):
                    return self._error(400, "Invalid input error: An experiment cannot have an empty namespace in multi-user mode")
                exp = {**body, "experiment_id": str(uuid.uuid4()), "storage_state": "AVAILABLE"}
                state.experiments[exp["experiment_id"]] = exp
                return self._reply(200, exp)
            if path == f"{API}/runs":
                exp = state.experiments.get(body.get("experiment_id", ""))
                if state.multi_user and not (exp and exp.get("namespace")):
                    return self._error(400, "Invalid input error: A run cannot have an empty namespace in multi-user mode")
                if state.fail_runs_after is not None and len(state.runs) >= state.fail_runs_after:
                    return self._error(500, "Internal error: Failed to create a run: the test double was told to fail")
                created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING", "storage_state": "AVAILABLE",
                       "created_at": created}
                state.runs[run["run_id"]] = run
                return self._reply(200, run)
            return self._reply(404, {"error": f"the test double does not implement POST {path}"})

    return Handler


@contextmanager
def kfp_api_double(**behaviour: Any) -> Iterator[KfpApiDouble]:
    """Serve the test double on a free 127.0.0.1 port for the duration of the block (behaviour: KfpApiDouble fields)."""
    state = KfpApiDouble(**behaviour)
    with serving(_handler(state)) as port:
        state.url = f"http://127.0.0.1:{port}"
        yield state
