"""The grid's summary run in MLflow: its tables as artifacts and metrics, one run per grid however many aggregate.

Up to 18 KFP runs of one grid aggregate concurrently: they converge on one summary run (the oldest
of any created in a race wins), and a report version never overwrites a newer one's tables.
"""

from __future__ import annotations

import csv
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from intermix_core.common.names import check_name, version_order
from intermix_core.tracking.client import ensure_experiment, quiet_run_links, schema_lock
from intermix_core.tracking.tags import GRID, KIND, SUMMARY_KIND, SUMMARY_REVISION, SUMMARY_VERSION

F = TypeVar("F", bound=Callable[..., Any])


def one_summary_run(client: Any, experiment_id: str, grid_id: str, settle_seconds: float = 0.3) -> Any:
    """The grid's single MLflow summary run: found, or created; of runs created in a race the oldest wins.

    A creator that finds an older summary run after creating its own deletes its own; finished
    duplicates left by an earlier race are deleted too (a running one may be in use by its creator).
    """
    query = f"tags.`{KIND}` = '{SUMMARY_KIND}' and tags.`{GRID}` = '{grid_id}'"
    order = ["attributes.start_time ASC", "attributes.run_id ASC"]

    def search() -> list[Any]:
        return client.search_runs([experiment_id], query, max_results=50, order_by=order)

    found = search()
    if not found:
        tags = {KIND: SUMMARY_KIND, GRID: grid_id, "mlflow.runName": f"summary-{grid_id}"}
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
        if version_order(client.get_run(run_id).data.tags.get(SUMMARY_VERSION, "")) > version_order(version):
            return  # a newer aggregation's tables are there: never go back
        client.set_tag(run_id, SUMMARY_VERSION, version)
        time.sleep(0.2)  # an older aggregation finishing at the same moment: look again
        if version_order(client.get_run(run_id).data.tags.get(SUMMARY_VERSION, "")) >= version_order(version):
            return
        client.log_artifacts(run_id, str(out_dir))  # an older one overwrote ours: put ours back


def retry_mlflow_races(fn: F) -> F:
    """Retry an MLflow update a few times: a racing aggregation can delete the run it picked or collide on a tag."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(4):
            try:
                return fn(*args, **kwargs)
            except MlflowException:
                if attempt == 3:
                    raise
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper  # type: ignore[return-value]


@retry_mlflow_races
def log_summary_to_mlflow(
    out_dir: str | Path, tracking_uri: str | None = None, experiment: str = "intermix", grid_id: str | None = None,
    version: str | None = None,
) -> str:
    """Log the report files in out_dir to the grid's one summary run (created once, updated in place); return its id.

    Concurrent aggregations of one grid converge on one run (intermix_core.publish.one_summary_run),
    and with `version` (intermix_core.store.reports.new_version, ordered by common.names.version_order)
    an older version never overwrites a newer one: it is skipped and the run id returned.
    """
    out = Path(out_dir)
    if not (out / "table1.csv").is_file():
        raise FileNotFoundError(f"{out}: no table1.csv; run write_reports first")
    grid_id = check_name(grid_id or out.resolve().name, "grid id")
    quiet_run_links(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))  # no password in "View run" lines
    with schema_lock(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""):
        client = MlflowClient(tracking_uri=tracking_uri)
        exp_id = ensure_experiment(client, experiment)
    run = one_summary_run(client, exp_id, grid_id)
    run_id = run.info.run_id
    if version is not None and version_order(run.data.tags.get(SUMMARY_VERSION, "")) > version_order(version):
        return run_id  # a newer aggregation already logged its tables here
    revision = int(run.data.tags.get(SUMMARY_REVISION, "-1")) + 1
    client.set_tag(run_id, SUMMARY_REVISION, str(revision))
    with (out / "table1.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    now = int(time.time() * 1000)
    metrics = []
    for r in rows:
        key = f"test_error/{r['dataset']}/{r['setup']}/{r['strategy']}"
        if r["mean"]:
            metrics.append(Metric(key, float(r["mean"]), now, revision))
        metrics.append(Metric(f"{key}/n_folds", float(r["n"]), now, revision))
    for i in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[i : i + 900])
    client.log_artifacts(run_id, str(out))
    if version is not None:  # the tables are in place before the run says which version they are
        mark_summary_version(client, run_id, version, out)
    client.set_terminated(run_id)
    return run_id
