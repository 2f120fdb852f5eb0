"""PNG figures: learning curves, FGSM error vs epsilon, per-fold spread of test errors, a fold's confusion matrix.

Built on `matplotlib.figure.Figure` (the Agg canvas), never pyplot: no global backend or figure state,
so it is safe in servers, threads and headless containers. One row of panels per (dataset, setup).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from intermix_core.records import FoldResult
from intermix_core.results import paper as pub
from intermix_core.results.paper import display_name as _label
from intermix_core.results.statistics import Summary, TableCell


def _strategy_sort(names: set[str]) -> list[str]:
    return [s for s in pub.STRATEGY_ORDER if s in names] + sorted(names - set(pub.STRATEGY_ORDER))


def _colors(strategies: Sequence[str]) -> dict[str, str]:
    palette = [f"C{i}" for i in range(10)]
    return {s: palette[i % 10] for i, s in enumerate(_strategy_sort(set(strategies)))}


def _mean_band(rows: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """Per point: mean, mean - SE, mean + SE (SE 0 where one fold)."""
    means, lo, hi = [], [], []
    for vals in rows:
        m = sum(vals) / len(vals)
        se = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals)) if len(vals) > 1 else 0.0
        means.append(m)
        lo.append(m - se)
        hi.append(m + se)
    return means, lo, hi


def _save(fig: Figure, path: Path, dpi: int = 110) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _groups(keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
    datasets = list(pub.DATASET_NAMES)
    setups = list(pub.SETUP_NAMES)
    rank = lambda name, known: (known.index(name), "") if name in known else (len(known), name)  # noqa: E731
    return sorted(set(keys), key=lambda k: (rank(k[0], datasets), rank(k[1], setups)))


def plot_learning_curves(results: Sequence[FoldResult], path: str | Path) -> Path | None:
    """Train loss and test-fold error vs epoch per strategy, mean over folds with a ±1 SE band; None if no history."""
    with_history = [r for r in results if r.status == "ok" and r.history]
    if not with_history:
        return None
    groups = _groups([(r.dataset, r.setup) for r in with_history])
    colors = _colors([r.strategy for r in with_history])
    fig = Figure(figsize=(11, 3.2 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for row, (dataset, setup) in enumerate(groups):
        mine = [r for r in with_history if (r.dataset, r.setup) == (dataset, setup)]
        for strategy in _strategy_sort({r.strategy for r in mine}):
            runs = [r for r in mine if r.strategy == strategy]
            for col, field in enumerate(("train_loss", "val_error")):
                by_epoch: dict[int, list[float]] = {}
                for r in runs:
                    for e in r.history:
                        value = getattr(e, field)
                        if value is not None and math.isfinite(value):
                            by_epoch.setdefault(e.epoch, []).append(value)
                if not by_epoch:
                    continue
                epochs = sorted(by_epoch)
                m, lo, hi = _mean_band([by_epoch[e] for e in epochs])
                ax = axes[row][col]
                label = f"{_label('strategy', strategy)} ({len(runs)} folds)"
                ax.plot(epochs, m, color=colors[strategy], label=label, marker="." if len(epochs) < 30 else None)
                ax.fill_between(epochs, lo, hi, color=colors[strategy], alpha=0.2, linewidth=0)
        title = f"{_label('dataset', dataset)} / {_label('setup', setup)}"
        axes[row][0].set(title=f"{title}: training loss", xlabel="epoch", ylabel="loss (mixed labels)")
        axes[row][1].set(title=f"{title}: test-fold error", xlabel="epoch", ylabel="error (%)")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7)
    fig.suptitle("Learning curves: mean over folds, band ±1 standard error")
    return _save(fig, Path(path))


def plot_fgsm(summary: Summary, path: str | Path) -> Path | None:
    """FGSM error vs epsilon (log x) per strategy, clip (solid) and single-crop (dotted) ±1 SE, paper dashed; None if none."""
    if not summary.fgsm:
        return None
    groups = _groups([(c.dataset, c.setup) for c in summary.fgsm])
    colors = _colors([c.strategy for c in summary.fgsm])
    fig = Figure(figsize=(6.5, 4 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False)
    for row, (dataset, setup) in enumerate(groups):
        ax = axes[row][0]
        mine = [c for c in summary.fgsm if (c.dataset, c.setup) == (dataset, setup) and c.mean is not None]
        for strategy in _strategy_sort({c.strategy for c in mine}):
            for kind, style in (("clip", "-"), ("crop", ":")):
                cs = sorted((c for c in mine if c.strategy == strategy and c.fgsm_kind == kind and (c.epsilon or 0) > 0),
                            key=lambda c: c.epsilon)
                if not cs:
                    continue
                name = f"{_label('strategy', strategy)}, {'10-crop clip' if kind == 'clip' else 'single crop'}"
                ax.errorbar([c.epsilon for c in cs], [c.mean for c in cs], yerr=[c.se or 0.0 for c in cs],
                            color=colors[strategy], linestyle=style, marker="o" if kind == "clip" else "s",
                            capsize=3, label=f"{name} (n={min(c.n for c in cs)})")
            paper = sorted({(c.epsilon, c.published) for c in mine
                            if c.strategy == strategy and c.published is not None and (c.epsilon or 0) > 0})
            if paper:
                ax.plot(*zip(*paper), color=colors[strategy], linestyle="--", marker="x", alpha=0.7,
                        label=f"{_label('strategy', strategy)}, paper")
        ax.set_xscale("log")
        ax.set(title=f"{_label('dataset', dataset)} / {_label('setup', setup)}: FGSM",
               xlabel="epsilon", ylabel="error (%)")
        ax.grid(alpha=0.3, which="both")
        if ax.has_data():
            ax.legend(fontsize=7)
    return _save(fig, Path(path))


def plot_fold_spread(summary: Summary, path: str | Path) -> Path | None:
    """Per-fold test errors per strategy (box + points, fold numbers marked, paper as a red x); None if empty."""
    cells: list[TableCell] = [c for c in summary.cells if c.values or c.failed or c.missing]
    if not cells:
        return None
    groups = _groups([(c.dataset, c.setup) for c in cells])
    fig = Figure(figsize=(max(7.0, 1.3 * len({c.strategy for c in cells}) + 2), 4 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 1, squeeze=False)
    colors = _colors([c.strategy for c in cells])
    for row, (dataset, setup) in enumerate(groups):
        ax = axes[row][0]
        mine = {c.strategy: c for c in cells if (c.dataset, c.setup) == (dataset, setup)}
        order = _strategy_sort(set(mine))
        ticks = []
        for x, strategy in enumerate(order, start=1):
            c = mine[strategy]
            folds = sorted(c.values)
            ys = [c.values[f] for f in folds]
            if len(ys) >= 2:
                ax.boxplot([ys], positions=[x], widths=0.5, showfliers=False,
                           medianprops={"color": colors[strategy]})
            xs = [x + 0.18 * ((i % 5) - 2) / 2 for i in range(len(ys))]  # deterministic spread, no random jitter
            ax.scatter(xs, ys, color=colors[strategy], s=18, zorder=3)
            for xi, yi, f in zip(xs, ys, folds):
                ax.annotate(str(f), (xi, yi), fontsize=6, xytext=(3, 2), textcoords="offset points")
            if c.published is not None:
                ax.scatter([x], [c.published], marker="x", color="red", s=40, zorder=4,
                           label="paper" if not ticks or "paper" not in ax.get_legend_handles_labels()[1] else None)
            absent = [f"fold {f} failed" for f in sorted(c.failed)] + [f"fold {f} missing" for f in c.missing]
            ticks.append("\n".join([_label("strategy", strategy), f"{c.n}/{len(c.expected)} folds", *absent[:3]]
                                    + (["..."] if len(absent) > 3 else [])))
        ax.set_xticks(range(1, len(order) + 1), ticks, fontsize=7)
        ax.set_xlim(0.4, len(order) + 0.6)
        where = f"{_label('dataset', dataset)} / {_label('setup', setup)}"
        ax.set(title=f"{where}: per-fold test error (fold numbers marked)", ylabel="error (%)")
        ax.grid(alpha=0.3, axis="y")
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    return _save(fig, Path(path))


def plot_confusion(confusion: list[list[int]], path: str | Path) -> Path:
    """One fold's 10-crop confusion matrix (rows: true class, columns: predicted), counts written in when small."""
    n = len(confusion)
    fig = Figure(figsize=(2 + 0.25 * n, 2 + 0.25 * n), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(confusion, cmap="Blues")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 12:
        for i, row in enumerate(confusion):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    return _save(fig, Path(path), dpi=100)
