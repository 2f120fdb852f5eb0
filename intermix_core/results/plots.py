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
from matplotlib.lines import Line2D

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


FEW_POINTS = 12  # up to this many evaluated epochs a curve is drawn as markers with error bars, not a line


def _legend_outside(ax: object, fontsize: int = 7) -> None:
    """The axes' legend to the right of the plotting area, never over the data."""
    if ax.get_legend_handles_labels()[1]:  # type: ignore[attr-defined]
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # type: ignore[attr-defined]


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


def _series(runs: Sequence[FoldResult], field: str) -> dict[int, list[float]]:
    """epoch -> the finite values of `field` over runs (only epochs where some run has one)."""
    by_epoch: dict[int, list[float]] = {}
    for r in runs:
        for e in r.history:
            value = getattr(e, field)
            if value is not None and math.isfinite(value):
                by_epoch.setdefault(e.epoch, []).append(value)
    return by_epoch


def _draw(ax: object, by_epoch: dict[int, list[float]], color: str, label: str, every_epoch: bool,
          dodge: float = 0.0) -> None:
    """Mean ± SE over folds: a line with a band where every epoch has a value, else markers with error bars.

    `dodge` shifts the markers sideways (in epochs) so that strategies evaluated at the same epochs stay apart.
    """
    epochs = sorted(by_epoch)
    m, lo, hi = _mean_band([by_epoch[e] for e in epochs])
    if every_epoch or len(epochs) > FEW_POINTS:
        ax.plot(epochs, m, color=color, label=label, marker="." if len(epochs) <= 2 * FEW_POINTS else None)  # type: ignore[attr-defined]
        ax.fill_between(epochs, lo, hi, color=color, alpha=0.2, linewidth=0)  # type: ignore[attr-defined]
    else:  # a handful of evaluations: points, never a straight line pretending to be a curve between them
        yerr = [[a - b for a, b in zip(m, lo)], [b - a for a, b in zip(m, hi)]]
        ax.errorbar([e + dodge for e in epochs], m, yerr=yerr, color=color, label=label, marker="o", markersize=5,  # type: ignore[attr-defined]
                    capsize=3, linestyle="none")


def _panels(results: Sequence[FoldResult]) -> tuple[list[tuple[str, str]], list[str]]:
    """(rows: dataset x setup, columns: strategies) of a figure with one panel per cell, in the paper's order."""
    return _groups([(r.dataset, r.setup) for r in results]), _strategy_sort({r.strategy for r in results})


def plot_learning_curves(results: Sequence[FoldResult], path: str | Path) -> Path | None:
    """Train loss (every epoch) and test-fold error (every evaluated epoch) per strategy, mean ± SE; None if no history."""
    fig = learning_curves_figure(results)
    return None if fig is None else _save(fig, Path(path))


def learning_curves_figure(results: Sequence[FoldResult]) -> Figure | None:
    """The figure of plot_learning_curves (None if no result has a history)."""
    with_history = [r for r in results if r.status == "ok" and r.history]
    if not with_history:
        return None
    groups = _groups([(r.dataset, r.setup) for r in with_history])
    colors = _colors([r.strategy for r in with_history])
    fig = Figure(figsize=(12, 3.3 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for row, (dataset, setup) in enumerate(groups):
        mine = [r for r in with_history if (r.dataset, r.setup) == (dataset, setup)]
        order = _strategy_sort({r.strategy for r in mine})
        last = max(e.epoch for r in mine for e in r.history)
        for i, strategy in enumerate(order):
            runs = [r for r in mine if r.strategy == strategy]
            label = f"{_label('strategy', strategy)} ({len(runs)} folds)"
            dodge = (i - (len(order) - 1) / 2) * 0.012 * last
            for col, field in enumerate(("train_loss", "val_error")):
                by_epoch = _series(runs, field)
                if by_epoch:
                    _draw(axes[row][col], by_epoch, colors[strategy], label, field == "train_loss", dodge)
        title = f"{_label('dataset', dataset)} / {_label('setup', setup)}"
        axes[row][0].set(title=f"{title}: training loss", xlabel="epoch", ylabel="loss (mixed labels)")
        axes[row][1].set(title=f"{title}: test-fold error (evaluated epochs)", xlabel="epoch", ylabel="error (%)")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
        _legend_outside(axes[row][1])
    fig.suptitle("Learning curves: mean over folds, ±1 standard error")
    return fig


def plot_fold_curves(results: Sequence[FoldResult], path: str | Path) -> Path | None:
    """One panel per dataset x setup x strategy: each fold's test-fold error and training error; None if no history."""
    with_history = [r for r in results if r.status == "ok" and r.history]
    if not with_history:
        return None
    groups, strategies = _panels(with_history)
    fig = Figure(figsize=(3.6 * len(strategies) + 1.2, 2.8 * len(groups) + 0.6), layout="constrained")
    axes = fig.subplots(len(groups), len(strategies), squeeze=False, sharey=True)
    folds = sorted({r.fold for r in with_history})
    colors = {f: f"C{i % 10}" for i, f in enumerate(folds)}
    for row, (dataset, setup) in enumerate(groups):
        for col, strategy in enumerate(strategies):
            ax = axes[row][col]
            runs = sorted((r for r in with_history if (r.dataset, r.setup, r.strategy) == (dataset, setup, strategy)),
                          key=lambda r: r.fold)
            for r in runs:
                train = [(e.epoch, e.train_error) for e in r.history if math.isfinite(e.train_error)]
                val = [(e.epoch, e.val_error) for e in r.history if e.val_error is not None and math.isfinite(e.val_error)]
                if train:
                    ax.plot(*zip(*train), color=colors[r.fold], linewidth=0.8, alpha=0.6)
                if val:
                    ax.plot(*zip(*val), color=colors[r.fold], marker="o", markersize=4,
                            linestyle="-" if len(val) > FEW_POINTS else "none", label=f"fold {r.fold}")
            ax.set_title(f"{_label('dataset', dataset)} / {_label('setup', setup)} / {_label('strategy', strategy)}",
                         fontsize=8)
            ax.grid(alpha=0.3)
            if not runs:
                ax.text(0.5, 0.5, "no result", ha="center", va="center", transform=ax.transAxes, color="grey")
            if row == len(groups) - 1:
                ax.set_xlabel("epoch")
        axes[row][0].set_ylabel("error (%)")
    handles = [Line2D([], [], color=colors[f], marker="o", linestyle="none", label=f"fold {f}: test-fold error")
               for f in folds] + [Line2D([], [], color="grey", linewidth=0.8, label="thin: training error (mixed labels)")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    fig.suptitle("Learning curves per fold")
    return _save(fig, Path(path))


def plot_fgsm(summary: Summary, path: str | Path) -> Path | None:
    """FGSM error vs epsilon (log x) per strategy, clip (solid) and single-crop (dotted) ±1 SE, paper dashed; None if none."""
    fig = fgsm_figure(summary)
    return None if fig is None else _save(fig, Path(path))


def fgsm_figure(summary: Summary) -> Figure | None:
    """The figure of plot_fgsm (None without FGSM results); the legend sits beside each panel."""
    if not summary.fgsm:
        return None
    groups = _groups([(c.dataset, c.setup) for c in summary.fgsm])
    colors = _colors([c.strategy for c in summary.fgsm])
    fig = Figure(figsize=(10, 4 * len(groups)), layout="constrained")
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
        _legend_outside(ax)
    return fig


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
        _legend_outside(ax)
    return _save(fig, Path(path))


def plot_confusions(results: Sequence[FoldResult], path: str | Path) -> Path | None:
    """Confusion matrices summed over each cell's folds, one panel per dataset x setup x strategy; None if none."""
    with_matrix = [r for r in results if r.status == "ok" and r.confusion]
    if not with_matrix:
        return None
    groups, strategies = _panels(with_matrix)
    n = max(len(r.confusion) for r in with_matrix)  # type: ignore[arg-type]
    side = 2.6 + (0.2 if n <= 12 else 0.09) * n
    fig = Figure(figsize=(side * len(strategies) + 1.5, side * len(groups) + 0.6), layout="constrained")
    axes = fig.subplots(len(groups), len(strategies), squeeze=False)
    for row, (dataset, setup) in enumerate(groups):
        classes = next((r.classes for r in with_matrix if r.dataset == dataset and r.classes), None)
        for col, strategy in enumerate(strategies):
            ax = axes[row][col]
            runs = [r for r in with_matrix if (r.dataset, r.setup, r.strategy) == (dataset, setup, strategy)]
            ax.set_title(f"{_label('dataset', dataset)} / {_label('setup', setup)} / {_label('strategy', strategy)}\n"
                         f"{len(runs)} fold(s) summed", fontsize=8)
            if not runs:
                ax.set_axis_off()
                continue
            k = len(runs[0].confusion)  # type: ignore[arg-type]
            total = [[sum(r.confusion[i][j] for r in runs if len(r.confusion) == k) for j in range(k)]  # type: ignore[index,arg-type]
                     for i in range(k)]
            ax.imshow(total, cmap="Blues")
            names = [(classes[i] if classes and i < len(classes) and classes[i] else str(i)) for i in range(k)]
            size = 6 if k <= 12 else 3.5
            ax.set_xticks(range(k), names, rotation=90, fontsize=size)
            ax.set_yticks(range(k), names if col == 0 else [""] * k, fontsize=size)
            if k <= 12:
                top = max(max(row_) for row_ in total) or 1
                for i, row_ in enumerate(total):
                    for j, v in enumerate(row_):
                        if v:
                            ax.text(j, i, str(v), ha="center", va="center", fontsize=6,
                                    color="white" if v > 0.6 * top else "black")
        axes[row][0].set_ylabel("true class")
    fig.supxlabel("predicted class", fontsize=9)
    fig.suptitle("Confusion matrices of the 10-crop clip predictions, summed over folds")
    return _save(fig, Path(path), dpi=90)


def plot_confusion(confusion: list[list[int]], path: str | Path, classes: Sequence[str | None] | None = None,
                   title: str | None = None) -> Path:
    """One fold's 10-crop confusion matrix (rows: true class, columns: predicted), titled, every class named on both axes."""
    return _save(confusion_figure(confusion, classes, title), Path(path), dpi=100)


def confusion_figure(confusion: list[list[int]], classes: Sequence[str | None] | None = None,
                     title: str | None = None) -> Figure:
    """The figure of plot_confusion; a class without a name is shown by its label number."""
    n = len(confusion)
    names = [(classes[i] if classes and i < len(classes) and classes[i] else str(i)) for i in range(n)]
    names = [f"{i} {name}" if name != str(i) else name for i, name in enumerate(names)]
    side = 3.0 + 0.32 * n
    fig = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(confusion, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.6, label="clips")
    small = 7 if n <= 12 else 5
    ax.set_xticks(range(n), names, rotation=90, fontsize=small)
    ax.set_yticks(range(n), names, fontsize=small)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    total = sum(map(sum, confusion))
    correct = sum(confusion[i][i] for i in range(n))
    head = title or "confusion matrix"
    ax.set_title(f"{head}\n10-crop clip predictions: {correct}/{total} correct", fontsize=9)
    if n <= 12:
        top = max((v for row in confusion for v in row), default=0)
        for i, row in enumerate(confusion):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if top and v > 0.6 * top else "black")
    return fig
