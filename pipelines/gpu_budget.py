"""The grid's GPU budget: how `max_gpus` becomes fold-loop parallelism, and how long a GPU task may wait for a GPU.

All runs of a grid start together and each has one fold loop per strategy (the paper grid: 18 runs,
78 loops, 520 folds), so only a bound over the whole grid keeps its GPU pods within the GPUs it may
use. `ClusterOptions.max_gpus` is that bound; the Helm chart renders the namespace's GPU
ResourceQuota from the same value (`pipeline.gpu.max`). `plan_gpus` splits it over the grid's
loops as KFP ParallelFor parallelism, which the backend compiles to the Argo `parallelism` of the
loop template (kubeflow/pipelines backend/src/v2/compiler/argocompiler/dag.go); Argo starts no
iteration beyond it (argo-workflows workflow/controller/operator.go checks parallelism before it
initialises a node), so a held-back fold neither holds a GPU nor starts its retry clock. Each loop
gets at least one fold at a time; what is left goes to the loops with the most training time per
running fold (at most one per fold), so long loops do not finish last by far.

When a grid has more loops than GPU slots, the loops together start more GPU tasks than the budget
allows, and the quota holds the excess pods back (Argo creates them later: an "exceeded quota"
error is transient, util/errors/errors.go). Their attempts have started already (Argo stamps an
attempt's StartedAt when it initialises the node, before the pod exists), so the wait counts
against backoffMaxDuration. `queue_seconds` bounds it: a started task has at most
`in_flight - slots` others ahead of it, served `slots` at a time, each for at most the longest
attempt of the grid. Quota admission is not first-come first-served, so this is an estimate of a
fair queue, generous by design (pipelines/options.py: retry_seconds).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from intermix_core.config.grid import GridSpec, shards
from pipelines.options import ClusterOptions, expected_train_seconds

LoopKey = tuple[str, str, str]  # (dataset, setup, strategy): one fold loop of one shard run


@dataclass(frozen=True)
class GpuPlan:
    """How many folds each loop runs at once, and what that means for GPUs."""

    slots: int | None  # GPU tasks the budget allows at once (max_gpus // gpus); None: no budget
    parallelism: dict[LoopKey, int]  # the loop's ParallelFor parallelism; 0: no limit
    in_flight: int  # GPU tasks the loops can start at once (one per running fold: train, then FGSM)
    longest_attempt_s: float  # the longest expected training attempt of the grid
    queue_seconds: float  # how long a started GPU task may wait for a GPU, at most; 0: never

    def bounds(self) -> str:
        """One line for `submit`: how many GPU tasks the compiled grid can run at once, and what bounds them.

        It counts GPU tasks (today one per running fold; a task that trains several folds counts once).
        """
        loops = len(self.parallelism)
        if self.slots is None:
            return (f"GPU tasks at once: up to {self.in_flight} ({loops} fold loops, no GPU budget: max_gpus 0); "
                    "only a namespace quota or the cluster's GPUs bound them")
        if self.in_flight <= self.slots:
            return (f"GPU tasks at once: at most {self.in_flight}, bounded by the compiled fold-loop parallelism "
                    f"(the GPU budget of {self.slots} task(s) split over {loops} loops); a GPU quota is a second bound")
        held = self.in_flight - self.slots
        return (f"GPU tasks at once: up to {self.in_flight} ({loops} fold loops, each running at least one fold) for a "
                f"GPU budget of {self.slots} task(s): only the namespace GPU quota (chart value pipeline.gpu.quota) "
                f"or a Kueue queue holds the other {held} back; without one they wait Pending for GPUs and an "
                'autoscaler may grow the GPU pool (docs/cluster.md, "How many GPU tasks run at once")')

    def loop(self, dataset: str, setup: str, strategy: str) -> int:
        """The parallelism of one loop."""
        return self.parallelism[(dataset, setup, strategy)]


def plan_gpus(grid: GridSpec, opts: ClusterOptions) -> GpuPlan:
    """The GPU plan of `grid` under `opts` (max_gpus, gpus, parallelism, the expected attempt durations)."""
    loops: dict[LoopKey, tuple[int, float]] = {}  # key -> (folds, expected seconds of one training attempt)
    for shard in shards(grid):
        for strategy, cfg in shard.configs.items():
            loops[(shard.dataset, shard.setup, strategy)] = (len(shard.folds), expected_train_seconds(cfg, opts))
    cap = {k: min(folds, opts.parallelism or folds) for k, (folds, _) in loops.items()}
    slots = opts.gpu_slots()
    if slots is None:
        parallelism = {k: opts.parallelism for k in loops}
    else:
        parallelism = {k: 1 for k in loops}
        spare = slots - len(loops)
        # one more running fold to the loop whose remaining training per running fold is longest
        heap = [(-folds * attempt, k) for k, (folds, attempt) in loops.items() if cap[k] > 1]
        heapq.heapify(heap)
        while spare > 0 and heap:
            _, k = heapq.heappop(heap)
            parallelism[k] += 1
            spare -= 1
            if parallelism[k] < cap[k]:
                folds, attempt = loops[k]
                heapq.heappush(heap, (-folds * attempt / parallelism[k], k))
    in_flight = sum(min(p, cap[k]) if p else cap[k] for k, p in parallelism.items())
    longest = max((attempt for _, attempt in loops.values()), default=0.0)
    queue = 0.0 if slots is None or in_flight <= slots else math.ceil((in_flight - slots) / slots) * longest
    return GpuPlan(slots, parallelism, in_flight, longest, queue)
