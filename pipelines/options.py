"""Cluster settings for compiled pipelines: images, resources, GPU placement, retries, caching volume, env.

None of these change what is trained (they are not part of the grid id) and the local runner
ignores all of them. docs/cluster.md explains each choice; the Helm chart publishes a
`cluster-options.yaml` in this shape.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from kfp import kubernetes
from kfp.dsl import PipelineTask
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.image import IMAGE_REPOSITORY
from intermix_core.common.yamlfile import load_yaml
from intermix_core.config import FOLD_CLIPS, ConfigError, format_validation_error
from intermix_core.method.devices import CUDA_BUILDS, DEFAULT_CUDA
from intermix_core.method.packing import auto_pack, split_folds
from intermix_core.run.estimate import fold_work

_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_DURATION = re.compile(r"^([0-9]+)([smhdw])$")
TaskKind = Literal["preprocess", "train", "fgsm", "aggregate"]
SCRATCH = "/scratch"  # the sized emptyDir every task gets: TMPDIR, raw downloads, datasets without a cache
DATA_CACHE = "/var/cache/intermix"  # where the data cache volume is mounted (INTERMIX_DATA_CACHE)
RUN_ID_LABEL = "pipeline/runid"  # set on every workflow pod by the KFP API server (backend/src/apiserver/template)

# Pessimistic GPU throughputs (training samples/s incl. data loading, T4-class GPU; an H100 is several
# times faster), with the training samples of the largest split (intermix_core.run.estimate.fold_work).
# They only size the retry window (retry_seconds): being generous costs nothing.
GPU_SAMPLES_PER_S = {"envnet_v2": 150.0, "envnet": 400.0, "m18": 300.0, "soundnet5": 400.0, "piczak_cnn": 800.0}
CPU_SAMPLES_PER_S_PER_CORE = {"envnet_v2": 2.5, "envnet": 6.0, "m18": 10.0, "soundnet5": 10.0, "piczak_cnn": 40.0}
MIN_RETRY_WINDOW_S = 6 * 3600  # FGSM, preprocessing, aggregation and short folds: at least 6 h
MAX_RETRY_WINDOW_S = 60 * 86400
# GPUs a grid may use at once unless told otherwise (the chart's pipeline.gpu.max default is the same number):
# one 8-GPU node, or a few smaller ones; it becomes fold-loop parallelism (pipelines/gpu_budget.py)
DEFAULT_MAX_GPUS = 8


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


def _quantity(v: str | None) -> str | None:
    if v is not None and not _QUANTITY.match(str(v)):
        raise ValueError(f"{v!r} is not a Kubernetes quantity (e.g. 500m, 4, 16Gi)")
    return None if v is None else str(v)


def quantity_value(text: str) -> float:
    """A Kubernetes quantity as a number (CPU cores or bytes): '500m' -> 0.5, '2Gi' -> 2147483648."""
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    scale = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(3)]
    return float(m.group(1)) * scale


class TaskResources(BaseModel):
    """Requests, limits and scratch space of one kind of task (Burstable QoS: memory request = limit by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cpu_request: str
    cpu_limit: str | None = None  # None: no CPU limit (no throttling; the request still reserves the cores)
    memory_request: str
    memory_limit: str
    scratch: str  # size limit of the emptyDir at /scratch (TMPDIR); exceeding it evicts the pod

    _check = field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", "scratch")(
        classmethod(lambda cls, v: _quantity(v)))

    def threads(self) -> int:
        """Threads for torch/OpenMP: the CPU request rounded up (at least 1)."""
        return max(1, math.ceil(quantity_value(self.cpu_request)))


def _default_resources() -> dict[str, TaskResources]:
    return {
        "preprocess": TaskResources(cpu_request="2", cpu_limit="4", memory_request="8Gi", memory_limit="8Gi",
                                    scratch="40Gi"),
        "train": TaskResources(cpu_request="4", cpu_limit="8", memory_request="16Gi", memory_limit="16Gi",
                               scratch="20Gi"),
        "fgsm": TaskResources(cpu_request="4", cpu_limit="8", memory_request="12Gi", memory_limit="12Gi",
                              scratch="20Gi"),
        "aggregate": TaskResources(cpu_request="1", cpu_limit="2", memory_request="4Gi", memory_limit="4Gi",
                                   scratch="2Gi"),
    }


class ClusterOptions(BaseModel):
    """How grid tasks are built, placed, sized and retried on a cluster (docs/cluster.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # images: named by a hash of their build inputs at compile time (components/image.py); a digest pins harder
    image_repository: str = IMAGE_REPOSITORY
    image_tag: str | None = None  # default '<version>-<hash of the image inputs>' of the compiling checkout
    image_digests: dict[Literal["cpu", "cuda"], str] = Field(default_factory=dict)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"  # tags are immutable
    cuda_version: str = DEFAULT_CUDA  # the cuda image's CUDA build (its tag ends in -cuda<version>; driver matrix)
    # GPU placement: the GPU resource request is what lands a task on a GPU node; no node label is required
    gpu_type: str = "nvidia.com/gpu"
    gpus: int = Field(default=1, ge=0)  # per train / attack task; 0 runs them on CPU nodes (device 'cpu')
    # tolerate the NoSchedule taint named like the resource (nvidia.com/gpu), as GPU node pools commonly carry
    gpu_taint_toleration: bool = True
    node_selector: dict[str, str] = Field(default_factory=dict)  # GPU tasks only
    tolerations: list[Toleration] = Field(default_factory=list)  # GPU tasks only, besides the taint toleration
    # sizes, per kind of task
    resources: dict[TaskKind, TaskResources] = Field(default_factory=_default_resources)
    # retries: Argo counts backoffMaxDuration from the first attempt's start (see retry_seconds)
    retries: int = Field(default=2, ge=0)
    retry_backoff: str = "60s"
    retry_max_duration: str | None = None  # e.g. "72h" for every task; None: from each task's expected duration
    duration_scale: float = Field(default=1.0, gt=0)  # >1 for slower GPUs than the T4 the estimate assumes
    # fan-out: GPUs the whole grid may use at once (0: no bound), split into fold-loop parallelism by
    # pipelines/gpu_budget.py; the chart's GPU ResourceQuota takes the same number
    max_gpus: int = Field(default=DEFAULT_MAX_GPUS, ge=0)
    parallelism: int = Field(default=0, ge=0)  # at most this many tasks (folds or packs) at once per loop; 0: no cap
    # fold packs: folds of a cell one train task trains as one fused model (intermix_core.method.packing);
    # 0: as many as fit in gpu_memory_gib on GPU tasks (all of a cell's folds where they fit), 1 on CPU tasks
    pack: int = Field(default=0, ge=0)
    gpu_memory_gib: float = Field(default=80.0, gt=0)  # memory of one GPU of gpu_type (H100: 80; A10: 24; T4: 16)
    # a node-level dataset cache: a PVC (e.g. the chart's hostPath volume) mounted at DATA_CACHE
    data_cache_pvc: str | None = None
    data_cache_max_gb: float = Field(default=0, ge=0)  # 0: no eviction
    # the aggregation as exit handler (runs after failed folds too); False: a plain last task, for
    # backends where ParallelFor inside ExitHandler misbehaves (kubeflow/pipelines #12390)
    exit_handler: bool = True
    pod_labels: dict[str, str] = Field(default_factory=dict)  # on every task pod (cost allocation, policies)
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, list[str]] = Field(default_factory=dict)  # Secret name -> keys exposed as env vars
    env: dict[str, str] = Field(default_factory=dict)  # plain env vars on every task (e.g. MLFLOW_S3_ENDPOINT_URL)

    @field_validator("resources", mode="before")
    @classmethod
    def _fill_resources(cls, v: object) -> object:
        # a partial mapping (e.g. only `train`) keeps the defaults of the other kinds
        if isinstance(v, dict):
            base = {k: r.model_dump() for k, r in _default_resources().items()}
            for kind, res in v.items():
                base[kind] = {**base.get(kind, {}), **res} if isinstance(res, dict) and kind in base else res
            return base
        return v

    @field_validator("cuda_version")
    @classmethod
    def _cuda(cls, v: str) -> str:
        if v not in CUDA_BUILDS:
            raise ValueError(f"{v!r} is not a CUDA build of the images; expected one of {', '.join(CUDA_BUILDS)}")
        return v

    @model_validator(mode="after")
    def _budget_fits_a_task(self) -> "ClusterOptions":
        if self.max_gpus and self.gpus > self.max_gpus:
            raise ValueError(f"max_gpus {self.max_gpus} is less than gpus {self.gpus} per task: no task could run")
        return self

    def gpu_slots(self) -> int | None:
        """Train/FGSM tasks the GPU budget lets run at once (max_gpus // gpus); None without a budget."""
        if not self.max_gpus:
            return None
        return self.max_gpus // self.gpus if self.gpus else self.max_gpus

    def gpu_tolerations(self) -> list[Toleration]:
        """The GPU tasks' tolerations: the taint named like the GPU resource (unless turned off), then the listed ones."""
        default = [Toleration(key=self.gpu_type, operator="Exists", effect="NoSchedule")] \
            if self.gpu_taint_toleration and self.gpus else []
        return default + [t for t in self.tolerations if t not in default]

    @field_validator("retry_backoff", "retry_max_duration")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None and not _DURATION.match(v):
            raise ValueError(f"{v!r} is not a duration; expected a number and a unit s, m, h, d or w (e.g. 60s, 72h)")
        return v

    def pack_size(self, cfg: object, folds: int) -> int:
        """Folds per train task for a loop of `folds` folds of `cfg`: `pack` if set, else sized to the GPUs' memory, 1 on CPUs."""
        if self.pack:
            return min(self.pack, folds)
        if not self.gpus:
            return 1
        return auto_pack(cfg, folds, self.gpu_memory_gib)  # type: ignore[arg-type]  # a pack trains on one GPU

    def packs(self, cfg: object, folds: tuple[int, ...] | list[int], local: bool = False) -> list[list[int]]:
        """A fold loop's packs: `folds` split into as few as `pack_size` allows (evenly); locally `pack` or 1 fold each."""
        k = (self.pack or 1) if local else self.pack_size(cfg, len(folds))
        return split_folds(folds, k)

    def device(self) -> str:
        """The device the GPU components are told to use: 'cuda' when tasks get GPUs, else 'cpu'."""
        return "cuda" if self.gpus else "cpu"

    def merged(
        self, *, secret_env: dict[str, list[str]] | None = None, node_selector: dict[str, str] | None = None,
        tolerations: list[Toleration] | None = None, env: dict[str, str] | None = None,
        image_digests: dict[str, str] | None = None, cpu_limit: str | None = None, memory_limit: str | None = None,
        **values: object,
    ) -> "ClusterOptions":
        """These options with more on top (command-line flags over a file): mappings and lists extend, values replace.

        `values` are plain fields (gpus, retries, image_tag, exit_handler, ...; None means not given);
        cpu_limit / memory_limit apply to the GPU tasks (train, fgsm). Errors name the field (ConfigError).
        """
        update: dict[str, object] = {
            "secret_env": {**self.secret_env, **(secret_env or {})},
            "node_selector": {**self.node_selector, **(node_selector or {})},
            "tolerations": [*self.tolerations, *(tolerations or [])],
            "env": {**self.env, **(env or {})},
            "image_digests": {**self.image_digests, **(image_digests or {})},
            **{k: v for k, v in values.items() if v is not None},
        }
        resources = {k: r.model_dump() for k, r in self.resources.items()}
        for kind in ("train", "fgsm"):
            if kind in resources and cpu_limit is not None:
                resources[kind]["cpu_limit"] = cpu_limit
            if kind in resources and memory_limit is not None:
                resources[kind]["memory_request"] = resources[kind]["memory_limit"] = memory_limit
        update["resources"] = resources
        try:
            return ClusterOptions.model_validate({**self.model_dump(), **update})
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, "cluster options")) from None


def load_cluster_options(path: str | Path) -> ClusterOptions:
    """ClusterOptions from a YAML file (e.g. the Helm chart's `cluster-options.yaml`); errors name the file and field."""
    data = load_yaml(path)
    try:
        return ClusterOptions.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None


def label_value(text: str) -> str:
    """A string made valid as a Kubernetes label value (63 chars, [A-Za-z0-9_.-])."""
    return _LABEL_VALUE.sub("-", text)[:63].strip("-_.")


def _seconds(duration: str) -> int:
    m = _DURATION.match(duration)
    assert m, duration
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


def expected_train_seconds(cfg: object, opts: ClusterOptions, pack: int = 1) -> float:
    """A pessimistic estimate of one task's training time: epochs x train clips / throughput (+10% evaluation),
    times the folds of its pack (as if they trained one after another: a pack is faster, never slower)."""
    model, dataset = cfg.model, cfg.dataset  # type: ignore[attr-defined]
    folds = range(1, len(FOLD_CLIPS[dataset]) + 1)
    samples = max(fold_work(cfg, f).train_samples for f in folds)  # the largest training set of the dataset
    if opts.gpus:
        rate = GPU_SAMPLES_PER_S.get(model, min(GPU_SAMPLES_PER_S.values()))
    else:
        per_core = CPU_SAMPLES_PER_S_PER_CORE.get(model, min(CPU_SAMPLES_PER_S_PER_CORE.values()))
        rate = per_core * opts.resources["train"].threads()
    return 1.1 * samples / rate * opts.duration_scale * pack


def retry_seconds(opts: ClusterOptions, attempt_seconds: float = 0.0, queue_seconds: float = 0.0) -> int:
    """backoffMaxDuration for a task whose attempt takes up to attempt_seconds after waiting up to queue_seconds for a GPU.

    Argo measures it from the FIRST attempt's start, refuses any retry after it, and gives a retry
    pod the rest as its deadline (argo-workflows workflow/controller/operator.go processNodeRetries).
    An attempt starts when Argo initialises its node, before the pod exists (operator.go,
    initializeNode stamps StartedAt), so time a pod waits for a GPU (quota, Pending) counts too.
    So it must cover every attempt, each one's wait, and every backoff:
    (retries + 1) x (2 x attempt + wait) + the backoffs.
    """
    if opts.retry_max_duration:
        return _seconds(opts.retry_max_duration)
    backoff = _seconds(opts.retry_backoff)
    waits = sum(backoff * 2**i for i in range(opts.retries))  # factor 2.0, as configure_task sets it
    window = (opts.retries + 1) * (2 * attempt_seconds + queue_seconds) + waits
    return int(min(MAX_RETRY_WINDOW_S, max(MIN_RETRY_WINDOW_S, math.ceil(window))))


def configure_task(task: PipelineTask, opts: ClusterOptions, *, kind: TaskKind, cache: bool,
                   labels: dict[str, str], retry_window_s: int | None = None, local: bool = False) -> PipelineTask:
    """Apply caching, retries, resources, scratch, env, secrets, labels, lineage and (train/FGSM) GPU placement.

    local=True (KFP's local runner, which applies env vars but no Kubernetes settings): no TMPDIR
    or thread count pointing at the pod's scratch volume and CPU request.
    """
    task.set_caching_options(cache)
    window = retry_window_s if retry_window_s is not None else retry_seconds(opts)
    task.set_retry(num_retries=opts.retries, backoff_duration=opts.retry_backoff, backoff_factor=2.0,
                   backoff_max_duration=f"{window}s")
    res = opts.resources[kind]
    task.set_cpu_request(res.cpu_request).set_memory_request(res.memory_request).set_memory_limit(res.memory_limit)
    if res.cpu_limit:
        task.set_cpu_limit(res.cpu_limit)
    # scratch on a sized emptyDir (raw downloads, datasets without a cache, TMPDIR); threads = CPU request
    kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=SCRATCH, size_limit=res.scratch)
    if not local:
        task.set_env_variable("TMPDIR", SCRATCH)
        task.set_env_variable("OMP_NUM_THREADS", str(res.threads()))
    if not local and task.container_spec is not None:  # lineage: fold runs record their image (tracking.py)
        task.set_env_variable("INTERMIX_IMAGE", task.container_spec.image)
    for name, value in opts.env.items():
        task.set_env_variable(name, value)
    for secret, keys in opts.secret_env.items():
        kubernetes.use_secret_as_env(task, secret, {k: k for k in keys})
    # lineage: the run id reaches MLflow through the pod spec, not as an input (inputs are cache keys)
    kubernetes.use_field_path_as_env(task, "KFP_RUN_ID", f"metadata.labels['{RUN_ID_LABEL}']")
    for key, value in {**opts.pod_labels, **{f"intermix/{k}": label_value(v) for k, v in labels.items()}}.items():
        kubernetes.add_pod_label(task, key, value)
    for key, value in opts.pod_annotations.items():
        kubernetes.add_pod_annotation(task, key, value)
    kubernetes.set_image_pull_policy(task, opts.image_pull_policy)
    if kind in ("train", "fgsm"):
        if opts.gpus:
            task.set_accelerator_type(opts.gpu_type).set_accelerator_limit(opts.gpus)
        if opts.data_cache_pvc:
            kubernetes.mount_pvc(task, pvc_name=opts.data_cache_pvc, mount_path=DATA_CACHE)
            task.set_env_variable("INTERMIX_DATA_CACHE", DATA_CACHE)
            if opts.data_cache_max_gb:
                task.set_env_variable("INTERMIX_DATA_CACHE_MAX_GB", f"{opts.data_cache_max_gb:g}")
        for key, value in opts.node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for t in opts.gpu_tolerations():
            kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect,
                                      toleration_seconds=t.toleration_seconds)
    return task
