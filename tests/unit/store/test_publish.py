"""Concurrent aggregations of one grid (up to 18 KFP runs finish at about the same time): one atomic,
versioned report publication where the newest wins, and one MLflow summary run per grid.
Real stores (a local folder and SeaweedFS S3), a real MLflow store, real threads."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import mlflow
import pytest

from intermix_core.results.statistics import aggregate
from intermix_core.results.tables import write_reports
from intermix_core.run.aggregate import publish_aggregation
from intermix_core.store.layout import LATEST
from intermix_core.store.reports import (
    KEEP_VERSIONS,
    fetch_latest_reports,
    latest_version,
    new_version,
    publish_reports,
)
from intermix_core.store.storage import open_storage
from intermix_core.tracking.summary import log_summary_to_mlflow

from fake_results import MIX, STD, grid

GID = "paper-0123456789"


def _report(folder: Path, marker: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table1.md").write_text(f"table of {marker}\n")
    (folder / "summary.json").write_text(json.dumps({"marker": marker}))
    return folder


def test_versions_sort_by_time():
    assert new_version(1000.0) < new_version(1000.5) < new_version(2000.0)
    assert new_version(1000.0) != new_version(1000.0)  # unique even at the same instant


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_newest_version_wins_whatever_order_they_finish(backend: str, tmp_path: Path, request, monkeypatch):
    if backend == "s3":
        for k, v in request.getfixturevalue("s3_server").env().items():
            monkeypatch.setenv(k, v)
        store = open_storage(f"s3://intermix-data/publish-{time.time_ns()}")
    else:
        store = open_storage(tmp_path / "store")
    older, newer = new_version(1000.0), new_version(2000.0)
    assert publish_reports(store, GID, _report(tmp_path / "b", "newer"), newer, settle_seconds=0)
    # the aggregation that started earlier finishes later: it must not replace the newer tables
    assert not publish_reports(store, GID, _report(tmp_path / "a", "older"), older, settle_seconds=0)
    assert latest_version(store, GID)["version"] == newer
    got = tmp_path / "got"
    assert fetch_latest_reports(store, GID, got) == newer
    assert (got / "table1.md").read_text() == "table of newer\n"
    mirror = tmp_path / "mirror"
    store.download_file(f"{GID}/reports/table1.md", mirror / "table1.md")  # the browsable copy: the newest too
    assert (mirror / "table1.md").read_text() == "table of newer\n"
    assert store.exists(f"{GID}/reports/versions/{older}")  # complete, just not the latest


def test_concurrent_publications_converge_on_the_newest(tmp_path: Path):
    store = open_storage(tmp_path / "store")
    versions = [new_version(1000.0 + i) for i in range(8)]
    threads = [threading.Thread(target=publish_reports, args=(store, GID, _report(tmp_path / v, v), v),
                                kwargs={"settle_seconds": 0.2}) for v in reversed(versions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert latest_version(store, GID)["version"] == versions[-1]
    pointer = json.loads(json.loads((tmp_path / "store" / GID / "reports" / LATEST).read_text())["text"])  # sealed
    assert (tmp_path / "store" / pointer["prefix"] / "table1.md").read_text() == f"table of {versions[-1]}\n"


def test_old_versions_are_pruned(tmp_path: Path):
    store = open_storage(tmp_path / "store")
    versions = [new_version(1000.0 + i) for i in range(KEEP_VERSIONS + 3)]
    for v in versions:
        publish_reports(store, GID, _report(tmp_path / v, v), v, settle_seconds=0)
    base = f"{GID}/reports/versions/"
    kept = sorted({k[len(base):].split("/")[0] for k in store.list(base.rstrip("/"))})
    assert kept == versions[-KEEP_VERSIONS:]


def test_concurrent_aggregations_leave_one_summary_run_with_the_newest_tables(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    """Six aggregations of one grid finish at once, in reverse order of their versions (what
    steps.aggregate_step does: publish to the store, then the newest updates MLflow)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    store = open_storage(tmp_path / "store")
    client = mlflow.MlflowClient(uri)
    client.create_experiment("intermix")  # as init_local / the first fold run would
    versions = [new_version(1000.0 + i) for i in range(6)]
    folders = {}
    for i, v in enumerate(versions):  # each aggregation saw one more result than the one before
        folders[v] = tmp_path / v
        write_reports(aggregate(grid({"standard": STD, "intermix": MIX[: 2 + min(i, 3)] + [None] * (3 - min(i, 3))})), folders[v])
    errors: list[BaseException] = []

    def finish(version: str) -> None:
        try:
            publish_aggregation(store, GID, folders[version], version, uri)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=finish, args=(v,)) for v in reversed(versions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert latest_version(store, GID)["version"] == versions[-1]
    exp = client.get_experiment_by_name("intermix").experiment_id
    runs = client.search_runs([exp], f"tags.`intermix.kind` = 'summary' and tags.`intermix.grid_id` = '{GID}'")
    assert len(runs) == 1
    assert runs[0].data.tags["intermix.summary_version"] == versions[-1]
    # an older aggregation arriving late changes neither the store's latest nor the run
    before = client.get_run(runs[0].info.run_id).data.tags["intermix.summary_revision"]
    assert not publish_aggregation(store, GID, folders[versions[0]], versions[0], uri)
    assert log_summary_to_mlflow(folders[versions[0]], tracking_uri=uri, grid_id=GID, version=versions[0]) == runs[0].info.run_id
    after = client.get_run(runs[0].info.run_id).data.tags
    assert after["intermix.summary_revision"] == before and after["intermix.summary_version"] == versions[-1]


def test_racing_creators_converge_on_one_summary_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Without the store in front (e.g. `intermix results --tracking-uri` in several shells at once). MLflow
    has no compare-and-swap: racers may briefly use two runs; the next update folds them into the oldest."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    out = tmp_path / "report"
    write_reports(aggregate(grid({"standard": STD, "intermix": MIX})), out)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("intermix")
    used: list[str] = []
    threads = [threading.Thread(target=lambda: used.append(log_summary_to_mlflow(out, tracking_uri=uri, grid_id=GID)))
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(used) == 5
    final = log_summary_to_mlflow(out, tracking_uri=uri, grid_id=GID)
    active = client.search_runs([exp], f"tags.`intermix.grid_id` = '{GID}'")
    assert [r.info.run_id for r in active] == [final] and final in used


def test_a_clock_days_ahead_does_not_pin_latest_and_a_foreign_latest_is_replaced(tmp_path: Path, capsys):
    """Versions are ordered by a sequence taken from LATEST before reading, not by the writer's clock: an
    aggregation on a machine 2 days ahead is overtaken by the next one. A LATEST.json copied from another grid (it
    blocked every later `results` of this grid) is named, ignored and replaced."""
    from intermix_core.store.reports import next_version

    store = open_storage(tmp_path / "store")
    ahead = new_version(time.time() + 2 * 86400, after=None)  # the first aggregation, on a machine 2 days ahead
    assert publish_reports(store, GID, _report(tmp_path / "ahead", "ahead"), ahead, settle_seconds=0)
    later = next_version(store, GID)  # the next aggregation, on a correct clock, after the first was published
    assert publish_reports(store, GID, _report(tmp_path / "later", "later"), later, settle_seconds=0)
    assert latest_version(store, GID)["version"] == later
    assert not publish_reports(store, GID, _report(tmp_path / "late", "late"), ahead, settle_seconds=0)  # a replay

    other = open_storage(tmp_path / "other")
    publish_reports(other, "grid-other", _report(tmp_path / "o", "other"), new_version(), settle_seconds=0)
    foreign = (tmp_path / "other" / "grid-other" / "reports" / "LATEST.json").read_bytes()
    (tmp_path / "store" / GID / "reports" / "LATEST.json").write_bytes(foreign)  # copied from another grid
    assert latest_version(store, GID)["version"] == later  # the newest complete version, not the foreign pointer
    assert "LATEST.json: sealed for 'grid-other/reports/LATEST.json'" in capsys.readouterr().err
    version = next_version(store, GID)
    assert publish_reports(store, GID, _report(tmp_path / "again", "again"), version, settle_seconds=0)
    assert latest_version(store, GID)["version"] == version


def test_an_old_signed_latest_put_back_does_not_hide_the_newest_version(tmp_path: Path, monkeypatch):
    """With INTERMIX_STORE_KEY, an older LATEST.json (signed, so valid) restored by someone without the key pinned the
    reports to an old version: the newest complete version (signed manifest) is read instead."""
    from intermix_core.store.reports import next_version
    from intermix_core.store.storage import SIGNING_KEY_ENV

    monkeypatch.setenv(SIGNING_KEY_ENV, "the-store-secret")
    store = open_storage(tmp_path / "store")
    first = next_version(store, GID)
    publish_reports(store, GID, _report(tmp_path / "1", "first"), first, settle_seconds=0)
    latest = tmp_path / "store" / GID / "reports" / "LATEST.json"
    old = latest.read_bytes()
    second = next_version(store, GID)
    publish_reports(store, GID, _report(tmp_path / "2", "second"), second, settle_seconds=0)
    latest.write_bytes(old)  # replayed
    assert latest_version(store, GID)["version"] == second
    assert fetch_latest_reports(store, GID, tmp_path / "got") == second
