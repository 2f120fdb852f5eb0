"""Aggregation: fold results -> the paper's tables (mean ± SE over folds) and paired tests, as one Summary.

The report writers live in `intermix_core.results.tables`.

Selection rule (reruns): results sharing (dataset, setup, strategy, fold) are resolved by input
order, later items winning; a successful result always beats a failed one, so "failed, then ok" is
ok and "ok, then failed" keeps the ok result (with a note). `collect_results` returns files
oldest-first by modification time, so a rerun's newer file wins.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, computed_field
from scipy import stats

from intermix_core.config import DATASETS, ExperimentConfig, result_problem
from intermix_core.records import FoldResult, load_result
from intermix_core.results import paper as pub
from intermix_core.results.paper import display_name as _name

ALPHA = 0.05
WILCOXON_MIN_N = 6  # below 6 non-zero pairs the exact two-sided p-value cannot go below 0.05 (2/2^5 = 0.0625)
STRATEGY_ORDER = pub.STRATEGY_ORDER
ABLATION_ONLY = ("intermix_vanilla", "intermix_vanilla_signed", "intermix_hidden", "intermix_hidden_linear")
# Table 2's rows, each one-knob sensitivity cell after the row it changes (docs/method.md, "Sensitivity")
ABLATION_ROWS = ("intermix_vanilla", "intermix_vanilla_signed", "intermix_hidden", "intermix_hidden_linear", "intermix",
                 "intermix_detached")
# (baseline, strategies compared with it; None = every strategy after the baseline in STRATEGY_ORDER)
BASELINES: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("standard", None), ("bc", None), ("speechmix", ("intermix", "intermix_official")),
)
ABLATION_STEPS = (("intermix_hidden", "intermix_vanilla"), ("intermix", "intermix_hidden"))  # (strategy, baseline)
# one-knob cells against the preset they change one field of, and each code-following preset against its paper preset
SENSITIVITY_STEPS = (("intermix_detached", "intermix"), ("intermix_vanilla_signed", "intermix_vanilla"),
                     ("intermix_hidden_linear", "intermix_hidden"), ("speechmix_official", "speechmix"))


def paper_order(seq: Iterable[str], known: Sequence[str]) -> list[str]:
    """Known names in their paper order, then the rest alphabetically."""
    items = set(seq)
    return [k for k in known if k in items] + sorted(items - set(known))


def mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (sample SD with ddof=1 / sqrt(n)); SE is None for n < 2."""
    n = len(values)
    if n == 0:
        return None, None
    m = statistics.fmean(values)
    return m, (statistics.stdev(values, m) / math.sqrt(n) if n >= 2 else None)


def eps_label(eps: float) -> str:
    """Epsilon as shown in tables and metric names: 0.01, 0.001, 0.0001, 1e-05."""
    return f"{eps:g}"


def _folds_text(folds: Sequence[int]) -> str:
    return ("fold " if len(folds) == 1 else "folds ") + ", ".join(str(f) for f in folds)


class TableCell(BaseModel):
    """Per-fold errors of one dataset x setup x strategy (x FGSM epsilon) and their summary."""

    dataset: str
    setup: str
    model: str
    strategy: str
    epsilon: float | None = None  # None: clean test error; else FGSM error at this epsilon
    fgsm_kind: Literal["clip", "crop"] | None = None  # FGSM cells: 10-crop clip error or single-crop error
    expected: list[int]
    values: dict[int, float]  # fold -> error %, successful folds only
    failed: dict[int, str] = {}  # fold -> failure message
    mean: float | None = None
    se: float | None = None
    # clean cells: the best evaluated epoch's error per fold (the authors' number, optimistic) and its summary
    best_values: dict[int, float] = {}
    best_mean: float | None = None
    best_se: float | None = None
    best_every: list[int] = []  # the evaluation cadences (optim.eval_every) behind best_values, from the folds' configs
    published: float | None = None
    published_se: float | None = None
    # clean cells: which measured column the published number is, "last", "best" or "unknown" (paper.PUBLISHED_PROTOCOL)
    published_is: str | None = None

    @computed_field
    @property
    def n(self) -> int:
        """Successful folds counted in the mean."""
        return len(self.values)

    @computed_field
    @property
    def missing(self) -> list[int]:
        """Expected folds with no result at all."""
        return [f for f in self.expected if f not in self.values and f not in self.failed]

    @computed_field
    @property
    def diff(self) -> float | None:
        """Measured minus published (points), from the column the row's published protocol names (`diff_of`)."""
        mean = self.best_mean if self.diff_of == "best" else self.mean
        return None if mean is None or self.published is None else mean - self.published

    @computed_field
    @property
    def diff_of(self) -> str | None:
        """Which measured column `diff` is taken from: "last" or "best" (paper.DIFF_COLUMN); None without a published value."""
        return None if self.published is None else pub.DIFF_COLUMN[self.published_is or "unknown"]

    @property
    def metric(self) -> str:
        """'test_error', 'fgsm@<eps>' (10-crop clip error) or 'fgsm_crop@<eps>' (single-crop error)."""
        if self.epsilon is None:
            return "test_error"
        return f"{'fgsm_crop' if self.fgsm_kind == 'crop' else 'fgsm'}@{eps_label(self.epsilon)}"

    def best_text(self) -> str:
        """The best-epoch mean ± SE ('—' without evaluated epochs)."""
        if self.best_mean is None:
            return "—"
        return f"{self.best_mean:.1f}" + (f" ± {self.best_se:.2f}" if self.best_se is not None else " (n=1)")

    def text(self) -> str:
        """'12.3 ± 0.41', '12.3 (n=1)', with '(4/5 folds; fold 3 failed)' when folds are absent."""
        if self.mean is None:
            body = "failed" if self.failed else "—"
        elif self.se is None:
            body = f"{self.mean:.1f} (n=1)"
        else:
            body = f"{self.mean:.1f} ± {self.se:.2f}"
        gaps = [f"{_folds_text(sorted(self.failed))} failed"] if self.failed else []
        gaps += [f"{_folds_text(self.missing)} missing"] if self.missing else []
        return f"{body} ({self.n}/{len(self.expected)} folds; {'; '.join(gaps)})" if gaps else body

    def published_text(self) -> str:
        """The paper's value beside this cell, '—' if it has none."""
        if self.published is None:
            return "—"
        return f"{self.published:.1f}" + (f" ± {self.published_se:.1f}" if self.published_se is not None else "")


class MissingFold(BaseModel):
    """An expected fold without a successful result."""

    dataset: str
    setup: str
    strategy: str
    fold: int
    reason: str  # "missing" or "failed"
    error: str | None = None
    state: str | None = None  # what tracking says of it, when asked: "running (heartbeat 40 s ago)", "killed? ..."


class Comparison(BaseModel):
    """Strategy vs baseline on the folds both have: relative improvement and paired tests."""

    dataset: str
    setup: str
    metric: str
    strategy: str
    baseline: str
    folds: list[int]
    baseline_mean: float | None = None
    mean: float | None = None
    diff: float | None = None  # baseline - strategy, points; > 0 means the strategy errs less
    relative: float | None = None  # 100 (e_base - e) / e_base on the paired folds' means
    published_relative: float | None = None  # the same from the paper's numbers
    # effect size: the 95 % confidence interval of the mean paired difference (t-based, n >= 2; a single point when
    # every fold has the same difference) and Cohen's d_z = mean / SD of the paired differences (None for SD 0)
    ci_low: float | None = None
    ci_high: float | None = None
    dz: float | None = None
    same_every_fold: bool = False  # n >= 2 folds and the same difference on each: zero variance, no t-test
    t: float | None = None
    p_t: float | None = None
    wilcoxon: float | None = None
    p_wilcoxon: float | None = None
    # Holm-adjusted p-values over the family of comparisons of the same metric (holm_adjust); the call uses these
    p_t_holm: float | None = None
    p_wilcoxon_holm: float | None = None
    family: int = 1  # comparisons in that family
    significant: bool = False
    conclusion: str = ""


class FoldProvenance(BaseModel):
    """Where one fold's result in the tables comes from: code, machine, device, configuration and wall time."""

    dataset: str
    setup: str
    strategy: str
    fold: int
    git_commit: str | None = None
    machine: str | None = None
    device: str | None = None
    torch: str | None = None
    train_seconds: float | None = None
    epochs: int = 0


class Summary(BaseModel):
    """Everything the reports show: Table 1/2 cells, FGSM cells, comparisons, missing folds, notes."""

    cells: list[TableCell]
    fgsm: list[TableCell]
    comparisons: list[Comparison]
    missing: list[MissingFold]
    notes: list[str]
    n_results: int
    n_superseded: int
    alpha: float = ALPHA
    # every result trained on the reference schedule and crop length (ExperimentConfig.on_paper_schedule):
    # only then is a measured-minus-paper difference meaningful
    paper_schedule: bool = True
    # provenance of the results in the tables (one per fold), and each cell's resolved configuration
    # ("dataset/setup/strategy" -> config; the folds of a cell share it)
    provenance: list[FoldProvenance] = []
    configs: dict[str, dict] = {}

    def cell(
        self, dataset: str, setup: str, strategy: str, epsilon: float | None = None, kind: str = "clip"
    ) -> TableCell | None:
        """The cell for these keys (an FGSM cell of `kind` if epsilon is given), or None."""
        pool = self.cells if epsilon is None else [c for c in self.fgsm if c.fgsm_kind == kind]
        for c in pool:
            if (c.dataset, c.setup, c.strategy) == (dataset, setup, strategy) and (
                epsilon is None or math.isclose(c.epsilon or 0.0, epsilon, rel_tol=1e-9, abs_tol=1e-15)
            ):
                return c
        return None


def collect_results(paths_or_dir: str | Path | Sequence[str | Path]) -> list[FoldResult]:
    """Read fold-result JSON files (directories recursively), oldest first by mtime, so newer reruns win."""
    items = [paths_or_dir] if isinstance(paths_or_dir, (str, Path)) else list(paths_or_dir)
    files: list[tuple[Path, bool]] = []  # (path, named explicitly)
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += [(f, False) for f in p.rglob("*.json") if f.is_file()]
        elif p.is_file():
            files.append((p, True))
        else:
            raise FileNotFoundError(f"{p}: no such result file or directory")
    files.sort(key=lambda fe: (fe[0].stat().st_mtime, str(fe[0])))
    results = []
    for f, explicit in files:
        try:
            result = load_result(f)
        except ValueError:
            if explicit or _looks_like_result(f):
                raise  # a fold result that does not validate is a problem, not noise
            continue
        if problem := result_problem(result):  # values are checked on read: nothing crafted reaches a table
            raise ValueError(f"{f}: {problem}; not a fold result to publish")
        results.append(result)
    return results


def _looks_like_result(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"dataset", "strategy", "fold"} <= data.keys()


def _is_ok(r: FoldResult) -> bool:
    return r.status == "ok" and r.test_error is not None and math.isfinite(r.test_error)


def _failure(r: FoldResult) -> str:
    if r.status == "ok":
        return f"status ok but test_error is {r.test_error}"
    return r.error or "failed without a message"


def first_line(msg: str | None) -> str:
    """The first line of a failure message (at most 160 characters), or 'no message'."""
    return (msg or "no message").strip().splitlines()[0][:160] if (msg or "").strip() else "no message"


def select_results(results: Sequence[FoldResult]) -> tuple[dict[tuple[str, str, str, int], FoldResult], list[str]]:
    """One result per (dataset, setup, strategy, fold): the last ok one, else the last failed one; plus notes."""
    last_ok: dict[tuple[str, str, str, int], FoldResult] = {}
    last_any: dict[tuple[str, str, str, int], FoldResult] = {}
    for r in results:
        last_any[r.key] = r
        if _is_ok(r):
            last_ok[r.key] = r
    notes = []
    for key, r in last_any.items():
        if key in last_ok and last_ok[key] is not r:
            notes.append(f"{key[0]} / {key[1]} / {key[2]} fold {key[3]}: the latest attempt failed"
                         f" ({first_line(_failure(r))}); the earlier successful result is used")
    return {k: last_ok.get(k, r) for k, r in last_any.items()}, notes


def paired_test(baseline: Sequence[float], other: Sequence[float]) -> dict[str, float | bool | None]:
    """Paired t-test (and Wilcoxon signed-rank when >= 6 non-zero pairs) on d = baseline - other, two-sided; the
    effect size beside it: the 95 % confidence interval of the mean difference and Cohen's d_z."""
    d = [b - o for b, o in zip(baseline, other, strict=True)]
    n = len(d)
    out: dict[str, float | bool | None] = {"t": None, "p_t": None, "wilcoxon": None, "p_wilcoxon": None,
                                           "ci_low": None, "ci_high": None, "dz": None, "same_every_fold": False}
    if n < 2:
        return out
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    if sd > 1e-12 * max(1.0, abs(m)):  # identical differences on every fold: t is undefined
        out["t"] = m / (sd / math.sqrt(n))
        out["p_t"] = float(2 * stats.t.sf(abs(out["t"]), n - 1))
        half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * sd / math.sqrt(n)
        out["ci_low"], out["ci_high"], out["dz"] = m - half, m + half, m / sd
    else:  # no spread: the interval is the one difference seen, and d_z (mean / SD) has no value
        out["ci_low"] = out["ci_high"] = m
        out["same_every_fold"] = True
    nonzero = [x for x in d if x != 0.0]
    if len(nonzero) >= WILCOXON_MIN_N:
        w = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
        out["wilcoxon"], out["p_wilcoxon"] = float(w.statistic), float(w.pvalue)
    return out


def _compare(cell: TableCell, base: TableCell) -> Comparison:
    """Means, difference, relative improvement and raw paired tests on the folds both cells have (no call yet)."""
    folds = sorted(set(cell.values) & set(base.values))
    comp = Comparison(
        dataset=cell.dataset, setup=cell.setup, metric=cell.metric, strategy=cell.strategy,
        baseline=base.strategy, folds=folds,
    )
    if base.published is not None and cell.published is not None:
        comp.published_relative = pub.relative_improvement(base.published, cell.published)
    if not folds:
        return comp
    comp.baseline_mean = sum(base.values[f] for f in folds) / len(folds)
    comp.mean = sum(cell.values[f] for f in folds) / len(folds)
    comp.diff = comp.baseline_mean - comp.mean
    if comp.baseline_mean > 0:
        comp.relative = pub.relative_improvement(comp.baseline_mean, comp.mean)
    return comp.model_copy(update=paired_test([base.values[f] for f in folds], [cell.values[f] for f in folds]))


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); None stays None and is not counted."""
    index = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(index)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(index):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def effect_text(comp: Comparison) -> str:
    """The paired difference with its 95 % confidence interval and d_z: '+5.0 [−12.3, +22.3], d_z 0.81'."""
    if comp.diff is None:
        return "—"
    if comp.ci_low is None or comp.ci_high is None:
        return f"{comp.diff:+.1f} (n=1)"
    if comp.same_every_fold:
        return f"{comp.diff:+.1f} on every fold"
    dz = f", d_z {comp.dz:.2f}" if comp.dz is not None else ""
    return f"{comp.diff:+.1f} [{comp.ci_low:+.1f}, {comp.ci_high:+.1f}]{dz}"


def _conclude(comp: Comparison, alpha: float) -> Comparison:
    """Call the comparison on its Holm-adjusted p-values and write its one-sentence conclusion."""
    cell_where = _where(comp)
    name, bname = _name("strategy", comp.strategy), _name("strategy", comp.baseline)
    pair = f"{name} vs {bname} on {cell_where}"
    if not comp.folds:
        return comp.model_copy(update={"conclusion": f"{pair}: no fold has both results; nothing to compare."})
    p_t, p_w = comp.p_t_holm, comp.p_wilcoxon_holm
    both = p_t is not None and p_t < alpha and (p_w is None or p_w < alpha)
    rel = f"{comp.relative:+.1f}% relative reduction" if comp.relative is not None else "relative n/a"
    nums = f"{comp.mean:.1f}% vs {comp.baseline_mean:.1f}% error ({rel})"
    holm = f" (Holm, {comp.family} comparisons)" if comp.family > 1 else ""
    tests = [f"paired t-test p={comp.p_t:.3g}" + (f", adjusted {p_t:.3g}" if comp.family > 1 else "")] \
        if comp.p_t is not None and p_t is not None else []
    tests += [f"Wilcoxon p={comp.p_wilcoxon:.3g}" + (f", adjusted {p_w:.3g}" if comp.family > 1 else "")] \
        if comp.p_wilcoxon is not None and p_w is not None else []
    n = len(comp.folds)
    tested = comp.ci_low is not None and not comp.same_every_fold
    effect = [f"difference {effect_text(comp)} points (95 % CI)"] if tested else []
    tests_text = ", ".join([*effect, *tests, f"n={n} folds"])
    if n < 2:
        text = f"{pair}: {nums}; only {n} paired fold, no test possible."
    elif comp.same_every_fold:
        diff = comp.diff or 0.0
        text = (f"{pair}: {nums}; the difference is the same on all {n} folds ({diff:+.2f} points on each), so the "
                "folds vary by nothing and a paired t-test has no p-value (its standard error is 0)"
                + (f"; a sign test of {n} folds all one way gives two-sided p = {2 * 0.5 ** n:.3g}" if diff else "")
                + (f", below which nothing with {n} folds can go: a consistent difference, not called"
                   if diff and 2 * 0.5 ** n >= alpha else "; not called (no test over these folds)") + ".")
    elif both:
        verb = "has lower error than" if (comp.diff or 0) > 0 else "has higher error than"
        text = f"{name} {verb} {bname} on {cell_where}: {nums}; {tests_text}{holm}."
    else:
        why = (f"adjusted p >= {alpha}" if comp.family > 1 else f"p >= {alpha}") if p_t is None or p_t >= alpha \
            else f"the t-test alone is below {alpha}, Wilcoxon is not"
        text = f"{pair}: {nums} is within fold-to-fold noise ({tests_text}; {why})."
    return comp.model_copy(update={"significant": both, "conclusion": text})


def _where(comp: Comparison) -> str:
    where = f"{_name('dataset', comp.dataset)} / {_name('setup', comp.setup)}"
    if comp.metric == "test_error":
        return where
    kind, _, eps = comp.metric.partition("@")
    return f"{where}, FGSM eps={eps}" + (" (single crop)" if kind == "fgsm_crop" else "")


def correct_and_conclude(comparisons: list[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Holm-adjust each metric's family of comparisons (the clean error; each FGSM epsilon and kind), then call them."""
    out = list(comparisons)
    for metric in dict.fromkeys(c.metric for c in comparisons):
        idx = [i for i, c in enumerate(comparisons) if c.metric == metric]
        family = sum(comparisons[i].p_t is not None for i in idx)
        adj_t = holm_adjust([comparisons[i].p_t for i in idx])
        adj_w = holm_adjust([comparisons[i].p_wilcoxon for i in idx])
        for i, pt, pw in zip(idx, adj_t, adj_w, strict=True):
            out[i] = out[i].model_copy(update={"p_t_holm": pt, "p_wilcoxon_holm": pw, "family": max(family, 1)})
    return [_conclude(c, alpha) for c in out]


def _pairs(strategies: Iterable[str]) -> list[tuple[str, str]]:
    present = paper_order(strategies, STRATEGY_ORDER)
    rank = {s: i for i, s in enumerate(present)}
    pairs = [(s, b) for b, only in BASELINES if b in rank for s in present
             if rank[s] > rank[b] and (only is None or s in only)]
    return pairs + [(s, b) for s, b in ABLATION_STEPS + SENSITIVITY_STEPS if s in rank and b in rank]


def aggregate(
    results: list[FoldResult], expected_folds: dict[str, list[int]] | None = None, *, alpha: float = ALPHA
) -> Summary:
    """Turn fold results into cells (mean ± SE), FGSM cells, paired comparisons and the list of absent folds."""
    chosen, notes = select_results(results)
    groups: dict[tuple[str, str, str], list[FoldResult]] = {}
    for (dataset, setup, strategy, _), r in chosen.items():
        groups.setdefault((dataset, setup, strategy), []).append(r)
    cells, fgsm_cells, missing = [], [], []
    datasets = paper_order({k[0] for k in groups}, list(pub.DATASET_NAMES))
    for dataset in datasets:
        if expected_folds and dataset in expected_folds:
            base_expected = set(expected_folds[dataset])
        elif dataset in DATASETS:
            base_expected = set(range(1, DATASETS[dataset]["num_folds"] + 1))
        else:
            base_expected = {k[3] for k in chosen if k[0] == dataset}
        keys = [k for k in groups if k[0] == dataset]
        for setup in paper_order({k[1] for k in keys}, list(pub.SETUP_NAMES)):
            for strategy in paper_order({k[2] for k in keys if k[1] == setup}, STRATEGY_ORDER):
                rs = sorted(groups[(dataset, setup, strategy)], key=lambda r: r.fold)
                expected = sorted(base_expected | {r.fold for r in rs})
                ok = [r for r in rs if _is_ok(r)]
                failed = {r.fold: _failure(r) for r in rs if not _is_ok(r)}
                head = dict(dataset=dataset, setup=setup, model=rs[-1].model, strategy=strategy, expected=expected)
                values = {r.fold: float(r.test_error) for r in ok}
                p = pub.published_error(dataset, setup, strategy)
                cell = TableCell(**head, values=values, failed=failed, published=p.mean if p else None,
                                 published_se=p.se if p else None,
                                 published_is=pub.PUBLISHED_PROTOCOL.get(strategy, ("unknown", ""))[0] if p else None)
                cell.mean, cell.se = mean_se(list(values.values()))
                cell.best_values = {r.fold: float(r.best_val_error) for r in ok if r.best_val_error is not None}
                cell.best_mean, cell.best_se = mean_se(list(cell.best_values.values()))
                cell.best_every = sorted({e for r in ok if r.best_val_error is not None and (e := _eval_every(r))})
                cells.append(cell)
                where = dict(dataset=dataset, setup=setup, strategy=strategy)
                missing += [MissingFold(**where, fold=f, reason="failed", error=e) for f, e in sorted(failed.items())]
                missing += [MissingFold(**where, fold=f, reason="missing") for f in cell.missing]
                fgsm_cells += _fgsm_cells(head, ok, failed)
    comparisons = []
    # eps = 0 is the clean error through the attack's code: no attack, and its clip column repeats the test error
    for pool in (cells, [c for c in fgsm_cells if c.epsilon != 0.0]):
        index = {(c.dataset, c.setup, c.metric, c.strategy): c for c in pool}
        for dataset, setup, metric in dict.fromkeys((c.dataset, c.setup, c.metric) for c in pool):
            strategies = [s for (d, su, m, s) in index if (d, su, m) == (dataset, setup, metric)]
            for s, b in _pairs(strategies):
                new, base = index[(dataset, setup, metric, s)], index[(dataset, setup, metric, b)]
                comparisons.append(_compare(new, base))
    comparisons = correct_and_conclude(comparisons, alpha)
    order = {(c.dataset, c.setup, c.strategy): i for i, c in enumerate(cells)}  # the tables' order, then by fold
    counted = sorted((r for r in chosen.values() if _is_ok(r)),
                     key=lambda r: (order.get(r.key[:3], len(order)), r.fold))
    provenance = [FoldProvenance(dataset=r.dataset, setup=r.setup, strategy=r.strategy, fold=r.fold,
                                 git_commit=r.git_commit, machine=r.machine, device=r.device, torch=r.torch,
                                 train_seconds=r.train_seconds, epochs=len(r.history)) for r in counted]
    configs = {f"{r.dataset}/{r.setup}/{r.strategy}": r.config for r in counted if r.config}
    return Summary(
        cells=cells, fgsm=fgsm_cells, comparisons=comparisons, missing=missing, notes=notes,
        n_results=len(results), n_superseded=len(results) - len(chosen), alpha=alpha,
        paper_schedule=all(_on_paper_schedule(r) for r in chosen.values() if _is_ok(r) and r.config),
        provenance=provenance, configs=configs,
    )


def _eval_every(result: FoldResult) -> int | None:
    """The evaluation cadence (optim.eval_every) a result was trained with, None if its config does not say."""
    every = (result.config.get("optim") or {}).get("eval_every")
    return every if isinstance(every, int) and every >= 1 else None


def best_label(cells: Iterable[TableCell]) -> str:
    """The best-epoch column's label, with the evaluation cadence of its cells (the authors': every epoch)."""
    every = sorted({e for c in cells for e in c.best_every})
    if every == [1]:
        when = "every epoch, the authors' protocol"
    elif len(every) == 1:
        when = f"every {every[0]} epochs and the last"
    elif every:
        when = f"every {' or '.join(map(str, every))} epochs and the last (per fold)"
    else:
        when = "the evaluated epochs"
    return f"best† ({when}; optimistic)"


def _on_paper_schedule(result: FoldResult) -> bool:
    """Whether a result's config is on the paper's schedule (a result without a readable config is not)."""
    try:
        return ExperimentConfig.model_validate(result.config).on_paper_schedule()
    except Exception:  # noqa: BLE001 - an old or foreign config: not known to follow the paper
        return False


def _fgsm_cells(head: dict, ok: list[FoldResult], failed: dict[int, str]) -> list[TableCell]:
    """FGSM cells per epsilon, first the 10-crop clip errors, then the single-crop errors."""
    out = []
    for kind in ("clip", "crop"):
        per_eps: dict[float, dict[int, float]] = {}
        for r in ok:
            for key, err in (r.fgsm if kind == "clip" else r.fgsm_crop).items():
                try:
                    eps = float(key)
                except ValueError:
                    raise ValueError(f"{'/'.join(map(str, r.key))}: fgsm key {key!r} is not an epsilon") from None
                if math.isfinite(err):
                    per_eps.setdefault(eps, {})[r.fold] = float(err)
        for eps in sorted(per_eps, reverse=True):
            values = per_eps[eps]
            c = TableCell(**head, epsilon=eps, fgsm_kind=kind, values=values, failed=failed,
                     published=pub.published_fgsm(head["dataset"], head["strategy"], eps))
            c.mean, c.se = mean_se(list(values.values()))
            out.append(c)
    return out
