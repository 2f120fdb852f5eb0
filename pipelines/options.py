"""Cluster settings for compiled pipelines: GPU requests, node placement, retries, secrets as env.

None of these change what is trained (they are not part of the grid id) and the local runner
ignores all of them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from kfp import kubernetes
from kfp.dsl import PipelineTask
from pydantic import BaseModel, ConfigDict, Field, ValidationError

_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


class Toleration(BaseModel):
    """One Kubernetes toleration for the GPU tasks."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = None
    toleration_seconds: int | None = Field(default=None, alias="tolerationSeconds")  # Kubernetes spelling accepted

    @classmethod
    def parse(cls, text: str) -> "Toleration":
        """'key=value:Effect' (Equal), 'key:Effect' or 'key' (Exists); the effect is optional."""
        body, _, effect = text.partition(":")
        key, eq, value = body.partition("=")
        return cls(key=key or None, operator="Equal" if eq else "Exists", value=value if eq else None,
                   effect=effect or None)  # type: ignore[arg-type]


class ClusterOptions(BaseModel):
    """How grid tasks are placed and retried on a cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu_type: str = "nvidia.com/gpu"
    gpus: int = Field(default=1, ge=0)  # per train / attack task; 0 runs them on CPU nodes
    node_selector: dict[str, str] = Field(default_factory=dict)  # GPU tasks only
    tolerations: list[Toleration] = Field(default_factory=list)  # GPU tasks only
    retries: int = Field(default=2, ge=0)
    retry_backoff: str = "60s"
    parallelism: int = Field(default=0, ge=0)  # fold iterations at once per strategy loop; 0 = unlimited
    memory_limit: str | None = None  # GPU tasks, e.g. "32G"
    cpu_limit: str | None = None  # GPU tasks, e.g. "8"
    secret_env: dict[str, list[str]] = Field(default_factory=dict)  # Secret name -> keys exposed as env vars
    env: dict[str, str] = Field(default_factory=dict)  # plain env vars on every task (e.g. MLFLOW_S3_ENDPOINT_URL)


def load_cluster_options(path: str | Path) -> ClusterOptions:
    """ClusterOptions from a YAML file (e.g. the Helm chart's `cluster-options.yaml`); errors name the file and field."""
    from intermix_core.config import ConfigError, format_validation_error, load_yaml

    data = load_yaml(path)
    try:
        return ClusterOptions.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None


def label_value(text: str) -> str:
    """A string made valid as a Kubernetes label value (63 chars, [A-Za-z0-9_.-])."""
    return _LABEL_VALUE.sub("-", text)[:63].strip("-_.")


def configure_task(task: PipelineTask, opts: ClusterOptions, *, gpu: bool, cache: bool, labels: dict[str, str]) -> PipelineTask:
    """Apply caching, retries, env, secrets, labels and (for GPU tasks) accelerator and placement."""
    task.set_caching_options(cache)
    task.set_retry(num_retries=opts.retries, backoff_duration=opts.retry_backoff, backoff_factor=2.0)
    for name, value in opts.env.items():
        task.set_env_variable(name, value)
    for secret, keys in opts.secret_env.items():
        kubernetes.use_secret_as_env(task, secret, {k: k for k in keys})
    for key, value in labels.items():
        kubernetes.add_pod_label(task, f"intermix/{key}", label_value(value))
    if gpu:
        if opts.gpus:
            task.set_accelerator_type(opts.gpu_type).set_accelerator_limit(opts.gpus)
        if opts.cpu_limit:
            task.set_cpu_limit(opts.cpu_limit)
        if opts.memory_limit:
            task.set_memory_limit(opts.memory_limit)
        for key, value in opts.node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for t in opts.tolerations:
            kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect,
                                      toleration_seconds=t.toleration_seconds)
    return task
