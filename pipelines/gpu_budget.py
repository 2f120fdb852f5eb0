"""The grid's GPU budget: how `max_gpus` becomes fold-loop parallelism, and how long a GPU task may wait for a GPU.

All runs of a grid start together and each has one fold loop per strategy (the paper grid: 18 runs,
78 loops, 520 folds), so only a bound over the whole grid keeps its GPU pods within the GPUs it may
use. `ClusterOptions.max_gpus` is that bound; the Helm chart renders the namespace's GPU
ResourceQuota from the same value (`pipeline.gpu.max`). `plan_gpus` turns it into the compiled
structure, counting GPU tasks: one per running fold, or per running fold pack (several folds of a
cell in one task, `ClusterOptions.pack`; on GPUs by default all of a cell's folds that fit, so the
paper grid's 520 folds become 78 packs, one per loop):

* at least as many GPU slots (max_gpus // gpus) as loops: the loops run side by side and the slots
  are split over them as KFP ParallelFor parallelism, each loop at least one fold, the rest to the
  loops with the most training per running fold (at most one per fold);
* fewer slots than loops: each run gets a width (at least 1, the rest to the runs with the most
  training per unit of width), and a run narrower than its loop count runs its loops one after
  another (`sequential`: each loop waits for the one before, kubeflow/pipelines compiles the
  `.after()` into the loop task's dependentTasks), each with the run's width as parallelism. Then the
  grid starts at most `max(slots, runs)` GPU tasks: at or above the run count (18 for the paper grid)
  the compiled grid alone keeps within the budget; below it one GPU task per run is the floor and the
  quota (or a Kueue queue) holds the rest back.

Parallelism compiles to the Argo `parallelism` of the loop template (kubeflow/pipelines
backend/src/v2/compiler/argocompiler/dag.go); Argo starts no iteration beyond it (argo-workflows
workflow/controller/operator.go checks parallelism before it initialises a node), so a held-back
fold neither holds a GPU nor starts its retry clock; a loop waiting for the one before it has not
started either. A failed loop stops the loops queued after it in its run (KFP does not start a task
whose upstream failed): submitting the grid again resumes them (docs/cluster.md, section 5).

When the grid starts more GPU tasks than the budget allows (fewer slots than runs), the quota holds
the excess pods back (Argo creates them later: an "exceeded quota" error is transient,
util/errors/errors.go). Their attempts have started already (Argo stamps an attempt's StartedAt when
it initialises the node, before the pod exists), so the wait counts against backoffMaxDuration.
`queue_seconds` bounds it: a started task has at most `in_flight - slots` others ahead of it, served
`slots` at a time, each for at most the longest attempt of the grid. Quota admission is not
first-come first-served, so this is an estimate of a fair queue, generous by design
(pipelines/options.py: retry_seconds).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from intermix_core.config.grid import GridSpec, shards
from pipelines.options import ClusterOptions, expected_train_seconds

LoopKey = tuple[str, str, str]  # (dataset, setup, strategy): one fold loop of one shard run
RunKey = tuple[str, str]  # (dataset, setup): one shard run


@dataclass(frozen=True)
class GpuPlan:
    """How many folds each loop runs at once, whether a run's loops run one after another, and what that means for GPUs."""

    slots: int | None  # GPU tasks the budget allows at once (max_gpus // gpus); None: no budget
    parallelism: dict[LoopKey, int]  # the loop's ParallelFor parallelism; 0: no limit
    in_flight: int  # GPU tasks the compiled grid can start at once (one per running fold or pack: train, then FGSM)
    longest_attempt_s: float  # the longest expected training attempt of the grid
    queue_seconds: float  # how long a started GPU task may wait for a GPU, at most; 0: never
    sequential: frozenset[RunKey] = frozenset()  # runs whose loops run one after another
    # fewer slots than runs: each run's predecessor in its lane (None: a lane's first run), and how long its gate
    # waits for that predecessor at most; empty otherwise
    lanes: dict[RunKey, RunKey | None] = field(default_factory=dict)
    lane_wait_s: dict[RunKey, float] = field(default_factory=dict)

    def bounds(self) -> str:
        """One line for `submit`: how many GPU tasks the compiled grid can run at once, and what bounds them."""
        loops, runs = len(self.parallelism), len({k[:2] for k in self.parallelism})
        if self.slots is None:
            return (f"GPU tasks at once: up to {self.in_flight} ({loops} fold loops, no GPU budget: max_gpus 0); "
                    "only a namespace quota or the cluster's GPUs bound them")
        if self.lanes:
            return (f"GPU tasks at once: at most {self.in_flight}, bounded by the compiled grid ({runs} runs in "
                    f"{self.in_flight} lanes: a run starts its GPU tasks when the run before it in its lane has ended, "
                    f"and runs its loops one after another) for a GPU budget of {self.slots} task(s); a GPU quota is "
                    "a second bound")
        how = (f"{len(self.sequential)} of {runs} runs run their loops one after another" if self.sequential
               else f"the budget split over {loops} loops side by side")
        if self.in_flight <= self.slots:
            return (f"GPU tasks at once: at most {self.in_flight}, bounded by the compiled grid ({how}) for a GPU "
                    f"budget of {self.slots} task(s); a GPU quota is a second bound")
        held = self.in_flight - self.slots
        return (f"GPU tasks at once: up to {self.in_flight} (one per run at least: {runs} runs; {how}) for a "
                f"GPU budget of {self.slots} task(s): only the namespace GPU quota (chart value pipeline.gpu.quota) "
                f"or a Kueue queue holds the other {held} back; without one they wait Pending for GPUs and an "
                'autoscaler may grow the GPU pool (docs/cluster.md, "How many GPU tasks run at once")')

    def loop(self, dataset: str, setup: str, strategy: str) -> int:
        """The parallelism of one loop."""
        return self.parallelism[(dataset, setup, strategy)]

    def is_sequential(self, dataset: str, setup: str) -> bool:
        """Whether the run of (dataset, setup) runs its loops one after another."""
        return (dataset, setup) in self.sequential


def _split(keys: list[LoopKey], work: dict[LoopKey, tuple[int, float]], cap: dict[LoopKey, int],
           slots: int) -> dict[LoopKey, int]:
    """Spread `slots` (>= len(keys)) over side-by-side loops: one each, the rest to the most training per running task."""
    parallelism = {k: 1 for k in keys}
    spare = slots - len(keys)
    heap = [(-work[k][0] * work[k][1], k) for k in keys if cap[k] > 1]
    heapq.heapify(heap)
    while spare > 0 and heap:
        _, k = heapq.heappop(heap)
        parallelism[k] += 1
        spare -= 1
        if parallelism[k] < cap[k]:
            folds, attempt = work[k]
            heapq.heappush(heap, (-folds * attempt / parallelism[k], k))
    return parallelism


def plan_gpus(grid: GridSpec, opts: ClusterOptions, local: bool = False) -> GpuPlan:
    """The GPU plan of `grid` under `opts` (max_gpus, gpus, parallelism, pack sizes, the expected attempt durations)."""
    loops: dict[LoopKey, tuple[int, float]] = {}  # key -> (tasks: folds or packs, expected seconds of one attempt)
    runs: dict[RunKey, list[LoopKey]] = {}
    for shard in shards(grid):
        for strategy, cfg in shard.configs.items():
            key = (shard.dataset, shard.setup, strategy)
            packs = opts.packs(cfg, shard.folds, local)
            loops[key] = (len(packs), expected_train_seconds(cfg, opts, max(len(p) for p in packs)))
            runs.setdefault(key[:2], []).append(key)
    cap = {k: min(folds, opts.parallelism or folds) for k, (folds, _) in loops.items()}
    slots = opts.gpu_slots()
    sequential: set[RunKey] = set()
    if slots is None:
        parallelism = {k: opts.parallelism for k in loops}
        in_flight = sum(cap.values())
    elif slots >= len(loops):
        parallelism = _split(list(loops), loops, cap, slots)
        in_flight = sum(min(p, cap[k]) for k, p in parallelism.items())
    else:
        # fewer slots than loops: a width per run, at least 1; the rest to the most training per unit of width
        width = {r: 1 for r in runs}
        total = {r: sum(loops[k][0] * loops[k][1] for k in keys) for r, keys in runs.items()}
        most = {r: sum(cap[k] for k in keys) for r, keys in runs.items()}  # more would leave slots idle
        spare = slots - len(runs)
        heap = [(-total[r], r) for r in runs if most[r] > 1]
        heapq.heapify(heap)
        while spare > 0 and heap:
            _, r = heapq.heappop(heap)
            width[r] += 1
            spare -= 1
            if width[r] < most[r]:
                heapq.heappush(heap, (-total[r] / width[r], r))
        parallelism = {}
        in_flight = 0
        for r, keys in runs.items():
            if width[r] >= len(keys):  # wide enough for its loops side by side
                split = _split(keys, loops, cap, width[r])
                parallelism.update(split)
                in_flight += sum(min(p, cap[k]) for k, p in split.items())
            else:  # one loop after another, each as wide as the run
                sequential.add(r)
                parallelism.update({k: min(width[r], cap[k]) for k in keys})
                in_flight += max(min(width[r], cap[k]) for k in keys)
    longest = max((attempt for _, attempt in loops.values()), default=0.0)
    if slots is not None and slots < len(runs) and not local:  # one GPU task per run is still too many: lanes
        lanes, waits = _lanes(runs, loops, slots, opts.retries)
        return GpuPlan(slots, parallelism, min(in_flight, slots), longest, 0.0, frozenset(sequential), lanes, waits)
    queue = 0.0 if slots is None or in_flight <= slots else math.ceil((in_flight - slots) / slots) * longest
    return GpuPlan(slots, parallelism, in_flight, longest, queue, frozenset(sequential))


def _lanes(runs: dict[RunKey, list[LoopKey]], loops: dict[LoopKey, tuple[int, float]], slots: int, retries: int
           ) -> tuple[dict[RunKey, RunKey | None], dict[RunKey, float]]:
    """Runs (in file order) dealt to `slots` lanes, each to the lane that ends soonest; each run's predecessor in its
    lane, and how long its gate may wait: the expected time of every run before it in the lane, all attempts, x 2."""
    ends = [(0.0, lane) for lane in range(slots)]
    last: list[RunKey | None] = [None] * slots
    lanes: dict[RunKey, RunKey | None] = {}
    waits: dict[RunKey, float] = {}
    for run, keys in runs.items():  # a run's loops, one after another, one task at a time
        busy, lane = heapq.heappop(ends)
        lanes[run], waits[run] = last[lane], 2 * busy
        last[lane] = run
        heapq.heappush(ends, (busy + (retries + 1) * sum(loops[k][0] * loops[k][1] for k in keys), lane))
    return lanes, waits
