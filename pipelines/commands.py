"""The `intermix` subcommands: each parses its arguments into typed settings and calls intermix_core.run.steps or pipelines.

Errors a user can fix raise UsageError, ConfigError, DataError, StorageError or FileNotFoundError;
`pipelines.cli.main` prints them as one line per problem and exits with status 2.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from components.image import ImageError
from intermix_core.common.names import check_pipeline_value
from intermix_core.common.redact import redact_uris
from intermix_core.common.text import cut
from intermix_core.common.yamlfile import dump_yaml, load_yaml
from intermix_core.config import DATASETS, ConfigError, ExperimentConfig, parse_config
from intermix_core.config.grid import (
    FoldCell,
    GridSpec,
    expand,
    find_cell,
    grid_id,
    load_grid,
    packaged_grids,
    parse_grid,
    setup_of_model,
    shards,
)
from intermix_core.records import CHECKPOINT, RESULT, FoldResult, load_result
from intermix_core.results.statistics import Summary
from intermix_core.results.tables import REPORT_HTML, format_terminal
from intermix_core.run.aggregate import aggregate_step, describe_absent
from intermix_core.run.status import format_status, grid_status, kfp_run_states
from intermix_core.run.steps import attack_checkpoint_step, attack_step, train_pack_step, train_step
from intermix_core.store.grid_store import load_grid_spec
from intermix_core.store.reports import fetch_latest_report_file
from intermix_core.store.storage import open_storage
from intermix_core.tracking.client import TrackingError
from intermix_core.tracking.tracker import FoldSuperseded
from pipelines.grid_pipeline import compile_grid
from pipelines.local import LocalRun, Workdir, rerun_fold_local, run_grid_local
from pipelines.local_commands import (
    GRID_ID,
    UsageError,
    apply_sets,
    grid_name,
    pairs,
    with_on_silent,
)
from pipelines.options import ClusterOptions, Toleration, load_cluster_options
from pipelines.registry import ImageCheckError, check_images, compiled_images
from pipelines.submit import (
    KfpEndpoint,
    KfpServerError,
    PartialSubmitError,
    ServerInfo,
    existing_runs,
    kfp_client,
    submit_grid,
    submit_rerun,
)

# beside local_commands' USER_ERRORS (exit 2) and SIGNALLED (exit 128 + the signal), one line and exit 1: MLflow
# stayed unreachable, or another attempt at the fold took it over
SERVICE_ERRORS = (TrackingError, FoldSuperseded)


def _sources(args: argparse.Namespace) -> dict[str, str]:
    sources = pairs(args.source, "--source")
    for d, value in sources.items():
        if d not in DATASETS:
            raise UsageError(f"--source {d}=...: unknown dataset {d!r}; expected one of: {', '.join(DATASETS)}")
        check_pipeline_value(value, f"--source {d}")  # it becomes a pipeline parameter
    return sources


def _load_grid(args: argparse.Namespace, store: str | None = None) -> GridSpec:
    """The grid named on the command line: a file, a packaged grid, or (with a store) the id of a grid saved there."""
    name = grid_name(args)
    if store and GRID_ID.match(name) and not Path(name).is_file() and name not in packaged_grids():
        grid = parse_grid(load_grid_spec(store, name), source=f"{store}/{name}/grid.json")
    else:
        grid = load_grid(name, name=getattr(args, "name", None))
    return with_on_silent(grid, args)


def _workdir(args: argparse.Namespace) -> Workdir:
    """The local work directory, with --store and --tracking-uri (else MLFLOW_TRACKING_URI) when given."""
    tracking = getattr(args, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI") or None
    return Workdir(Path(args.workdir), store_uri=getattr(args, "store", None) or None, tracking=tracking)


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """ExperimentConfig from --config plus --dataset/--model/--strategy/--setup/--seed and --set KEY=VALUE."""
    data = load_yaml(args.config) if args.config else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{args.config}: expected a mapping of settings")
    for key in ("dataset", "model", "strategy", "setup", "seed"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    apply_sets(data, args.set)
    return parse_config(data, source=args.config or "command line")


def _check_fold(dataset: str, fold: int) -> None:
    n = DATASETS[dataset]["num_folds"]
    if not 1 <= fold <= n:
        raise UsageError(f"--fold {fold}: not a fold of {dataset}; expected one of: {', '.join(map(str, range(1, n + 1)))}")


def config_yaml(cfg: ExperimentConfig, label: str | None = None) -> str:
    """A configuration with every reference default resolved, as YAML (headed by a comment naming the cell)."""
    head = f"# {label}\n" if label else ""
    return head + dump_yaml(cfg.resolved().model_dump(mode="json"))


def cmd_train(args: argparse.Namespace) -> int:
    """Train one fold (or, with --print-config, print its resolved configuration)."""
    cfg = build_config(args)
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    missing = [flag for flag, v in (("--data", args.data), ("--fold", args.fold), ("--out", args.out)) if v is None]
    if missing:
        raise UsageError(f"train: give {', '.join(missing)} (or --print-config to only print the configuration)")
    for fold in args.fold:
        _check_fold(cfg.dataset, fold)
    if len(set(args.fold)) != len(args.fold):
        raise UsageError(f"--fold {' '.join(map(str, args.fold))}: a fold is named twice")
    if len(args.fold) == 1:
        result = train_step(
            cfg.model_dump_json(), args.data, args.fold[0], args.out, args.grid_id, args.tracking_uri, args.store,
            restart=args.from_scratch, progress=True, device=args.device,
        )
        print(f"{result.label}: test error {result.test_error:.2f}% -> {args.out}")
        return 0
    outcomes = train_pack_step(
        cfg.model_dump_json(), args.data, args.fold, args.out, args.grid_id, args.tracking_uri, args.store,
        restart=args.from_scratch, progress=True, device=args.device,
    )
    code = 0  # a fold that failed alone: 2 for what the user can fix (a diverged loss), as `--fold N` exits, else 1
    for fold, outcome in outcomes.items():
        if isinstance(outcome, FoldResult):
            print(f"{outcome.label}: test error {outcome.test_error:.2f}% -> {Path(args.out) / f'fold{fold}'}")
        else:
            code = max(code, 2 if isinstance(outcome, ValueError) else 1)
            print(f"intermix: error: {outcome}", file=sys.stderr)
    return code


def cmd_attack(args: argparse.Namespace) -> int:
    """FGSM on one trained fold."""
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
        if not checkpoint.is_file():
            raise UsageError(f"--checkpoint {checkpoint}: no such file")
        if not (checkpoint.parent / RESULT).is_file() or checkpoint.name != CHECKPOINT:
            fgsm, fgsm_crop = attack_checkpoint_step(checkpoint, args.data, args.fold, device=args.device)
            print(f"{checkpoint}: {_fgsm_text(fgsm, fgsm_crop)}")
            return 0
        args.trained = str(checkpoint.parent)
    trained = Path(args.trained)
    if not (trained / RESULT).is_file():
        raise UsageError(f"--trained {trained}: no {RESULT} there (expected a folder written by `intermix train`)")
    fold = args.fold or load_result(trained / RESULT).fold
    r = attack_step(trained, args.data, fold, args.out or trained, args.grid_id, args.tracking_uri, args.store,
                    device=args.device)
    print(f"{r.label}: {_fgsm_text(r.fgsm, r.fgsm_crop)}")
    return 0


def _fgsm_text(fgsm: dict[str, float], fgsm_crop: dict[str, float]) -> str:
    """'FGSM error (10-crop clip / single crop): eps=0: 10.00% / 14.50%, ...'."""
    return "FGSM error (10-crop clip / single crop): " + ", ".join(
        f"eps={e}: {v:.2f}% / {fgsm_crop.get(e, float('nan')):.2f}%" for e, v in fgsm.items()
    )


def _result_items(args: argparse.Namespace) -> list[str]:
    """Split `results` positionals: result files and folders are paths; one other word is the grid (GRID)."""
    paths, grids = [], []
    for item in args.items:
        p = Path(item)
        (paths if p.is_dir() or p.suffix == ".json" else grids).append(item)  # a missing .json: "no such result file"
    if len(grids) > 1:
        raise UsageError(f"results: {', '.join(grids)}: one grid at a time (a grid file, a packaged grid or a grid id), "
                         "or result files and folders that exist")
    if grids and paths:
        raise UsageError(f"results: give a grid ({grids[0]}) or result paths ({paths[0]}), not both")
    if grids:
        args.grid_pos = grids[0]
    return paths


def cmd_results(args: argparse.Namespace) -> int:
    """Aggregate and print a grid's tables (or those of result files given as paths); report.html is the file to open."""
    paths = _result_items(args)
    if paths:
        out = Path(args.out or "intermix-reports")
        summary = aggregate_step(paths, out, tracking_uri=args.tracking_uri)
    else:
        store = _workdir(args).store
        grid = _load_grid(args, store)
        gid = grid_id(grid)
        out = Path(args.out or Path(args.workdir) / "reports" / gid)
        expected = [c.key for c in expand(grid)]
        summary = aggregate_step([], out, expected, args.tracking_uri, gid, store_root=store)
        print(f"grid {gid}")
    print(format_terminal(summary))
    if describe_absent(summary):
        print(describe_absent(summary))
    print(f"report: {(out / REPORT_HTML).resolve()}")
    return 0


def _print_summary(store: str, gid: str) -> None:
    """Print the grid's newest published tables from the store (nothing if it has none yet)."""
    storage = open_storage(store)
    with tempfile.TemporaryDirectory() as tmp:
        found = fetch_latest_report_file(storage, gid, "summary.json", tmp)
        if found is None:
            return
        prefix, path = found
        summary = Summary.model_validate_json(path.read_text())
    print(format_terminal(summary))
    if describe_absent(summary):
        print(describe_absent(summary))
    report = storage.uri(f"{prefix}/{REPORT_HTML}")
    if "://" in report:
        print(f"report: {report} (a local copy: intermix results {gid} --store {store})")
    else:
        print(f"report: {report}")


def cmd_run(args: argparse.Namespace) -> int:
    """Run a grid locally with KFP's local runner."""
    grid = _load_grid(args)
    sources = _sources(args)
    _require_sources(grid, sources)
    work = _workdir(args)
    gid = grid_id(grid)
    print(f"grid {gid}: {len(expand(grid))} fold trainings, work directory {work.root.resolve()}", file=sys.stderr)
    report = run_grid_local(grid, work, sources, tracking=not args.no_tracking, progress=not args.no_progress,
                            verbose=args.verbose)
    _print_summary(work.store, gid)
    return _report(report, work, not args.no_tracking)


def _report(report: LocalRun, work: Workdir, tracking: bool) -> int:
    for label, error in report.outcomes.items():
        if error:
            print(f"intermix: {label} failed: {error}", file=sys.stderr)
    if not report.ok:
        print(f"task logs: {', '.join(str(p) for p in report.logs)}", file=sys.stderr)
        print("fix the cause, then rerun the same command (finished folds come from the cache) "
              "or `intermix rerun` for one fold", file=sys.stderr)
        return 1
    if tracking:
        if work.local_tracking:
            print(f"MLflow: mlflow ui --backend-store-uri {work.tracking_uri}", file=sys.stderr)
        else:
            print(f"MLflow: runs logged to {redact_uris(work.tracking_uri)}", file=sys.stderr)
    return 0


def _require_sources(grid: GridSpec, sources: dict[str, str]) -> None:
    missing = [d for d in grid.datasets if not ({**grid.sources, **sources}.get(d))]
    if missing:
        raise UsageError(f"no data source for {', '.join(missing)}: add sources: to the grid or --source {missing[0]}=FOLDER|s3://...|demo")


def cluster_options(args: argparse.Namespace) -> ClusterOptions:
    """ClusterOptions: --cluster-options FILE (e.g. the Helm chart's), then the flags given on top of it."""
    base = load_cluster_options(args.cluster_options) if args.cluster_options else ClusterOptions()
    secret_env = {}
    for item in args.secret_env or []:
        name, colon, keys = item.partition(":")
        if not colon or not name or not keys:
            raise UsageError(f"--secret-env {item!r}: expected SECRET:KEY[,KEY...]")
        secret_env[name] = keys.split(",")
    plain = {key: getattr(args, key) for key in
             ("gpu_type", "gpus", "retries", "retry_max_duration", "max_gpus", "parallelism", "image_repository",
              "image_tag", "cuda_version")}
    return base.merged(
        secret_env=secret_env, node_selector=pairs(args.node_selector, "--node-selector"),
        tolerations=[_toleration(t) for t in args.toleration or []], env=pairs(args.env, "--env"),
        image_digests=pairs(args.image_digest, "--image-digest"), cpu_limit=args.cpu_limit,
        memory_limit=args.memory_limit, exit_handler=False if args.no_exit_handler else None, **plain,
    )


def _toleration(text: str) -> Toleration:
    try:
        return Toleration.parse(text)
    except ValueError:
        raise UsageError(f"--toleration {text!r}: expected KEY[=VALUE][:EFFECT], EFFECT one of NoSchedule, "
                         "PreferNoSchedule, NoExecute") from None


def cmd_show(args: argparse.Namespace) -> int:
    """Print a grid's id, cells and the KFP runs it becomes."""
    grid = _load_grid(args)
    cells = expand(grid)
    if args.json:
        runs = [{"run": f"{grid_id(grid)} {sh.label}", "dataset": sh.dataset, "setup": sh.setup,
                 "sample_rate": sh.sample_rate, "strategies": list(sh.configs), "folds": list(sh.folds)}
                for sh in shards(grid)]
        print(json.dumps({"grid_id": grid_id(grid), "name": grid.name, "fold_trainings": len(cells),
                          "cells": [list(c.key) for c in cells], "runs": runs}, indent=2))
        return 0
    print(f"grid {grid_id(grid)}: {len(cells)} fold trainings (+ FGSM each)")
    for sh in shards(grid):
        print(f"  run {sh.label} @ {sh.sample_rate} Hz: {len(sh.configs)} strategies x folds {list(sh.folds)}"
              f" = {len(sh.configs) * len(sh.folds)} folds")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved configuration of the grid's cells that match --dataset/--setup/--strategy, as YAML."""
    grid = _load_grid(args)
    setup = args.setup or (setup_of_model(grid, args.model) if args.model else None)
    cells = {}
    for c in expand(grid):  # one config per dataset x setup x strategy (folds share it)
        if (args.dataset in (None, c.dataset) and setup in (None, c.setup) and args.strategy in (None, c.strategy)):
            cells.setdefault((c.dataset, c.setup, c.strategy), c.config)
    if not cells:
        choices = sorted({f"{c.dataset}/{c.setup}/{c.strategy}" for c in expand(grid)})
        raise UsageError(f"config: no cell of grid {grid.name} matches; its cells: {', '.join(choices[:12])}"
                         + (" ..." if len(choices) > 12 else ""))
    docs = []
    for (dataset, setup_name, strategy), cfg in cells.items():
        data = cfg.model_dump(mode="json")
        apply_sets(data, args.set)
        cfg = parse_config(data, source="command line") if args.set else cfg
        docs.append(config_yaml(cfg, f"{grid_id(grid)}: {dataset}/{setup_name}/{strategy}"))
    print("---\n".join(docs), end="")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print each fold's state (done, running, failed, stopped, superseded, not started), the time left, rerun commands."""
    work = _workdir(args)
    store = work.store
    grid = _load_grid(args, store)
    status = grid_status(grid, store, work.tracking_uri, progress=not args.json and sys.stderr.isatty())
    if args.host:
        ep = endpoint(args)
        client = kfp_client(ep)
        try:
            exp = client.get_experiment(experiment_name=ep.experiment or status.grid_id, namespace=ep.namespace)
        except Exception as err:  # noqa: BLE001 - the KFP client raises many types; none stops the report
            status.notes.append(f"Kubeflow: no run states ({cut(str(getattr(err, 'body', '') or err), 200)})")
        else:
            status.kfp_runs = kfp_run_states(existing_runs(client, exp.experiment_id))
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print(format_status(status, time.time()))
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    """Compile a grid to one IR YAML per dataset x setup."""
    grid = _load_grid(args)
    paths = _submission(lambda: compile_grid(grid, args.output, cluster_options(args)))
    if args.check_images:
        _submission(lambda: check_images(compiled_images(paths)))
    print(f"grid {grid_id(grid)}: {len(paths)} pipeline(s), {sum(p.stat().st_size for p in paths) // 1024} KiB")
    for p in paths:
        print(f"  {p}")
    return 0


def endpoint(args: argparse.Namespace) -> KfpEndpoint:
    """KfpEndpoint from --host and the auth flags."""
    if not args.host:
        raise UsageError("--host (or KFP_HOST) is required to talk to Kubeflow Pipelines")
    if args.ssl_ca_cert and not Path(args.ssl_ca_cert).is_file():
        raise UsageError(f"--ssl-ca-cert {args.ssl_ca_cert}: no such file")
    return KfpEndpoint(host=args.host, namespace=args.namespace, existing_token=args.existing_token,
                       cookies=args.cookies, ssl_ca_cert=args.ssl_ca_cert, experiment=args.experiment,
                       service_account=getattr(args, "service_account", None),
                       skip_version_check=getattr(args, "skip_version_check", False))


def _server_notes(info: ServerInfo) -> None:
    """Print what the KFP server said that the user should know (version warnings) to stderr."""
    for line in info.warnings:
        print(f"intermix: warning: {line}", file=sys.stderr)


def _submission(call: Any) -> Any:
    """Run a submission; server refusals and image naming problems become one-line usage errors."""
    try:
        return call()
    except (KfpServerError, ImageError, ImageCheckError) as err:
        raise UsageError(str(err)) from None


def _require_store(args: argparse.Namespace, opts: ClusterOptions) -> str:
    store = args.store or opts.env.get("INTERMIX_STORAGE_ROOT") or os.environ.get("INTERMIX_STORAGE_ROOT")
    if not store:
        raise UsageError("--store is required on a cluster (or INTERMIX_STORAGE_ROOT in --cluster-options or the "
                         "environment): an s3:// root the tasks can reach")
    return store


def _tracking(args: argparse.Namespace, opts: ClusterOptions) -> str:
    return args.tracking_uri or opts.env.get("MLFLOW_TRACKING_URI") or ""


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a grid to Kubeflow Pipelines: one run per dataset x setup under one experiment."""
    grid = _load_grid(args)
    sources = _sources(args)
    _require_sources(grid, sources)
    ep, opts = endpoint(args), cluster_options(args)
    store = _require_store(args, opts)
    try:
        runs = _submission(lambda: submit_grid(grid, ep, store, _tracking(args, opts), sources, opts,
                                               enable_caching=False if args.no_cache else None, on_server=_server_notes,
                                               verify_images=not args.skip_image_check))
    except PartialSubmitError as err:
        for line in str(err).splitlines():
            print(f"intermix: {line}", file=sys.stderr)
        return 1
    created = sum(r.status == "created" for r in runs)
    print(f"grid {grid_id(grid)}: {len(runs)} run(s) in experiment {ep.experiment or grid_id(grid)} "
          f"({created} created, {len(runs) - created} already there)")
    for r in runs:
        print(f"  {r.run_id}  {r.run_name}" + (f"  (existing, {r.state})" if r.status == "existing" else ""))
    return 0


def _rerun_cell(args: argparse.Namespace, grid: GridSpec) -> FoldCell:
    setup = args.setup or setup_of_model(grid, args.model)
    return find_cell(grid, args.dataset, setup, args.strategy, args.fold, source="rerun")


def cmd_rerun(args: argparse.Namespace) -> int:
    """Rerun one fold of an earlier grid (same grid id) and re-aggregate its tables."""
    if args.host:
        ep, opts = endpoint(args), cluster_options(args)
        store = _require_store(args, opts)
        grid = _load_grid(args, store)
        cell = _rerun_cell(args, grid)
        _require_sources(grid.model_copy(update={"datasets": [cell.dataset]}), _sources(args))
        try:
            run = _submission(lambda: submit_rerun(grid, cell, ep, store, _tracking(args, opts),
                                                   _sources(args).get(cell.dataset), args.from_scratch, opts,
                                                   on_server=_server_notes, verify_images=not args.skip_image_check))
        except PartialSubmitError as err:
            for line in str(err).splitlines():
                print(f"intermix: {line}", file=sys.stderr)
            return 1
        if run.status == "existing":
            print(f"grid {grid_id(grid)}: a rerun of {cell.label} is already {run.state.lower()}: run {run.run_id}")
        else:
            print(f"grid {grid_id(grid)}: rerun {cell.label} as run {run.run_id}")
        return 0

    work = _workdir(args)
    grid = _load_grid(args, work.store)
    cell = _rerun_cell(args, grid)
    _require_sources(grid.model_copy(update={"datasets": [cell.dataset]}), _sources(args))
    report = rerun_fold_local(grid, cell, work, _sources(args).get(cell.dataset), restart=args.from_scratch,
                              tracking=not args.no_tracking, progress=not args.no_progress, verbose=args.verbose)
    _print_summary(work.store, grid_id(grid))
    return _report(report, work, not args.no_tracking)
