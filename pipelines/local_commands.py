"""The `intermix` subcommands that train or prepare data without any cluster service: `prepare` and `study`.

They run where PyTorch is and nothing else of the cluster's stack: a bare GPU machine has no MLflow, boto3 or kfp
(scripts/gpu_study.sh), so this module and what it imports never load them (tests/e2e/test_bare_machine.py).
`pipelines.plan_commands` holds those that only read grid files (show, config, estimate), `pipelines.status_command`
`status`, and `pipelines.commands` every other subcommand; they share `pipelines.arguments`.
"""

import argparse
from pathlib import Path

from intermix_core.config.grid import shards
from intermix_core.data import DataError
from intermix_core.method.train import FoldInterrupted
from intermix_core.models import model_spec
from intermix_core.run.estimate import load_throughput
from intermix_core.run.study import run_study
from intermix_core.store.prepared import prepare_source
from intermix_core.store.storage import StorageError
from pipelines import arguments
from pipelines.arguments import UsageError, load_grid_args


# what `intermix` prints as one line and exits 2 for (arguments.USER_ERRORS): here also bad raw data and store errors
USER_ERRORS = (*arguments.USER_ERRORS, DataError, StorageError)
SERVICE_ERRORS = arguments.SERVICE_ERRORS  # none is used here
# one line and exit 128 + the signal: a fold stopped by SIGINT or SIGTERM after an epoch, its checkpoint saved
SIGNALLED = FoldInterrupted


def cmd_prepare(args: argparse.Namespace) -> int:
    """Prepare one dataset."""
    if args.sample_rate is None and args.model is None:
        raise UsageError("prepare: give --model (its sample rate is used) or --sample-rate")
    rate = args.sample_rate or model_spec(args.model).sample_rate
    manifest = prepare_source(args.source, args.dataset, rate, args.out, progress=True, on_silent=args.on_silent)
    print(f"prepared {args.dataset} at {rate} Hz: {len(manifest.clips)} clips in folds {manifest.folds} -> {args.out}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    """Train one dataset x setup's folds concurrently on one device inside a time budget."""
    if args.concurrency < 1 or args.budget <= 0:
        raise UsageError("--concurrency must be >= 1 and --budget > 0 seconds")
    if args.pack < 1:
        raise UsageError(f"--pack {args.pack}: expected a number of folds >= 1")
    grid = load_grid_args(args)
    rate = None
    if args.throughput:
        shard = shards(grid)[0]
        cfg = next(iter(shard.configs.values()))
        hits = [r for r in load_throughput(args.throughput) if r["model"] == cfg.model
                and r["precision"] == ("fp32" if cfg.optim.precision == "auto" else cfg.optim.precision)
                and r["device"] == ("cpu" if args.device == "cpu" else r["device"])]
        packed = [r for r in hits if int(r.get("pack", 1)) == args.pack]  # a pack's rate (all its folds), if measured
        rate = max((r["full_samples_per_s"] for r in packed or [r for r in hits if int(r.get("pack", 1)) == 1]),
                   default=None)
    report = run_study(grid, Path(args.data), args.out, budget_seconds=args.budget, concurrency=args.concurrency,
                       device=args.device, samples_per_s=rate, pack=args.pack)
    return 0 if report.finished == len(report.folds) else 1
