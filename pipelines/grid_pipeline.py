"""The grid pipeline: one KFP pipeline (one run) per dataset x setup shard of a GridSpec.

Inside a shard run:

    exit handler: aggregate "<grid id>" (all results in the grid store, even if a fold failed)
    preprocess "<dataset>@<rate>"  -> data URI (a string: the dataset is prepared once into the store)
    "folds <dataset>/<setup>" (a sub-pipeline taking the URI as input):
        for each strategy (static, named "folds <dataset>/<setup>/<strategy>"; side by side, or one
        after another where the GPU budget is narrower than the loops, pipelines/gpu_budget.py):
            ParallelFor fold: train "train <dataset>/<setup>/<strategy>" -> FGSM "fgsm <...>"
            or, with fold packs (several folds per GPU task, ClusterOptions.pack; on GPU tasks by
            default as many of the cell's folds as fit in one GPU's memory, intermix_core.method.packing):
            ParallelFor pack ("packs <...>", items '1 2 3'): train_pack -> fgsm_pack, each fold in
            its own subfolder, its own MLflow run and its own store prefix as a lone fold's

The paper grid becomes 18 runs of at most 4 x 10 folds, submitted under one KFP experiment;
each run's aggregation reads every result of the grid from the store, so the last one to
finish shows the whole table. The fold loops sit in a sub-pipeline because kfp 2.17.3's local
runner replaces a *task output* parameter entering a ParallelFor with the loop item; a
sub-pipeline input is a component input and passes intact (on the cluster both work).
`python -m pipelines.grid_pipeline [GRID] [OUT_DIR]` compiles.
"""


import sys
from pathlib import Path

from kfp import compiler, dsl

from components import ComponentSet, component_set
from components.image import resolve_images
from intermix_core.config.grid import GridSpec, Shard, grid_id, load_grid, shards
from intermix_core.method.packing import pack_item
from pipelines.gpu_budget import plan_gpus
from pipelines.options import ClusterOptions, configure_task, expected_train_seconds, retry_seconds


def pipeline_name(gid: str, shard: Shard) -> str:
    """KFP pipeline name of a shard: 'intermix-<grid id>-<dataset>-<setup>' (lower case, dashes)."""
    return f"intermix-{gid}-{shard.dataset}-{shard.setup}".replace("_", "-")


def grid_json(grid: GridSpec) -> str:
    """The spec as it travels to the aggregate task (and into the store); `strategy_overrides` only when set, so a
    grid without them travels as before (the compiled YAML and the stored grid.json unchanged)."""
    return grid.model_dump_json(exclude=None if grid.strategy_overrides else {"strategy_overrides"})


def pipeline_components(opts: ClusterOptions, local: bool = False) -> ComponentSet:
    """The components with the images a compiled pipeline names (by their inputs' hash or digest); version tags locally."""
    if local:
        return component_set()
    images = resolve_images(opts.image_repository, opts.image_tag, dict(opts.image_digests), opts.cuda_version)
    return component_set(images.cpu, images.cuda)


def shard_pipeline(grid: GridSpec, shard: Shard, opts: ClusterOptions | None = None, *,
                   local: bool = False) -> dsl.graph_component.GraphComponent:
    """The pipeline of one shard: preprocess, a fold loop per strategy (train -> FGSM), aggregation on exit.

    local=True builds it for KFP's local runner: version-tagged images and device 'auto'.
    """
    opts = opts or ClusterOptions()
    comps = pipeline_components(opts, local)
    device = "auto" if local else opts.device()
    gid = grid_id(grid)
    spec = grid_json(grid)
    default_source = grid.sources.get(shard.dataset, "")
    base_labels = {"grid-id": gid, "dataset": shard.dataset, "setup": shard.setup}
    short_window = retry_seconds(opts)
    plan = plan_gpus(grid, opts, local)  # the grid's GPU budget as loop parallelism, and the wait it implies
    gpu_short_window = retry_seconds(opts, queue_seconds=plan.queue_seconds)
    pname = pipeline_name(gid, shard)

    @dsl.pipeline(name=f"{pname}-folds", description=f"every strategy x fold of {shard.label}")
    def folds(data_uri: str, store_root: str, tracking_uri: str):
        # a run narrower than its loop count runs them one after another (pipelines/gpu_budget.py); the
        # local runner runs one task at a time anyway
        one_after_another = plan.is_sequential(shard.dataset, shard.setup) and not local
        before = None
        for strategy, cfg in shard.configs.items():
            name = f"{shard.label}/{strategy}"
            labels = {**base_labels, "strategy": strategy}
            packs = opts.packs(cfg, shard.folds, local)
            k = max(len(p) for p in packs)
            window = retry_seconds(opts, expected_train_seconds(cfg, opts, k), plan.queue_seconds)
            parallelism = plan.loop(shard.dataset, shard.setup, strategy)
            if k == 1:  # one fold per task
                loop = dsl.ParallelFor(list(shard.folds), parallelism=parallelism, name=f"folds {name}")
            else:  # fold packs: the loop item is a pack's folds, '1 2 3' (intermix_core.method.packing)
                loop = dsl.ParallelFor([pack_item(p) for p in packs], parallelism=parallelism, name=f"packs {name}")
            with loop as item:
                common = {"grid_id": gid, "tracking_uri": tracking_uri, "store_root": store_root, "data_uri": data_uri,
                          "device": device}
                if k == 1:
                    train = comps.train_fold(config_json=cfg.model_dump_json(), fold=item, **common)
                else:
                    train = comps.train_pack(config_json=cfg.model_dump_json(), folds=item, **common)
                configure_task(train.set_display_name(f"train {name}"), opts, kind="train", cache=True,
                               labels=labels, retry_window_s=window, local=local)
                if one_after_another and before is not None:
                    train.after(before)  # compiled as this loop's dependency on the previous loop
                if k == 1:
                    attack = comps.fgsm_attack(fold=item, trained=train.outputs["trained"], **common)
                else:
                    attack = comps.fgsm_pack(folds=item, trained=train.outputs["trained"], **common)
                configure_task(attack.set_display_name(f"fgsm {name}"), opts, kind="fgsm", cache=True,
                               labels=labels, retry_window_s=gpu_short_window, local=local)
            before = attack

    lane_wait = plan.lane_wait_s.get((shard.dataset, shard.setup))

    def body(store_root: str, tracking_uri: str, source: str, lane_done: str = "", lane_after: str = "") -> None:
        agg = comps.aggregate(grid_json=spec, store_root=store_root, tracking_uri=tracking_uri,
                              **({"lane_done": lane_done} if lane_wait is not None else {}))
        configure_task(agg.set_display_name(f"aggregate {gid}"), opts, kind="aggregate", cache=False,
                       labels=base_labels, retry_window_s=short_window, local=local)

        def cells() -> dsl.PipelineTask:
            gate = None
            if lane_wait is not None:  # a GPU budget below the run count: wait for the run before this one
                gate = comps.lane_gate(store_root=store_root, after=lane_after, max_wait_s=int(lane_wait))
                configure_task(gate.set_display_name("wait for the lane"), opts, kind="aggregate", cache=False,
                               labels=base_labels, retry_window_s=retry_seconds(opts, lane_wait), local=local)
            # never cached: it re-fingerprints the raw data (cheap) and finds the prepared copy in the store
            prep = comps.preprocess(source=source, dataset=shard.dataset, sample_rate=shard.sample_rate,
                                    store_root=store_root, on_silent=grid.on_silent)
            configure_task(prep.set_display_name(f"preprocess {shard.dataset}@{shard.sample_rate}"), opts,
                           kind="preprocess", cache=False, labels=base_labels, retry_window_s=short_window, local=local)
            if gate is not None:
                prep.after(gate)
            loops = folds(data_uri=prep.outputs["Output"], store_root=store_root, tracking_uri=tracking_uri)
            return loops.set_display_name(f"folds {shard.label}")

        if opts.exit_handler:
            with dsl.ExitHandler(agg, name=f"cells {shard.label}"):
                cells()
        else:
            agg.after(cells())

    description = f"intermix grid {gid}: {shard.label}, every strategy x fold"
    if lane_wait is None:
        @dsl.pipeline(name=pname, description=description)
        def run_shard(store_root: str, tracking_uri: str = "", source: str = default_source):
            body(store_root, tracking_uri, source)
    else:  # lane_done: the marker its end writes; lane_after: the one it waits for (intermix submit sets both)
        @dsl.pipeline(name=pname, description=description)
        def run_shard(store_root: str, tracking_uri: str = "", source: str = default_source, lane_done: str = "",
                      lane_after: str = ""):
            body(store_root, tracking_uri, source, lane_done, lane_after)

    return run_shard


def grid_pipelines(grid: GridSpec, opts: ClusterOptions | None = None, *,
                   local: bool = False) -> list[tuple[Shard, dsl.graph_component.GraphComponent]]:
    """One (shard, pipeline) per dataset x setup of the grid, in file order."""
    return [(sh, shard_pipeline(grid, sh, opts, local=local)) for sh in shards(grid)]


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
