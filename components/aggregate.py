"""Component: every fold result of a grid (read from the grid store) -> tables, plots, MLflow summary."""

from kfp.dsl import Artifact, Markdown, Output


def aggregate(grid_json: str, store_root: str, tracking_uri: str, reports: Output[Artifact], table: Output[Markdown]):
    """Aggregate every result of the grid in the store (intermix_core.run.aggregate.grid_aggregate_step); Table 1 as Markdown."""
    import shutil

    from intermix_core.results.tables import format_terminal
    from intermix_core.run.aggregate import describe_absent, grid_aggregate_step

    grid_id, summary = grid_aggregate_step(grid_json, reports.path, store_root, tracking_uri or None)
    print(format_terminal(summary))
    print(describe_absent(summary))
    shutil.copyfile(f"{reports.path}/table1.md", table.path)
    reports.metadata.update({"grid_id": grid_id, "results": summary.n_results, "absent_folds": len(summary.missing)})
