"""Talking to MLflow through outages: one HTTP attempt per call, retried with patience; the sqlite schema lock.

Every call to MLflow is one HTTP attempt (MLflow's own retries are switched off inside these calls)
and the caller retries: `PatientClient` for `patience` seconds, the fold tracker's epoch logging by
buffering (docs/tracking.md, "During an MLflow outage").
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import functools
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from intermix_core.common.redact import has_credentials, redact_uris
from intermix_core.common.text import cut
from intermix_core.tracking.tags import EXPERIMENT_KIND

PATIENCE_ENV = "INTERMIX_MLFLOW_PATIENCE"
DEFAULT_PATIENCE = 300.0  # seconds a call other than epoch logging keeps retrying before TrackingError
CALL_TIMEOUT = 30  # seconds one HTTP attempt may take (unless MLFLOW_HTTP_REQUEST_TIMEOUT says otherwise)
EPOCH_TIMEOUT = 10  # the same for a per-epoch attempt: training waits at most this long for MLflow
EPOCH_RETRY = (30.0, 300.0)  # during an outage, epoch logging tries again after 30 s, doubling up to 5 min
_TRANSIENT = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED",
              "SERVICE_UNDER_MAINTENANCE", "ABORTED"}
_env_lock = threading.RLock()
R = TypeVar("R")


class TrackingError(RuntimeError):
    """MLflow stayed unreachable (or kept failing) past the Tracker's patience; the message is one line."""


def transient(err: BaseException) -> bool:
    """True for failures that may pass: connection problems, timeouts, 5xx and 429 answers, a locked sqlite, a race."""
    if isinstance(err, MlflowException):
        return err.error_code in _TRANSIENT or insert_race(err)
    return isinstance(err, OSError) or type(err).__name__ == "OperationalError"


def insert_race(err: BaseException) -> bool:
    """Two writers set the same new tag at once (two folds of a cell finishing together update their parent): MLflow's
    SQL store reads, then inserts, so the second insert breaks the table's unique key; once retried, it updates."""
    text = str(err)
    return isinstance(err, MlflowException) and ("UNIQUE constraint failed" in text  # sqlite
                                                 or "duplicate key value violates unique constraint" in text)  # PostgreSQL


def server_clock_offset(tracking_uri: str, timeout: float = 5.0) -> float | None:
    """Seconds to add to this machine's clock to read the MLflow server's (its HTTP `Date` header); None if unknown.

    Heartbeats and staleness are kept on the server's clock, so a trainer or a reader whose own clock
    is off (20 min slow) is neither called killed nor waited for: each corrects by its own offset. A
    local store (sqlite, a folder) is this machine's clock: 0. The header has a 1 s resolution, so an
    offset within 2 s counts as none.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return 0.0
    import requests  # mlflow's own dependency

    try:
        before = time.time()
        answer = requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout)
        after = time.time()
        server = email.utils.parsedate_to_datetime(answer.headers["Date"]).timestamp() + 0.5  # truncated to the second
    except Exception:  # noqa: BLE001 - no answer, no header: unknown (the caller keeps what it had, or 0)
        return None
    offset = server - (before + after) / 2
    return offset if abs(offset) > 2.0 else 0.0


def reason(err: BaseException) -> str:
    """A few words on why a call failed, without URLs or object addresses."""
    text = str(err)
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Read timed out|timed out|Connection refused|Connection reset)",
                    r"(\d{3} Server Error[^:]*)", r"(database is locked)"):
        if m := re.search(pattern, text):
            return m.group(1).strip()
    return cut(redact_uris(" ".join(text.split())), 160)


@contextlib.contextmanager
def one_attempt(timeout: int) -> Iterator[None]:
    """Inside the block, MLflow's HTTP client makes a single attempt per request with `timeout` seconds."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or str(timeout)}
    with _env_lock:  # MLflow reads these per request; the lock keeps threads from seeing each other's values
        saved = {k: os.environ.get(k) for k in settings}
        os.environ.update(settings)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def warn(message: str) -> None:
    """Print `intermix: message` to stderr (how tracking tells the user about outages)."""
    print(f"intermix: {message}", file=sys.stderr, flush=True)


class PatientClient:
    """An MlflowClient whose every method retries transient failures for `patience` seconds, then raises TrackingError."""

    def __init__(self, client: MlflowClient, uri: str, patience: float) -> None:
        self._client, self._uri, self._patience = client, uri, patience

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        @functools.wraps(method)
        def patient(*args: Any, **kwargs: Any) -> Any:
            return self.call(method, *args, **kwargs)

        return patient

    def call(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """fn(*args, **kwargs), retried with growing pauses (1 s to 30 s) while it fails transiently."""
        deadline, pause, warned = time.monotonic() + self._patience, 1.0, False
        while True:
            try:
                with one_attempt(CALL_TIMEOUT):
                    out = fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - classified below
                if not transient(err):
                    raise
                left = deadline - time.monotonic()
                if insert_race(err) and left > 0:  # not an outage: again at once, without a warning
                    time.sleep(min(0.2, left))
                    continue
                if left <= 0:
                    raise TrackingError(f"MLflow at {redact_uris(self._uri)} did not answer for {self._patience:.0f} s "
                                        f"({reason(err)})") from None
                if not warned:
                    warn(f"warning: MLflow at {redact_uris(self._uri)} unreachable ({reason(err)}); "
                          f"retrying for up to {self._patience:.0f} s")
                    warned = True
                time.sleep(min(pause, left))
                pause = min(pause * 2, 30.0)
                continue
            if warned:
                warn(f"MLflow at {redact_uris(self._uri)} reachable again")
            return out


@contextlib.contextmanager
def schema_lock(tracking_uri: str) -> Iterator[None]:
    """For a sqlite:/// store, an exclusive lock on `<db>.lock` (MLflow creates and upgrades the schema unlocked)."""
    if not tracking_uri.startswith("sqlite:///") or ":memory:" in tracking_uri:
        yield
        return
    db = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


QUIET = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
QUIETED: list[bool] = []  # [True] once quiet_run_links silenced MLflow's links (the Tracker then prints its own)


def quiet_run_links(tracking_uri: str | None) -> None:
    """Stop MLflow printing "View run ... at <uri>" lines when the URI carries credentials (it prints them verbatim)."""
    if tracking_uri and has_credentials(tracking_uri) and not os.environ.get(QUIET):
        os.environ[QUIET] = "true"
        QUIETED[:] = [True]


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """MLflow 3's recommended local store, SQLite, at ./mlruns/mlflow.db (artifacts go beside it in ./mlruns)."""
    store = Path(cwd or Path.cwd()).absolute() / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


EXPERIMENT = "intermix"  # the MLflow experiment every run of the project goes to by default


def ensure_experiment(client: MlflowClient, name: str = EXPERIMENT, artifact_location: str | None = None) -> str:
    """The id of the active experiment `name`, created (with `artifact_location`, if given) when missing.

    Opening a fresh sqlite store creates its schema: callers other than a Tracker (which holds the
    schema lock) pass a client made under `schema_lock(uri)`.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location, tags=dict([EXPERIMENT_KIND]))
        except MlflowException:  # created concurrently by another fold
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise ValueError(f"MLflow experiment {name!r} is deleted at {redact_uris(client.tracking_uri)}; "
                         "restore it or use another")
    if exp.tags.get(EXPERIMENT_KIND[0]) is None:
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id
