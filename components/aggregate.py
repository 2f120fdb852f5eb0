"""Component: every fold result of a grid (read from the grid store) -> tables, plots, MLflow summary."""

from kfp.dsl import Artifact, Markdown, Output


def aggregate(grid_json: str, store_root: str, tracking_uri: str, reports: Output[Artifact], table: Output[Markdown],
              lane_done: str = ""):
    """Aggregate every result of the grid in the store (intermix_core.run.aggregate.grid_aggregate_step); Table 1 as
    Markdown. `lane_done`: the marker that lets the next run of this run's lane start, written however it ends."""
    import shutil

    from intermix_core.results.tables import format_terminal
    from intermix_core.run.aggregate import describe_absent, grid_aggregate_step
    from intermix_core.run.steps import lane_done_step

    try:
        grid_id, summary = grid_aggregate_step(grid_json, reports.path, store_root, tracking_uri or None)
    finally:
        if lane_done:
            lane_done_step(store_root, lane_done)
    print(format_terminal(summary))
    print(describe_absent(summary))
    shutil.copyfile(f"{reports.path}/table1.md", table.path)
    reports.metadata.update({"grid_id": grid_id, "results": summary.n_results, "absent_folds": len(summary.missing)})
