"""`intermix status`: each fold of a grid from its store and MLflow, and (with --host) its Kubeflow runs.

It imports the store and MLflow, which it reads, and no torch; kfp only when --host asks for the Kubeflow runs
(tests/e2e/test_cli_imports.py guards what it imports).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from intermix_core.common.text import cut
from intermix_core.config.grid import GridSpec, grid_id, load_grid, packaged_grids, parse_grid
from intermix_core.run.status import format_status, grid_status, kfp_run_states
from intermix_core.store.grid_store import load_grid_spec
from intermix_core.store.storage import StorageError, open_storage
from intermix_core.tracking.client import TrackingError
from pipelines import arguments
from pipelines.arguments import GRID_ID, UsageError, apply_sets, grid_name, with_on_silent
from pipelines.workdir import Workdir

if TYPE_CHECKING:  # a type only: kfp is imported where --host needs it
    from pipelines.submit import KfpEndpoint

USER_ERRORS = (*arguments.USER_ERRORS, StorageError)
SERVICE_ERRORS = (TrackingError,)  # MLflow stayed unreachable: one line, exit 1
SIGNALLED = arguments.SIGNALLED


def workdir(args: argparse.Namespace) -> Workdir:
    """The local work directory, with --store and --tracking-uri (else MLFLOW_TRACKING_URI) when given."""
    tracking = getattr(args, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI") or None
    return Workdir(Path(args.workdir), store_uri=getattr(args, "store", None) or None, tracking=tracking)


def grid_from_args(args: argparse.Namespace, store: str | None = None) -> GridSpec:
    """The grid named on the command line: a file, a packaged grid, or (with a store) the id of a grid saved there;
    `--set KEY=VALUE` (run) goes on top of every cell's config and into the grid id."""
    name = grid_name(args)
    if store and GRID_ID.match(name) and not Path(name).is_file() and name not in packaged_grids():
        grid = parse_grid(load_grid_spec(store, name), source=f"{store}/{name}/grid.json")
    else:
        sets = apply_sets({}, getattr(args, "set", None)) if getattr(args, "set", None) else None
        grid = load_grid(name, name=getattr(args, "name", None), overrides=sets)
    return with_on_silent(grid, args)


def endpoint(args: argparse.Namespace) -> KfpEndpoint:
    """KfpEndpoint from --host and the auth flags."""
    # kfp only with --host: `status` without it answers without importing kfp
    from pipelines.submit import KfpEndpoint

    if not args.host:
        raise UsageError("--host (or KFP_HOST) is required to talk to Kubeflow Pipelines")
    if args.ssl_ca_cert and not Path(args.ssl_ca_cert).is_file():
        raise UsageError(f"--ssl-ca-cert {args.ssl_ca_cert}: no such file")
    return KfpEndpoint(host=args.host, namespace=args.namespace, existing_token=args.existing_token,
                       cookies=args.cookies, ssl_ca_cert=args.ssl_ca_cert, experiment=args.experiment,
                       service_account=getattr(args, "service_account", None),
                       skip_version_check=getattr(args, "skip_version_check", False))


def _has_trace(store: str, gid: str) -> bool:
    """True if the store holds anything of grid `gid` (spec, checkpoint, result); a missing folder holds nothing."""
    if "://" not in store and not Path(store).is_dir():
        return False
    return bool(open_storage(store).list(gid))


def cmd_status(args: argparse.Namespace) -> int:
    """Print each fold's state (done, running, failed, stopped, superseded, not started), time left, rerun commands."""
    work = workdir(args)
    store = work.store
    grid = grid_from_args(args, store)
    gid = grid_id(grid)
    status = grid_status(grid, store, work.tracking_uri, progress=not args.json and sys.stderr.isatty())
    if not args.host and all(f.state == "not started" for f in status.folds) and not _has_trace(store, gid):
        where = f"store {store}" if args.store else f"work directory {work.root} (store {store})"
        raise UsageError(f"grid {gid} has not run here: the {where} holds nothing of it, and MLflow no run of it "
                         f"({status.tracking}); `intermix run {grid_name(args)}` starts it, or give the --workdir "
                         "(or --store and --tracking-uri) it ran with")
    if args.host:
        # kfp only here, for the Kubeflow run states: without --host `status` answers without importing it
        from pipelines.submit import existing_runs, kfp_client

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
