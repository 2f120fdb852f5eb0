"""The `intermix` subcommands that need no cluster service: `prepare`, `study` and `estimate`.

They run where PyTorch is and nothing else of the cluster's stack: a bare GPU machine has no MLflow, boto3 or kfp
(scripts/gpu_study.sh), so this module and what it imports never load them (tests/e2e/test_bare_machine.py).
`pipelines.commands` holds every other subcommand and shares the command-line helpers defined here.
"""

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from intermix_core.common.text import cut, short
from intermix_core.common.yamlfile import parse_yaml
from intermix_core.config import ConfigError
from intermix_core.config.grid import GridSpec, grid_id, load_grid, shards
from intermix_core.data import DataError
from intermix_core.method.train import FoldInterrupted
from intermix_core.models import model_class
from intermix_core.run.estimate import estimate_grid, format_estimate, load_throughput
from intermix_core.run.study import run_study
from intermix_core.store.prepared import prepare_source
from intermix_core.store.storage import StorageError


class UsageError(Exception):
    """A mistake in the command line that argparse cannot see (e.g. a value that fits no grid cell)."""


# what `intermix` prints as one line and exits 2 for: the user can fix it. ValueError: what the core raises for
# inputs that do not fit (e.g. a fold the prepared data lacks); OSError: the machine refused (a full disk, a
# missing or unwritable folder), named by the message
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, StorageError, UsageError, OSError, ValueError)
# one line and exit 1: a service stayed unreachable (none is used here)
SERVICE_ERRORS: tuple[type[BaseException], ...] = ()
# one line and exit 128 + the signal: a fold stopped by SIGINT or SIGTERM after an epoch, its checkpoint saved
SIGNALLED = FoldInterrupted

GRID_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}-[0-9a-f]{10}$")  # config.grid.grid_id: <name>-<10 hex digits>


def grid_name(args: argparse.Namespace) -> str:
    """The one grid the command line names (GRID, --grid or --grid-id), default demo; two different ones are an error."""
    given = {flag: v for flag, v in (("GRID", getattr(args, "grid_pos", None)), ("--grid", getattr(args, "grid", None)),
                                     ("--grid-id", getattr(args, "grid_id", None))) if v}
    if len(set(given.values())) > 1:
        raise UsageError("two grids given: " + " and ".join(f"{k} {v}" for k, v in given.items()))
    return next(iter(given.values()), "demo")


def with_on_silent(grid: GridSpec, args: argparse.Namespace) -> GridSpec:
    """The grid with --on-silent applied, when given."""
    if getattr(args, "on_silent", None):
        return grid.model_copy(update={"on_silent": args.on_silent})
    return grid


def pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    """['a=b', ...] -> {'a': 'b'}; the error names the flag."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"{flag} {short(item)}: expected KEY=VALUE")
        out[key] = value
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise UsageError(f"--set {cut(dotted, 80)}: expected KEY or SECTION.KEY, e.g. optim.epochs")
    for depth, k in enumerate(keys[:-1]):
        if depth == 0 and k == "strategy" and isinstance(data.get(k), str):
            data[k] = {"name": data[k]}  # a preset by name (--strategy, or the file): strategy.KEY overrides its fields
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise UsageError(f"--set {cut(dotted, 80)}: {'.'.join(keys[:depth + 1])} is {short(data)}, not a section")
    data[keys[-1]] = value


def apply_sets(data: dict[str, Any], items: list[str] | None) -> dict[str, Any]:
    """`data` (a config mapping) with each `--set KEY=VALUE` applied in place; VALUE is read as YAML."""
    for dotted, text in pairs(items, "--set").items():
        _set_dotted(data, dotted, parse_yaml(text, f"--set {cut(dotted, 80)}"))
    return data


def _load_grid(args: argparse.Namespace) -> GridSpec:
    """The grid named on the command line (a file or a packaged grid), with --set on top of every cell's config."""
    sets = apply_sets({}, getattr(args, "set", None))
    return with_on_silent(load_grid(grid_name(args), name=getattr(args, "name", None), overrides=sets), args)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Prepare one dataset."""
    if args.sample_rate is None and args.model is None:
        raise UsageError("prepare: give --model (its sample rate is used) or --sample-rate")
    rate = args.sample_rate or model_class(args.model).sample_rate
    manifest = prepare_source(args.source, args.dataset, rate, args.out, progress=True, on_silent=args.on_silent)
    print(f"prepared {args.dataset} at {rate} Hz: {len(manifest.clips)} clips in folds {manifest.folds} -> {args.out}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    """Print a grid's training samples and device-hours from measured throughput."""
    grid = _load_grid(args)
    if args.pack < 1:
        raise UsageError(f"--pack {args.pack}: expected a number of folds >= 1")
    rows = estimate_grid(grid, load_throughput(args.throughput), args.device, args.pack)
    if args.json:
        known = [r.hours for r in rows if r.hours is not None]
        print(json.dumps({"grid_id": grid_id(grid), "total_hours": sum(known) if known else None,
                          "unmeasured": sorted({m for r in rows for m in r.unmeasured}),
                          "setups": [dataclasses.asdict(r) | {"devices": sorted(r.devices), "unmeasured": sorted(r.unmeasured),
                                                 "pack_unmeasured": sorted(r.pack_unmeasured)}
                                     for r in rows]}, indent=2))
        return 0
    print(format_estimate(grid.name, rows))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    """Train one dataset x setup's folds concurrently on one device inside a time budget."""
    if args.concurrency < 1 or args.budget <= 0:
        raise UsageError("--concurrency must be >= 1 and --budget > 0 seconds")
    if args.pack < 1:
        raise UsageError(f"--pack {args.pack}: expected a number of folds >= 1")
    grid = _load_grid(args)
    rate = None
    if args.throughput:
        shard = shards(grid)[0]
        cfg = next(iter(shard.configs.values()))
        hits = [r for r in load_throughput(args.throughput) if r["model"] == cfg.model
                and r["precision"] == cfg.optim.precision and r["device"] == ("cpu" if args.device == "cpu" else r["device"])]
        packed = [r for r in hits if int(r.get("pack", 1)) == args.pack]  # a pack's rate (all its folds), if measured
        rate = max((r["full_samples_per_s"] for r in packed or [r for r in hits if int(r.get("pack", 1)) == 1]),
                   default=None)
    report = run_study(grid, Path(args.data), args.out, budget_seconds=args.budget, concurrency=args.concurrency,
                       device=args.device, samples_per_s=rate, pack=args.pack)
    return 0 if report.finished == len(report.folds) else 1
