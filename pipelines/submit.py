"""Submit grid and rerun pipelines to a Kubeflow Pipelines endpoint: one run per shard, one KFP experiment."""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kfp import compiler
from pydantic import BaseModel, ConfigDict

from intermix_core.grid import Cell, GridSpec, grid_id
from pipelines.grid_pipeline import grid_pipelines
from pipelines.options import ClusterOptions
from pipelines.rerun_pipeline import rerun_pipeline


class KfpEndpoint(BaseModel):
    """Where and how to reach the KFP API (the CLI fills it from flags and KFP_* environment variables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host: str
    namespace: str | None = None
    existing_token: str | None = None
    ssl_ca_cert: str | None = None
    experiment: str | None = None  # default: the grid id
    service_account: str | None = None


@dataclass(frozen=True)
class SubmittedRun:
    """One created KFP run."""

    label: str
    run_id: str
    run_name: str


def kfp_client(endpoint: KfpEndpoint) -> Any:
    """A kfp.Client for the endpoint."""
    import kfp

    return kfp.Client(
        host=endpoint.host, namespace=endpoint.namespace or "kubeflow", existing_token=endpoint.existing_token,
        ssl_ca_cert=endpoint.ssl_ca_cert,
    )


def _create_run(client: Any, pipeline: Any, endpoint: KfpEndpoint, experiment: str, run_name: str,
                arguments: dict[str, Any], enable_caching: bool | None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        run = client.create_run_from_pipeline_package(
            str(path), arguments=arguments, run_name=run_name, experiment_name=experiment,
            namespace=endpoint.namespace, enable_caching=enable_caching, service_account=endpoint.service_account,
        )
    return run.run_id


def submit_grid(
    grid: GridSpec, endpoint: KfpEndpoint, store_root: str, tracking_uri: str = "",
    sources: dict[str, str] | None = None, opts: ClusterOptions | None = None, enable_caching: bool | None = None,
    client: Any = None,
) -> list[SubmittedRun]:
    """Create one KFP run per dataset x setup of `grid` under one experiment (default: the grid id)."""
    gid = grid_id(grid)
    client = client or kfp_client(endpoint)
    sources = {**grid.sources, **(sources or {})}
    runs = []
    for shard, pipe in grid_pipelines(grid, opts):
        name = f"{gid} {shard.label}"
        args = {"store_root": store_root, "tracking_uri": tracking_uri, "source": sources.get(shard.dataset, "")}
        runs.append(SubmittedRun(shard.label, _create_run(client, pipe, endpoint, endpoint.experiment or gid, name, args, enable_caching), name))
    return runs


def submit_rerun(
    grid: GridSpec, cell: Cell, endpoint: KfpEndpoint, store_root: str, tracking_uri: str = "",
    source: str | None = None, restart: bool = False, opts: ClusterOptions | None = None, client: Any = None,
) -> SubmittedRun:
    """Create the KFP run that retrains one fold of `grid` and re-aggregates it."""
    gid = grid_id(grid)
    client = client or kfp_client(endpoint)
    name = f"{gid} rerun {cell.label}"
    args = {"store_root": store_root, "tracking_uri": tracking_uri,
            "source": source or grid.sources.get(cell.dataset, ""), "restart": restart}
    run_id = _create_run(client, rerun_pipeline(grid, cell, opts), endpoint, endpoint.experiment or gid, name, args, None)
    return SubmittedRun(cell.label, run_id, name)
