"""Reports: the Summary from `intermix_core.results.statistics` as Markdown, CSV and LaTeX tables, report files, terminal text.

`write_reports` writes Table 1 (error rates), Table 2 (ablation), Table 3 (FGSM) and the paired comparisons as
.md/.csv/.tex, plus summary.json and the PNG figures from `intermix_core.results.plots`; `format_terminal` is the compact
plain-text view for the CLI.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from intermix_core.records import FoldResult
from intermix_core.results import paper as pub
from intermix_core.results import plots
from intermix_core.results.paper import display_name as _name
from intermix_core.results.statistics import (
    ABLATION_ONLY,
    ABLATION_ROWS,
    STRATEGY_ORDER,
    WILCOXON_MIN_N,
    Comparison,
    Summary,
    TableCell,
    best_label,
    eps_label,
    first_line,
    paper_order,
    select_results,
)


class _Table(NamedTuple):
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]


def _signed(x: float | None, fmt: str = "+.1f") -> str:
    return "—" if x is None else format(x, fmt)


def _absent_notes(summary: Summary, strategies: Sequence[str]) -> list[str]:
    notes = [
        f"{m.dataset} / {m.setup} / {m.strategy} fold {m.fold}: "
        + ("no result" if m.reason == "missing" else f"failed ({first_line(m.error)})")
        for m in summary.missing if m.strategy in strategies
    ]
    if summary.n_superseded:
        notes.append(f"{summary.n_superseded} older result(s) superseded by reruns of the same fold.")
    return notes + summary.notes


SHORT_SCHEDULE_NOTE = ("Not the paper's schedule (fewer epochs or other crops): these numbers show the system working and"
                       " each strategy learning, not the paper's results; the paper's column is there for reference.")
BEST_NOTE = ("best†: the lowest 10-crop test-fold error over the evaluated epochs (the cadence in its header:"
             " optim.eval_every, and the last epoch), mean ± SE over folds. It selects the epoch on the test fold,"
             " so it is optimistic; a coarser cadence than every epoch gives a higher best.")


def _grid_table(
    title: str, summary: Summary, strategies: Sequence[str], names: dict[str, str], row_label: str = "Learning",
    delta: bool = True,
) -> _Table:
    cells = [c for c in summary.cells if c.strategy in strategies]
    index = {(c.dataset, c.setup, c.strategy): c for c in cells}
    datasets = paper_order({c.dataset for c in cells}, list(pub.DATASET_NAMES))
    header = ["Model", row_label] + [
        h for d in datasets for h in (_name("dataset", d), best_label(cells), "paper", "Δ")[:4 if delta else 3]
    ]
    rows = []
    for setup in paper_order({c.setup for c in cells}, list(pub.SETUP_NAMES)):
        present = {c.strategy for c in cells if c.setup == setup}
        for i, strategy in enumerate(s for s in paper_order(present, STRATEGY_ORDER) if s in strategies):
            row = [_name("setup", setup) if i == 0 else "", names.get(strategy, strategy)]
            for d in datasets:
                c = index.get((d, setup, strategy))
                paper = pub.published_error(d, setup, strategy)
                ptext = c.published_text() if c else ("—" if paper is None else f"{paper.mean:.1f}")
                row += [c.text() if c else "—", c.best_text() if c else "—", ptext]
                row += [_signed(c.diff) if c else "—"] if delta else []
            rows.append(row)
    human = ", ".join(f"{_name('dataset', d)} {v}" for d, v in pub.HUMAN.items() if d in datasets)
    notes = [
        "Error rate (%): 10-crop test-fold error after the last epoch, mean ± standard error over folds"
        " (sample SD, ddof=1, / sqrt(n)); n=1 has no SE.",
        BEST_NOTE,
        "paper: the published value (UrbanSound8K without ±)"
        + ("; Δ = measured (last epoch) − paper, in points." if delta else "."),
    ] + pub.protocol_notes(paper_order({c.strategy for c in cells}, STRATEGY_ORDER))
    notes += [f"Human error (paper): {human}."] if human else []
    return _Table(title, header, rows, notes + _absent_notes(summary, strategies))


def _table3(summary: Summary) -> _Table:
    epsilons = sorted({c.epsilon for c in summary.fgsm if c.epsilon is not None}, reverse=True)
    epsilons = sorted(epsilons, key=lambda e: (e != 0.0, -e))  # eps = 0 (clean, same code path) first
    index = {(c.dataset, c.setup, c.strategy, c.epsilon, c.fgsm_kind): c for c in summary.fgsm}
    header = ["Dataset", "Model", "Learning"] + [
        h for e in epsilons for h in (f"ε={eps_label(e)} clip", f"ε={eps_label(e)} crop", "paper")
    ]
    rows = []
    for d, s, st in dict.fromkeys((c.dataset, c.setup, c.strategy) for c in summary.fgsm):
        row = [_name("dataset", d), _name("setup", s), _name("strategy", st)]
        for e in epsilons:
            clip, crop = index.get((d, s, st, e, "clip")), index.get((d, s, st, e, "crop"))
            paper = (clip or crop).published_text() if (clip or crop) else "—"
            row += [clip.text() if clip else "—", crop.text() if crop else "—", paper]
        rows.append(row)
    notes = [
        "FGSM error (%) on the test fold, mean ± standard error over folds. clip: 10-crop clip error (the mean"
        " softmax of a clip's attacked crops, as the clean test error); crop: single-crop error (each attacked"
        " crop judged alone). ε=0 is the clean error through the attack's code.",
        "paper: Table 3 (ESC-10; the paper does not state the model, so it is shown beside every ESC-10 model)."
        " Its errors at ε=1e-5 (36.2 / 26.8 / 25.0) sit far above every clean ESC-10 error of its Table 1,"
        " which points to per-crop judgement: compare it with the crop columns (docs/results.md).",
    ]
    return _Table("Table 3: FGSM error rates (%)", header, rows, notes)


def _verdict(c: Comparison) -> str:
    if c.significant:
        return "lower error" if (c.diff or 0) > 0 else "higher error"
    return "noise" if c.p_t is not None else "untestable"


def _comparisons_table(summary: Summary, compact: bool = False) -> _Table:
    if compact:  # terminal: clean test error only, fewer columns
        header = ["Dataset / Model", "Learning", "vs", "n", "e vs e_base", "rel. %", "t-test p", "Wilcoxon p",
                  "verdict"]
        rows = [[f"{_name('dataset', c.dataset)} / {_name('setup', c.setup)}", _name("strategy", c.strategy),
                 _name("strategy", c.baseline), str(len(c.folds)),
                 f"{_signed(c.mean, '.1f')} vs {_signed(c.baseline_mean, '.1f')}", _signed(c.relative),
                 _signed(c.p_t, ".3g"), _signed(c.p_wilcoxon, ".3g"), _verdict(c)]
                for c in summary.comparisons if c.metric == "test_error"]
        return _Table("Comparisons (paired across folds)", header, rows, [])
    header = ["Dataset", "Model", "Metric", "Learning", "vs", "n", "e_base", "e", "Δ pts", "rel. %",
              "paper rel. %", "t-test p", "Wilcoxon p", "verdict"]
    rows = [[
        _name("dataset", c.dataset), _name("setup", c.setup), c.metric, _name("strategy", c.strategy),
        _name("strategy", c.baseline), str(len(c.folds)), _signed(c.baseline_mean, ".1f"), _signed(c.mean, ".1f"),
        _signed(c.diff), _signed(c.relative), _signed(c.published_relative), _signed(c.p_t, ".3g"),
        _signed(c.p_wilcoxon, ".3g") if len(c.folds) >= WILCOXON_MIN_N else f"n/a (n<{WILCOXON_MIN_N})", _verdict(c),
    ] for c in summary.comparisons]
    notes = [
        "Δ pts = e_base − e and rel. % = 100 (e_base − e) / e_base on the folds both strategies completed;"
        " > 0 means fewer errors than the baseline. paper rel. %: the same from the paper's tables.",
        f"A difference is called only when the paired t-test gives p < {summary.alpha} and, where it is computed"
        f" (>= {WILCOXON_MIN_N} non-zero pairs), the Wilcoxon signed-rank test agrees; p-values are not corrected"
        " for the number of comparisons.",
    ]
    notes += [c.conclusion for c in summary.comparisons]
    return _Table("Comparisons (paired across folds)", header, rows, notes)


def _markdown(t: _Table) -> str:
    esc = [[x.replace("|", "\\|") for x in r] for r in [t.header, *t.rows]]
    lines = [f"## {t.title}", "", "| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines + [""] + [f"- {n}" for n in t.notes]) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
        "ε": r"$\epsilon$", "—": "--", "−": "-"}


def _tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in s)


def _latex(t: _Table) -> str:
    spec = "ll" + "r" * (len(t.header) - 2)
    lines = [f"% {_tex_escape(t.title)} (needs \\usepackage{{booktabs}})", f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines += [" & ".join(map(_tex_escape, t.header)) + r" \\", r"\midrule"]
    lines += [" & ".join(map(_tex_escape, r)) + r" \\" for r in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {_tex_escape(n)}" for n in t.notes]
    return "\n".join(lines) + "\n"


def _plain(t: _Table, notes: bool = True) -> str:
    widths = [max(len(r[i]) for r in [t.header, *t.rows]) for i in range(len(t.header))]
    fmt = lambda r: "  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    lines = [t.title, fmt(t.header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in t.rows]
    return "\n".join(lines + ([f"  * {n}" for n in t.notes] if notes else [])) + "\n"


_STEMS = ("table1", "table2", "table3", "comparisons")
REPORT_FILES = {f"{stem}.{ext}" for stem in _STEMS for ext in ("md", "csv", "tex")}
REPORT_FILES |= {"summary.json", "learning_curves.png", "fgsm.png", "fold_spread.png"}
CELL_FIELDS = ["dataset", "setup", "model", "strategy", "epsilon", "fgsm_kind", "n", "n_expected", "mean", "se",
               "folds_ok", "folds_failed", "folds_missing", "per_fold", "best_mean", "best_se", "best_per_fold",
               "best_every", "published", "published_se", "published_is", "diff"]
COMPARISON_FIELDS = ["dataset", "setup", "metric", "strategy", "baseline", "n", "folds", "baseline_mean", "mean",
                     "diff", "relative", "published_relative", "t", "p_t", "wilcoxon", "p_wilcoxon", "significant",
                     "conclusion"]


def _num(x: float | None) -> str:
    return "" if x is None else repr(round(x, 6))


def _cell_row(c: TableCell) -> dict[str, str]:
    return {
        "dataset": c.dataset, "setup": c.setup, "model": c.model, "strategy": c.strategy, "epsilon": _num(c.epsilon),
        "fgsm_kind": c.fgsm_kind or "", "n": str(c.n), "n_expected": str(len(c.expected)), "mean": _num(c.mean), "se": _num(c.se),
        "folds_ok": " ".join(map(str, sorted(c.values))), "folds_failed": " ".join(map(str, sorted(c.failed))),
        "folds_missing": " ".join(map(str, c.missing)),
        "per_fold": " ".join(f"{f}:{_num(v)}" for f, v in sorted(c.values.items())),
        "best_mean": _num(c.best_mean), "best_se": _num(c.best_se),
        "best_per_fold": " ".join(f"{f}:{_num(v)}" for f, v in sorted(c.best_values.items())),
        "best_every": " ".join(map(str, c.best_every)),
        "published_is": c.published_is or "",
        "published": _num(c.published), "published_se": _num(c.published_se), "diff": _num(c.diff),
    }


def _comparison_row(c: Comparison) -> dict[str, str]:
    nums = ("baseline_mean", "mean", "diff", "relative", "published_relative", "t", "p_t", "wilcoxon", "p_wilcoxon")
    return {k: _num(getattr(c, k)) for k in nums} | {
        "dataset": c.dataset, "setup": c.setup, "metric": c.metric, "strategy": c.strategy, "baseline": c.baseline,
        "n": str(len(c.folds)), "folds": " ".join(map(str, c.folds)), "significant": str(c.significant).lower(),
        "conclusion": c.conclusion,
    }


def _write_csv(path: Path, fields: list[str], rows: Iterable[dict[str, str]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def write_reports(summary: Summary, out_dir: str | Path, results: list[FoldResult] | None = None) -> dict[str, Path]:
    """Write tables (.md/.csv/.tex), summary.json and PNG plots to out_dir; return file name -> path."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t1_strategies = [s for s in paper_order({c.strategy for c in summary.cells}, STRATEGY_ORDER) if s not in ABLATION_ONLY]
    ablation_setups = {c.setup for c in summary.cells if c.strategy in ABLATION_ONLY}
    tables: dict[str, tuple[_Table, list[str], list[dict[str, str]]]] = {
        "table1": (_grid_table("Table 1: error rates (%)", summary, t1_strategies, pub.STRATEGY_NAMES),
                   CELL_FIELDS, [_cell_row(c) for c in summary.cells if c.strategy in t1_strategies]),
    }
    if ablation_setups:
        abl = summary.model_copy(update={"cells": [c for c in summary.cells if c.setup in ablation_setups]})
        t2 = _grid_table("Table 2: ablation, error rates (%)", abl, ABLATION_ROWS, pub.ABLATION_NAMES, "Variant")
        tables["table2"] = (t2, CELL_FIELDS, [_cell_row(c) for c in abl.cells if c.strategy in ABLATION_ROWS])
    if summary.fgsm:
        tables["table3"] = (_table3(summary), CELL_FIELDS, [_cell_row(c) for c in summary.fgsm])
    tables["comparisons"] = (_comparisons_table(summary), COMPARISON_FIELDS,
                             [_comparison_row(c) for c in summary.comparisons])
    written: dict[str, Path] = {}
    for stem, (table, fields, rows) in tables.items():
        for ext, text in (("md", _markdown(table)), ("tex", _latex(table))):
            (out / f"{stem}.{ext}").write_text(text)
            written[f"{stem}.{ext}"] = out / f"{stem}.{ext}"
        _write_csv(out / f"{stem}.csv", fields, rows)
        written[f"{stem}.csv"] = out / f"{stem}.csv"
    (out / "summary.json").write_text(summary.model_dump_json(indent=2))
    written["summary.json"] = out / "summary.json"
    chosen = list(select_results(results)[0].values()) if results else []
    for name, path in (
        ("learning_curves.png", plots.plot_learning_curves(chosen, out / "learning_curves.png")),
        ("fgsm.png", plots.plot_fgsm(summary, out / "fgsm.png")),
        ("fold_spread.png", plots.plot_fold_spread(summary, out / "fold_spread.png")),
    ):
        if path is not None:
            written[name] = path
    for name in REPORT_FILES - written.keys():  # drop what an earlier aggregation wrote and this one did not
        (out / name).unlink(missing_ok=True)
    return written


def format_terminal(summary: Summary) -> str:
    """Table 1 with its absent folds, then the test-error comparisons, as compact plain text for the CLI."""
    t1_strategies = [s for s in paper_order({c.strategy for c in summary.cells}, STRATEGY_ORDER) if s not in ABLATION_ONLY]
    parts = [] if summary.paper_schedule else [SHORT_SCHEDULE_NOTE + "\n"]
    parts.append(_plain(_grid_table("Table 1: error rates (%)", summary, t1_strategies, pub.STRATEGY_NAMES,
                                    delta=summary.paper_schedule)))
    if any(c.metric == "test_error" for c in summary.comparisons):
        parts.append(_plain(_comparisons_table(summary, compact=True)))
        parts.append(f"A difference is called only at p < {summary.alpha} (paired t-test, and Wilcoxon where"
                     f" n >= {WILCOXON_MIN_N}); otherwise it is within fold-to-fold noise.\n")
        parts.append("".join(f"  - {c.conclusion}\n" for c in summary.comparisons
                             if c.metric == "test_error" and c.significant))
    n_fgsm = sum(c.metric != "test_error" for c in summary.comparisons)
    if n_fgsm:
        parts.append(f"{n_fgsm} FGSM comparison(s), Tables 2-3 and plots: see the report directory.\n")
    return "\n".join(parts)
