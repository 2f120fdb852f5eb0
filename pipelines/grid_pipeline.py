"""The grid pipeline: one KFP pipeline (one run) per dataset x setup shard of a GridSpec.

Inside a shard run:

    preprocess (dataset at the setup's sample rate)
    for each strategy (static, named "folds <dataset>/<setup>/<strategy>"):
        ParallelFor fold: train "train <dataset>/<setup>/<strategy>" -> FGSM "fgsm <...>"
    exit handler: aggregate "<grid id>" (all results in the grid store, even if a fold failed)

The paper grid becomes 18 runs of at most 4 x 10 folds, submitted under one KFP experiment;
each run's aggregation reads every result of the grid from the store, so the last one to
finish shows the whole table. `python -m pipelines.grid_pipeline [GRID] [OUT_DIR]` compiles.
"""


import sys
from pathlib import Path

from kfp import compiler, dsl

from components import aggregate, fgsm_attack, preprocess, train_fold
from intermix_core.grid import GridSpec, Shard, grid_id, load_grid, shards
from pipelines.options import ClusterOptions, configure_task


def pipeline_name(gid: str, shard: Shard) -> str:
    """KFP pipeline name of a shard: 'intermix-<grid id>-<dataset>-<setup>' (lower case, dashes)."""
    return f"intermix-{gid}-{shard.dataset}-{shard.setup}".replace("_", "-")


def grid_json(grid: GridSpec) -> str:
    """The spec as it travels to the aggregate task (and into the store)."""
    return grid.model_dump_json()


def shard_pipeline(grid: GridSpec, shard: Shard, opts: ClusterOptions | None = None) -> dsl.graph_component.GraphComponent:
    """The pipeline of one shard: preprocess, a fold loop per strategy (train -> FGSM), aggregation on exit."""
    opts = opts or ClusterOptions()
    gid = grid_id(grid)
    spec = grid_json(grid)
    default_source = grid.sources.get(shard.dataset, "")
    base_labels = {"grid-id": gid, "dataset": shard.dataset, "setup": shard.setup}

    @dsl.pipeline(name=pipeline_name(gid, shard), description=f"intermix grid {gid}: {shard.label}, every strategy x fold")
    def run_shard(store_root: str, tracking_uri: str = "", source: str = default_source):
        agg = aggregate(grid_json=spec, store_root=store_root, tracking_uri=tracking_uri)
        configure_task(agg.set_display_name(f"aggregate {gid}"), opts, gpu=False, cache=False, labels=base_labels)
        with dsl.ExitHandler(agg, name=f"cells {shard.label}"):
            prep = preprocess(source=source, dataset=shard.dataset, sample_rate=shard.sample_rate)
            prep.set_display_name(f"preprocess {shard.dataset}@{shard.sample_rate}")
            configure_task(prep, opts, gpu=False, cache=True, labels=base_labels)
            for strategy, cfg in shard.configs.items():
                name = f"{shard.label}/{strategy}"
                labels = {**base_labels, "strategy": strategy}
                with dsl.ParallelFor(list(shard.folds), parallelism=opts.parallelism, name=f"folds {name}") as fold:
                    train = train_fold(
                        config_json=cfg.model_dump_json(), fold=fold, grid_id=gid, tracking_uri=tracking_uri,
                        store_root=store_root, data=prep.outputs["prepared"],
                    )
                    configure_task(train.set_display_name(f"train {name}"), opts, gpu=True, cache=True, labels=labels)
                    attack = fgsm_attack(
                        fold=fold, grid_id=gid, tracking_uri=tracking_uri, store_root=store_root,
                        data=prep.outputs["prepared"], trained=train.outputs["trained"],
                    )
                    configure_task(attack.set_display_name(f"fgsm {name}"), opts, gpu=True, cache=True, labels=labels)

    return run_shard


def grid_pipelines(grid: GridSpec, opts: ClusterOptions | None = None) -> list[tuple[Shard, dsl.graph_component.GraphComponent]]:
    """One (shard, pipeline) per dataset x setup of the grid, in file order."""
    return [(sh, shard_pipeline(grid, sh, opts)) for sh in shards(grid)]


def compile_grid(grid: GridSpec, out_dir: str | Path, opts: ClusterOptions | None = None) -> list[Path]:
    """Compile every shard pipeline to `<out_dir>/<pipeline name>.yaml`; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    gid = grid_id(grid)
    for sh, pipe in grid_pipelines(grid, opts):
        path = out / f"{pipeline_name(gid, sh)}.yaml"
        compiler.Compiler().compile(pipe, str(path))
        paths.append(path)
    return paths


if __name__ == "__main__":
    grid_arg = sys.argv[1] if len(sys.argv) > 1 else "paper"
    out_arg = sys.argv[2] if len(sys.argv) > 2 else "compiled"
    for p in compile_grid(load_grid(grid_arg), out_arg):
        print(p)
