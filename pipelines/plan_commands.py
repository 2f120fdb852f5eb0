"""The `intermix` subcommands that only read grid files: `show`, `config` and `estimate`.

They import the configuration and the shipped throughput records, and nothing of torch, MLflow, boto3 or kfp:
they answer at once (tests/e2e/test_cli_imports.py guards what each one imports).
"""

import argparse
import dataclasses
import json

from intermix_core.common.yamlfile import dump_yaml
from intermix_core.config import ExperimentConfig, parse_config
from intermix_core.config.grid import GridSpec, expand, grid_id, load_grid, setup_of_model, shards
from intermix_core.run.estimate import estimate_grid, format_estimate, load_throughput, wall_hours
from pipelines import arguments
from pipelines.arguments import UsageError, apply_sets, grid_name, load_grid_args, with_on_silent

USER_ERRORS, SERVICE_ERRORS, SIGNALLED = arguments.USER_ERRORS, arguments.SERVICE_ERRORS, arguments.SIGNALLED


def _grid(args: argparse.Namespace) -> GridSpec:
    """The grid file or packaged grid the command line names, as written (--name and --on-silent applied)."""
    return with_on_silent(load_grid(grid_name(args), name=getattr(args, "name", None)), args)


def config_yaml(cfg: ExperimentConfig, label: str | None = None) -> str:
    """A configuration with every reference default resolved, as YAML (headed by a comment naming the cell)."""
    head = f"# {label}\n" if label else ""
    return head + dump_yaml(cfg.resolved().model_dump(mode="json"))


def cmd_show(args: argparse.Namespace) -> int:
    """Print a grid's id, cells and the KFP runs it becomes."""
    grid = _grid(args)
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
    grid = _grid(args)
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


def cmd_estimate(args: argparse.Namespace) -> int:
    """Print a grid's training samples and device-hours from measured throughput."""
    grid = load_grid_args(args)
    if args.max_gpus is not None and args.max_gpus < 1:
        raise UsageError(f"--max-gpus {args.max_gpus}: expected a number of GPUs, at least 1")
    if args.pack < 1:
        raise UsageError(f"--pack {args.pack}: expected a number of folds >= 1")
    rows = estimate_grid(grid, load_throughput(args.throughput), args.device, args.pack)
    if args.json:
        known = [r.hours for r in rows if r.hours is not None]
        wall = wall_hours(rows, args.max_gpus) if args.max_gpus and known else None
        print(json.dumps({"grid_id": grid_id(grid), "total_hours": sum(known) if known else None,
                          "max_gpus": args.max_gpus, "wall_hours": wall,
                          "unmeasured": sorted({m for r in rows for m in r.unmeasured}),
                          "setups": [dataclasses.asdict(r) | {"devices": sorted(r.devices), "unmeasured": sorted(r.unmeasured),
                                                              "pack_unmeasured": sorted(r.pack_unmeasured)}
                                     for r in rows]}, indent=2))
        return 0
    print(format_estimate(grid.name, rows, args.max_gpus))
    return 0
