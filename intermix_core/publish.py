"""Publishing a grid's reports when several aggregations run at once (up to 18 KFP runs of one grid).

Each aggregation is one version, named by when it started reading the store (a later start has
seen at least as many results) plus a random suffix:

    <grid>/reports/versions/<version>/   one complete upload (Storage.upload_dir: manifest last)
    <grid>/reports/LATEST.json           {"version": ..., "prefix": ...}: the newest complete version
    <grid>/reports/*                     a copy of the newest version, for browsing; it may lag

A version is never rewritten, and LATEST only moves forward: a writer re-reads it after writing
and restores the newer version if an older aggregation overwrote it meanwhile (S3 has no
compare-and-swap; the re-check makes the newest version win). Readers go through LATEST.
Old versions beyond `keep` are removed by the winner.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

REPORTS = "reports"
VERSIONS = "versions"
LATEST = "LATEST.json"
KEEP_VERSIONS = 10
F = TypeVar("F", bound=Callable[..., Any])


def new_version(now: float | None = None) -> str:
    """A sortable, unique version name: UTC time to the microsecond, then 8 random hex digits."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
    return f"{stamp:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}"


def read_pointer(store: Any, key: str, attempts: int = 6) -> str | None:
    """The text of a small object that other writers may be replacing right now; None if absent.

    While a writer replaces it (marker removed, object written, marker written: storage.py) a reader
    can find it absent for a moment, or pair one writer's object with another's marker, which reads
    as damaged: both are read again, with short waits.
    """
    from intermix_core.storage import StorageError

    for attempt in range(attempts):
        last = attempt == attempts - 1
        try:
            if store.exists(key):
                with tempfile.TemporaryDirectory(prefix="intermix-ptr-") as tmp:
                    return store.download_file(key, Path(tmp) / "pointer").read_text()
            if attempt >= 2:  # absent three times in a row: it is not being rewritten, it is not there
                return None
        except StorageError:
            if last:
                raise
        time.sleep(0.05 * 2**attempt)
    return None


def write_pointer(store: Any, key: str, text: str) -> None:
    """Write a small object (object first, checksum marker last)."""
    with tempfile.TemporaryDirectory(prefix="intermix-ptr-") as tmp:
        path = Path(tmp) / "pointer"
        path.write_text(text)
        store.upload_file(path, key)


def latest_version(store: Any, grid_id: str) -> dict[str, Any] | None:
    """The LATEST pointer of a grid's reports ({"version", "prefix", ...}), or None if nothing was published."""
    text = read_pointer(store, f"{grid_id}/{REPORTS}/{LATEST}")
    return json.loads(text) if text else None


def _point(store: Any, grid_id: str, pointer: dict[str, Any]) -> None:
    write_pointer(store, f"{grid_id}/{REPORTS}/{LATEST}", json.dumps(pointer, indent=1, sort_keys=True))


def publish_reports(store: Any, grid_id: str, out_dir: str | Path, version: str, *, keep: int = KEEP_VERSIONS,
                    rechecks: int = 3, settle_seconds: float = 0.5) -> bool:
    """Upload out_dir as one version and move LATEST to it unless a newer one is there; True if it is the latest."""
    prefix = f"{grid_id}/{REPORTS}/{VERSIONS}/{version}"
    store.upload_dir(out_dir, prefix)
    mine = {"version": version, "prefix": prefix, "published": time.time()}
    for _ in range(rechecks):
        current = latest_version(store, grid_id)
        if current is not None and current["version"] > version:
            return False
        if current is None or current["version"] != version:
            _point(store, grid_id, mine)
        time.sleep(settle_seconds)  # let a concurrent writer's pointer land, then look again
        current = latest_version(store, grid_id)
        if current is not None and current["version"] == version:
            break
    else:
        return False
    store.upload_dir(out_dir, f"{grid_id}/{REPORTS}")  # the browsable copy, written by the newest only
    _prune(store, grid_id, keep, version)
    return True


def _prune(store: Any, grid_id: str, keep: int, latest: str) -> None:
    base = f"{grid_id}/{REPORTS}/{VERSIONS}"
    names = sorted({k[len(base) + 1:].split("/", 1)[0] for k in store.list(base)})
    for name in names[:-keep] if keep > 0 else []:
        if name != latest:
            store.delete(f"{base}/{name}")


def publish_aggregation(store: Any, grid_id: str, out_dir: str | Path, version: str,
                        tracking_uri: str | None = None) -> bool:
    """Publish one aggregation's reports; only if it is the newest, update the grid's MLflow summary run. True if newest."""
    newest = publish_reports(store, grid_id, out_dir, version)
    if newest and tracking_uri:
        from intermix_core.tracking import log_summary_to_mlflow

        log_summary_to_mlflow(out_dir, tracking_uri=tracking_uri, grid_id=grid_id, version=version)
    return newest


def fetch_latest_reports(store: Any, grid_id: str, dest: str | Path) -> str | None:
    """Download the newest complete version of a grid's reports into dest; return its version (None if none)."""
    pointer = latest_version(store, grid_id)
    if pointer is None:
        return None
    store.download_dir(pointer["prefix"], dest)
    return str(pointer["version"])


def one_summary_run(client: Any, experiment_id: str, grid_id: str, settle_seconds: float = 0.3) -> Any:
    """The grid's single MLflow summary run: found, or created; of runs created in a race the oldest wins.

    A creator that finds an older summary run after creating its own deletes its own; finished
    duplicates left by an earlier race are deleted too (a running one may be in use by its creator).
    """
    query = f"tags.`intermix.kind` = 'summary' and tags.`intermix.grid_id` = '{grid_id}'"
    order = ["attributes.start_time ASC", "attributes.run_id ASC"]

    def search() -> list[Any]:
        return client.search_runs([experiment_id], query, max_results=50, order_by=order)

    found = search()
    if not found:
        tags = {"intermix.kind": "summary", "intermix.grid_id": grid_id, "mlflow.runName": f"summary-{grid_id}"}
        mine = client.create_run(experiment_id, tags=tags).info.run_id
        time.sleep(settle_seconds)  # let racing creators' runs land before choosing
        found = search()
        if found and found[0].info.run_id != mine:
            client.delete_run(mine)
    for duplicate in found[1:]:
        if duplicate.info.status == "FINISHED":
            client.delete_run(duplicate.info.run_id)
    return found[0]


def mark_summary_version(client: Any, run_id: str, version: str, out_dir: str | Path) -> None:
    """Tag the summary run with the version its tables are; if an older aggregation overwrote them meanwhile, put ours back."""
    for _ in range(3):
        if client.get_run(run_id).data.tags.get("intermix.summary_version", "") > version:
            return  # a newer aggregation's tables are there: never go back
        client.set_tag(run_id, "intermix.summary_version", version)
        time.sleep(0.2)  # an older aggregation finishing at the same moment: look again
        if client.get_run(run_id).data.tags.get("intermix.summary_version", "") >= version:
            return
        client.log_artifacts(run_id, str(out_dir))  # an older one overwrote ours: put ours back


def retry_mlflow_races(fn: F) -> F:
    """Retry an MLflow update a few times: a racing aggregation can delete the run it picked or collide on a tag."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException

        for attempt in range(4):
            try:
                return fn(*args, **kwargs)
            except MlflowException:
                if attempt == 3:
                    raise
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper  # type: ignore[return-value]
