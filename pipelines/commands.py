"""The `intermix` subcommands: each parses its arguments into typed settings and calls intermix_core.run.steps or pipelines.

Errors a user can fix raise UsageError, ConfigError, DataError, StorageError or FileNotFoundError;
`pipelines.cli.main` prints them as one line per problem and exits with status 2.
"""

import argparse
import os
import shlex
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from components.image import ImageError
from intermix_core.common.names import check_pipeline_value
from intermix_core.common.redact import redact_uris
from intermix_core.common.yamlfile import load_yaml
from intermix_core.config import DATASETS, ConfigError, ExperimentConfig, parse_config
from intermix_core.config.grid import (
    FoldCell,
    GridSpec,
    expand,
    find_cell,
    grid_id,
    setup_of_model,
)
from intermix_core.method.devices import choose_precision, resolve_device
from intermix_core.records import CHECKPOINT, RESULT, FoldResult, load_result
from intermix_core.results.statistics import Summary
from intermix_core.results.tables import REPORT_HTML, format_terminal, install_reports
from intermix_core.run.aggregate import aggregate_step, describe_absent
from intermix_core.run.steps import attack_checkpoint_step, attack_step, train_pack_step, train_step
from intermix_core.store.reports import fetch_latest_reports
from intermix_core.store.storage import open_storage
from intermix_core.tracking.client import TrackingError
from intermix_core.tracking.tracker import FoldSuperseded
from pipelines.arguments import UsageError, apply_sets, pairs
from pipelines.gpu_budget import plan_gpus
from pipelines.grid_pipeline import compile_grid
from pipelines.local import LocalRun, Workdir, rerun_fold_local, run_grid_local
from pipelines.local_commands import SIGNALLED, USER_ERRORS  # noqa: F401  (pipelines.cli reads them here)
from pipelines.options import ClusterOptions, Toleration, load_cluster_options
from pipelines.plan_commands import config_yaml
from pipelines.registry import ImageCheckError, check_images, compiled_images
from pipelines.status_command import endpoint, grid_from_args, workdir
from pipelines.submit import (
    KfpServerError,
    PartialSubmitError,
    ServerInfo,
    submit_grid,
    submit_rerun,
)

# beside USER_ERRORS (exit 2) and SIGNALLED (exit 128 + the signal), one line and exit 1: MLflow stayed
# unreachable, or another attempt at the fold took it over, or MLflow refused a request (MlflowException: e.g. a run
# it no longer has), printed as its first line
SERVICE_ERRORS = (TrackingError, FoldSuperseded, MlflowException)
_load_grid, _workdir = grid_from_args, workdir  # the grid a command line names; the work directory (status_command)


def _sources(args: argparse.Namespace) -> dict[str, str]:
    sources = pairs(args.source, "--source")
    for d, value in sources.items():
        if d not in DATASETS:
            raise UsageError(f"--source {d}=...: unknown dataset {d!r}; expected one of: {', '.join(DATASETS)}")
        check_pipeline_value(value, f"--source {d}")  # it becomes a pipeline parameter
    return sources


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
        out = Path(args.out) if args.out else _workdir(args).reports(gid)
        expected = [c.key for c in expand(grid)]
        summary = aggregate_step([], out, expected, args.tracking_uri, gid, store_root=store)
        print(f"grid {gid}")
    print(format_terminal(summary))
    if describe_absent(summary):
        print(describe_absent(summary))
    print(f"report: {(out / REPORT_HTML).resolve()}")
    return 0


def _print_summary(work: Workdir, gid: str) -> None:
    """Print the grid's newest published tables from the store and install that report in the grid's report folder
    (`Workdir.reports`, where `intermix results` writes it too); nothing if the store has none yet."""
    out = work.reports(gid)
    with tempfile.TemporaryDirectory() as tmp:
        if fetch_latest_reports(open_storage(work.store), gid, tmp) is None:
            return
        summary = Summary.model_validate_json((Path(tmp) / "summary.json").read_text())
        install_reports(tmp, out)
    print(format_terminal(summary))
    if describe_absent(summary):
        print(describe_absent(summary))
    print(f"report: {(out / REPORT_HTML).resolve()}")


def cmd_run(args: argparse.Namespace) -> int:
    """Run a grid locally with KFP's local runner."""
    grid = _load_grid(args)
    sources = _sources(args)
    _require_sources(grid, sources)
    work = _workdir(args)
    gid = grid_id(grid)
    print(f"grid {gid}: {len(expand(grid))} fold trainings, work directory {work.root.resolve()}", file=sys.stderr)
    print(f"each fold's state, in another terminal: {_local_command('status', gid, work)}", file=sys.stderr)
    _precision_lines(grid)
    if args.pack < 1:
        raise UsageError(f"--pack {args.pack}: expected a number of folds >= 1")
    report = run_grid_local(grid, work, sources, tracking=not args.no_tracking, progress=not args.no_progress,
                            verbose=args.verbose, opts=ClusterOptions(pack=args.pack))
    if report.stopped:
        resume = _local_command("run", gid, work, grid_arg=args.grid_pos or args.grid, sets=args.set)
        return _stopped(report.stopped, resume + (f" --pack {args.pack}" if args.pack != 1 else ""))
    _print_summary(work, gid)
    return _report(report, work, not args.no_tracking)


def _local_command(verb: str, gid: str, work: Workdir, grid_arg: str | None = None, sets: list[str] | None = None) -> str:
    """`intermix VERB GRID` for this work directory (and store and tracking URI, when not its own)."""
    words = ["intermix", verb, grid_arg or gid]
    words += [w for s in sets or [] for w in ("--set", s)]
    return shlex.join(words + work.arguments())


def _precision_lines(grid: GridSpec) -> None:
    """One line per precision `auto` in the grid: what it runs as on this machine, and why."""
    wanted = {c.config.optim.precision for c in expand(grid)}
    if "auto" in wanted:
        print(f"intermix: {choose_precision('auto', resolve_device(None))[1]}", file=sys.stderr)


def _stopped(signum: int, resume: str) -> int:
    """The one line of a local run stopped by a signal, and its exit status (128 + the signal)."""
    print(f"intermix: stopped by {signal.Signals(signum).name}: running folds stopped after their epoch with a "
          f"checkpoint, nothing was retried; the same command resumes: {resume}", file=sys.stderr)
    return 128 + signum


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
             ("gpu_type", "gpus", "retries", "retry_max_duration", "max_gpus", "parallelism", "pack", "gpu_memory_gib",
              "image_repository",
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
    print(plan_gpus(grid, opts).bounds())
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
    if report.stopped:  # resuming: the same rerun without --from-scratch (its checkpoint is the newest state)
        return _stopped(report.stopped, shlex.join(["intermix", "rerun", grid_id(grid), "--dataset", cell.dataset,
                                                     "--setup", cell.setup, "--strategy", cell.strategy,
                                                     "--fold", str(cell.fold), *work.arguments()]))
    _print_summary(work, grid_id(grid))
    return _report(report, work, not args.no_tracking)
