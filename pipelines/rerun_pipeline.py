"""The one-fold rerun pipeline: retrain one dataset x setup x strategy x fold of an earlier grid.

Same grid id, same store: the fold's checkpoint and result are replaced in the store, then the
grid is re-aggregated from every result there, so its tables update. Training and FGSM are
never served from the cache (a rerun is a request to compute); preprocessing finds the dataset
already prepared in the store (shared with the grid's runs) and only re-checks its fingerprint.
`python -m pipelines.rerun_pipeline GRID DATASET SETUP STRATEGY FOLD [OUT.yaml]` compiles it.
"""

import sys

from kfp import compiler, dsl

from intermix_core.config.grid import FoldCell, GridSpec, find_cell, grid_id, load_grid
from intermix_core.models import model_spec
from pipelines.gpu_budget import plan_gpus
from pipelines.grid_pipeline import grid_json, pipeline_components
from pipelines.options import ClusterOptions, configure_task, expected_train_seconds, retry_seconds


def rerun_name(gid: str, cell: FoldCell) -> str:
    """KFP pipeline name of a rerun: 'intermix-rerun-<grid id>-<dataset>-<setup>-<strategy>-fold<k>'."""
    return f"intermix-rerun-{gid}-{cell.dataset}-{cell.setup}-{cell.strategy}-fold{cell.fold}".replace("_", "-")


def rerun_pipeline(grid: GridSpec, cell: FoldCell, opts: ClusterOptions | None = None, *,
                   local: bool = False) -> dsl.graph_component.GraphComponent:
    """Pipeline that retrains `cell` (resuming from its stored checkpoint unless restart) and re-aggregates the grid."""
    opts = opts or ClusterOptions()
    comps = pipeline_components(opts, local)
    device = "auto" if local else opts.device()
    gid = grid_id(grid)
    spec = grid_json(grid)
    sample_rate = model_spec(cell.config.model).sample_rate
    labels = {"grid-id": gid, "dataset": cell.dataset, "setup": cell.setup, "strategy": cell.strategy,
              "fold": str(cell.fold)}
    short_window = retry_seconds(opts)
    queue = plan_gpus(grid, opts).queue_seconds  # the grid may still hold the GPUs the rerun's tasks wait for

    @dsl.pipeline(name=rerun_name(gid, cell), description=f"intermix grid {gid}: rerun {cell.label}")
    def rerun_fold(store_root: str, tracking_uri: str = "", source: str = grid.sources.get(cell.dataset, ""),
                   restart: bool = False):
        agg = comps.aggregate(grid_json=spec, store_root=store_root, tracking_uri=tracking_uri)
        configure_task(agg.set_display_name(f"aggregate {gid}"), opts, kind="aggregate", cache=False, labels=labels,
                       retry_window_s=short_window, local=local)

        def cells() -> dsl.PipelineTask:
            prep = comps.preprocess(source=source, dataset=cell.dataset, sample_rate=sample_rate, store_root=store_root,
                                    on_silent=grid.on_silent)
            configure_task(prep.set_display_name(f"preprocess {cell.dataset}@{sample_rate}"), opts, kind="preprocess",
                           cache=False, labels=labels, retry_window_s=short_window, local=local)
            train = comps.train_fold(
                config_json=cell.config.model_dump_json(), fold=cell.fold, grid_id=gid, tracking_uri=tracking_uri,
                store_root=store_root, data_uri=prep.outputs["Output"], restart=restart, device=device,
            )
            configure_task(train.set_display_name(f"train {cell.label}"), opts, kind="train", cache=False, labels=labels,
                           retry_window_s=retry_seconds(opts, expected_train_seconds(cell.config, opts), queue),
                           local=local)
            attack = comps.fgsm_attack(
                fold=cell.fold, grid_id=gid, tracking_uri=tracking_uri, store_root=store_root,
                data_uri=prep.outputs["Output"], trained=train.outputs["trained"], device=device,
            )
            return configure_task(attack.set_display_name(f"fgsm {cell.label}"), opts, kind="fgsm", cache=False,
                                  labels=labels, retry_window_s=retry_seconds(opts, queue_seconds=queue), local=local)

        if opts.exit_handler:
            with dsl.ExitHandler(agg, name=f"rerun {cell.label}"):
                cells()
        else:
            agg.after(cells())

    return rerun_fold


if __name__ == "__main__":
    if len(sys.argv) < 6:
        sys.exit("usage: python -m pipelines.rerun_pipeline GRID DATASET SETUP STRATEGY FOLD [OUT.yaml]")
    g = load_grid(sys.argv[1])
    c = find_cell(g, sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    out = sys.argv[6] if len(sys.argv) > 6 else "rerun.yaml"
    compiler.Compiler().compile(rerun_pipeline(g, c), out)
    print(out)
