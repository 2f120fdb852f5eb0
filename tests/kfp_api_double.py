"""TEST DOUBLE of the Kubeflow Pipelines v2beta1 REST API, for tests only.

No real KFP backend can run here, so this small http.server on 127.0.0.1 answers the calls
`kfp.Client` makes to submit a run from a pipeline spec: healthz, list/create/get experiments,
create/get runs. It schedules nothing: it records every request (method, path, query, headers,
JSON body) so tests can assert what a submission sent, and reports runs as PENDING.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

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
    """State of the double: experiments and runs created, requests received."""

    url: str = ""
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def created_runs(self) -> list[dict[str, Any]]:
        """Bodies of every POST /runs, in order."""
        return [r.body for r in self.requests if r.method == "POST" and r.path == f"{API}/runs"]


def _handler(state: KfpApiDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _reply(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> tuple[str, dict[str, list[str]], Any]:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            with state.lock:
                state.requests.append(Recorded(self.command, url.path, parse_qs(url.query), {k.lower(): v for k, v in self.headers.items()}, body))
            return url.path, parse_qs(url.query), body

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path, query, _ = self._record()
            if path == f"{API}/healthz":
                return self._reply(200, {"multi_user": False})
            if path == f"{API}/experiments":
                wanted = None
                if "filter" in query:
                    preds = json.loads(query["filter"][0]).get("predicates", [])
                    wanted = next((p.get("string_value", p.get("stringValue")) for p in preds), None)
                found = [e for e in state.experiments.values() if wanted is None or e["display_name"] == wanted]
                return self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
            if path.startswith(f"{API}/experiments/"):
                exp = state.experiments.get(path.rsplit("/", 1)[1])
                return self._reply(200, exp) if exp else self._reply(404, {"error": "not found"})
            if path.startswith(f"{API}/runs/"):
                run = state.runs.get(path.rsplit("/", 1)[1])
                return self._reply(200, run) if run else self._reply(404, {"error": "not found"})
            return self._reply(404, {"error": f"the test double does not implement GET {path}"})

        def do_POST(self) -> None:  # noqa: N802
            path, _, body = self._record()
            if path == f"{API}/experiments":
                exp = {**body, "experiment_id": str(uuid.uuid4()), "storage_state": "AVAILABLE"}
                state.experiments[exp["experiment_id"]] = exp
                return self._reply(200, exp)
            if path == f"{API}/runs":
                run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
                state.runs[run["run_id"]] = run
                return self._reply(200, run)
            return self._reply(404, {"error": f"the test double does not implement POST {path}"})

    return Handler


@contextmanager
def kfp_api_double() -> Iterator[KfpApiDouble]:
    """Serve the test double on a free 127.0.0.1 port for the duration of the block."""
    state = KfpApiDouble()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
