"""Aggregation of a grid: its fold results (files, folders and the grid's store) into the paper's tables.

With a store, each aggregation is published as one report version (`intermix_core.store.reports`:
concurrent aggregations, the newest wins), and only the newest goes on to update the grid's MLflow
summary run (`intermix_core.tracking.summary`).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from intermix_core.common.names import check_name
from intermix_core.config.grid import expand, grid_id, parse_grid
from intermix_core.records import FoldResult, fold_label
from intermix_core.results.statistics import MissingFold, Summary, aggregate, collect_results
from intermix_core.results.tables import install_reports, write_reports
from intermix_core.run.status import rerun_command
from intermix_core.store.grid_store import fetch_grid_results, save_grid_spec
from intermix_core.store.reports import next_version, publish_reports
from intermix_core.store.storage import Storage, open_storage
from intermix_core.tracking.summary import log_summary_to_mlflow
from intermix_core.tracking.tracker import Tracker


def publish_aggregation(store: Storage, grid_id: str, out_dir: str | Path, version: str,
                        tracking_uri: str | None = None) -> bool:
    """Publish one aggregation's reports; only if it is the newest, update the grid's MLflow summary run. True if newest."""
    newest = publish_reports(store, grid_id, out_dir, version)
    if newest and tracking_uri:
        log_summary_to_mlflow(out_dir, tracking_uri=tracking_uri, grid_id=grid_id, version=version)
    return newest


def aggregate_step(
    results: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    expected: Sequence[Sequence[Any]] | None = None,
    tracking_uri: str | None = None,
    grid_id: str = "local",
    store_root: str | None = None,
) -> Summary:
    """Aggregate fold results (files/dirs, plus the grid's store when store_root is set) into reports in out_dir.

    `expected` lists the grid's cells as [dataset, setup, strategy, fold]; cells without any result
    are reported as missing. With store_root, the reports are also published as one version under
    `<root>/<grid_id>/reports/` (`intermix_core.store.reports`: concurrent aggregations, the newest wins).
    """
    check_name(grid_id, "grid id")
    items = [results] if isinstance(results, (str, Path)) else list(results)
    where = ", ".join(str(p) for p in items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
    version, refused = None, []
    if store_root:
        # taken before reading: a later version has seen at least these results (ordered by a sequence, not a clock)
        version = next_version(open_storage(store_root), grid_id)
        where = open_storage(store_root).uri(grid_id)
    with tempfile.TemporaryDirectory(prefix="intermix-results-") as tmp:
        if store_root:
            items.append(Path(tmp))
            refused = fetch_grid_results(store_root, grid_id, tmp)[1]
        found = collect_results(items) if items else []
    for line in refused:
        print(f"intermix: warning: {line}", file=sys.stderr)
    if not found:  # nothing to say: no empty tables, no report version, no MLflow summary run
        raise NoResults(f"{where or 'no paths given'}: no fold results there; nothing aggregated and nothing written "
                        "(run or submit the grid first, or point at its store)")
    _refuse_mixed_data(found, where)
    keys = [(str(d), str(s), str(st), int(f)) for d, s, st, f in (expected or [])]
    folds: dict[str, list[int]] = {}
    for d, _, _, f in keys:
        folds.setdefault(d, []).append(f)
    summary = aggregate(found, {d: sorted(set(f)) for d, f in folds.items()} or None)
    have = {(r.dataset, r.setup, r.strategy) for r in found}
    absent = [MissingFold(dataset=d, setup=s, strategy=st, fold=f, reason="missing") for d, s, st, f in keys if (d, s, st) not in have]
    summary = summary.model_copy(update={"missing": summary.missing + absent, "notes": summary.notes + refused})
    if tracking_uri and summary.missing:
        summary = _with_tracking_states(summary, tracking_uri, grid_id)
    # every aggregation writes into a staging folder of its own: what it publishes (store, MLflow) and then moves
    # into out_dir file by file is complete, whatever other aggregations of the grid do at the same moment
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        write_reports(summary, staging, found, title=grid_id, rerun_command=lambda m: rerun_command(
            grid_id, m.dataset, m.setup, m.strategy, m.fold, store_root))
        if store_root:
            # one atomic version; the newest wins, and only it goes on to update the MLflow summary run
            publish_aggregation(open_storage(store_root), grid_id, staging, version, tracking_uri)
        elif tracking_uri:
            log_summary_to_mlflow(staging, tracking_uri=tracking_uri, grid_id=grid_id)
        install_reports(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _with_tracking_states(summary: Summary, tracking_uri: str, grid_id: str) -> Summary:
    """Missing folds annotated with what MLflow says of them (running, or killed: RUNNING without a heartbeat); the
    parents of cells with a killed fold are brought up to date (KILLED), since nothing else could end them."""
    try:
        tracker = Tracker(tracking_uri)
        states = {(s.dataset, s.setup, s.strategy, s.fold): s for s in tracker.fold_states(grid_id)}
        missing = [m.model_copy(update={"state": states[key].describe()}) if (key := (m.dataset, m.setup, m.strategy,
                   m.fold)) in states and states[key].status != "FINISHED" else m for m in summary.missing]
        for cell in sorted({k[:3] for k, s in states.items() if s.stale}):
            tracker.update_parent(grid_id, *cell)
        tracker.close()
    except Exception as err:  # noqa: BLE001 - tracking only adds words to the tables; it must not stop them
        print(f"intermix: warning: the states of the folds in MLflow could not be read ({type(err).__name__}: "
              f"{str(err).splitlines()[0] if str(err) else ''})", file=sys.stderr)
        return summary
    return summary.model_copy(update={"missing": missing})


def _refuse_mixed_data(found: Sequence[FoldResult], where: str) -> None:
    """Stop (one line) if a dataset's results were trained on different prepared data: one table never mixes two."""
    latest = {r.key: r for r in found}  # collect_results reads oldest first: the newest result of a fold wins
    by_data: dict[str, dict[str, list[str]]] = {}
    for r in latest.values():
        if r.data_fingerprint is not None:
            by_data.setdefault(r.dataset, {}).setdefault(r.data_fingerprint, []).append(r.label)
    for dataset, groups in sorted(by_data.items()):
        if len(groups) > 1:
            parts = "; ".join(f"{fp}: {len(labels)} fold(s), e.g. {sorted(labels)[0]}"
                              for fp, labels in sorted(groups.items(), key=lambda g: -len(g[1])))
            raise MixedData(f"{where}: the {dataset} results were trained on {len(groups)} different preparations of "
                            f"the data ({parts}); nothing aggregated: train them all on one (rerun the others with "
                            "--from-scratch, or use another grid id for the other data)")


class MixedData(ValueError):
    """A dataset's fold results come from different prepared data: aggregating them would mix two experiments."""


class NoResults(ValueError):
    """An aggregation found no fold result at all: it writes and publishes nothing (the message says where it looked)."""


def grid_aggregate_step(
    grid_json: str, out_dir: str | Path, store_root: str, tracking_uri: str | None = None
) -> tuple[str, Summary]:
    """Aggregate a whole grid from its store (expected cells from the spec); also saves the spec there. Returns (grid id, Summary)."""
    spec = json.loads(grid_json)
    grid = parse_grid(spec, source="grid_json")
    gid = grid_id(grid)
    save_grid_spec(store_root, gid, spec)
    expected = [c.key for c in expand(grid)]
    return gid, aggregate_step([], out_dir, expected, tracking_uri, gid, store_root)


def describe_absent(summary: Summary, limit: int = 6) -> str:
    """One line on folds without a result ('' if none): how many, and the first few by name."""
    if not summary.missing:
        return ""
    names = [f"{fold_label(m.dataset, m.setup, m.strategy, m.fold)} ({m.state or m.reason})" for m in summary.missing]
    more = f", and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} fold(s) without a result: {', '.join(names[:limit])}{more}"
