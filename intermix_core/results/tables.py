"""Reports: the Summary from `intermix_core.results.statistics` as Markdown, CSV and LaTeX tables, report files, terminal text.

`write_reports` writes Table 1 (error rates), Table 2 (ablation), Table 3 (FGSM) and the paired comparisons as
.md/.csv/.tex, plus summary.json and the PNG figures from `intermix_core.results.plots`; `format_terminal` is the compact
plain-text view for the CLI.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from intermix_core.common.text import cut, duration
from intermix_core.common.yamlfile import dump_yaml
from intermix_core.records import FoldResult, fold_label
from intermix_core.results import html, plots
from intermix_core.results import paper as pub
from intermix_core.results.paper import display_name as _name
from intermix_core.results.statistics import (
    ABLATION_ONLY,
    ABLATION_ROWS,
    STRATEGY_ORDER,
    WILCOXON_MIN_N,
    Comparison,
    MissingFold,
    Summary,
    TableCell,
    best_label,
    effect_text,
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
    delta: bool = True, schedule_note: bool = True,
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
        + ("; Δ = measured − paper, in points, from the column the row's published protocol names (the note below):"
           " best† for rows published as the best epoch, else the last epoch." if delta else "."),
    ] + pub.protocol_notes(paper_order({c.strategy for c in cells}, STRATEGY_ORDER))
    notes += pub.own_settings_notes(paper_order({c.setup for c in cells}, list(pub.SETUP_NAMES)),
                                    [c.strategy for c in cells if c.published is not None])
    notes += [f"Human error (paper): {human}."] if human else []
    if not summary.paper_schedule and schedule_note:
        notes.insert(0, SHORT_SCHEDULE_NOTE)
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
    if c.same_every_fold:
        return "same difference on every fold: no t-test"
    return "noise" if c.p_t is not None else "untestable (n<2)"


def _fold_counts(comparisons: Sequence[Comparison]) -> str:
    """'n = 2 paired folds' or 'n = 3 to 5 paired folds' over the comparisons that have folds."""
    ns = sorted({len(c.folds) for c in comparisons if c.folds})
    if not ns:
        return "no paired folds"
    return f"n = {ns[0]} paired fold{'s' if ns[0] != 1 else ''}" if len(ns) == 1 else f"n = {ns[0]} to {ns[-1]} paired folds"


def comparisons_statement(summary: Summary) -> str:
    """How many comparisons, on how many folds, corrected how, and how many are called: one plain sentence."""
    comps = summary.comparisons
    if not comps:
        return "No comparisons: fewer than two strategies with results on the same dataset and model."
    called = sum(c.significant for c in comps)
    families = len({c.metric for c in comps})
    few = min((len(c.folds) for c in comps if c.folds), default=0)
    power = (f" With {few} folds a paired test has {few - 1} degree{'s' if few != 2 else ''} of freedom: only large,"
             " consistent differences can be called." if 0 < few < 5 else "")
    return (f"{len(comps)} paired comparison(s), each on the folds both strategies completed ({_fold_counts(comps)})."
            f" p-values are Holm-adjusted within each metric ({families} famil{'y' if families == 1 else 'ies'}: the"
            f" clean error, each FGSM epsilon and kind); a difference is called at adjusted p < {summary.alpha}"
            f" (t-test, and Wilcoxon where >= {WILCOXON_MIN_N} non-zero pairs). Beside each p-value, the effect: the"
            f" mean paired difference with its {100 * (1 - summary.alpha):.0f} % confidence interval and Cohen's d_z."
            f" Called: {called}; the other {len(comps) - called} are within fold-to-fold noise or cannot be tested"
            " (a single paired fold, or a difference identical on every fold, whose zero spread leaves a t-test no"
            f" p-value: its row says so).{power}")


def _comparisons_table(summary: Summary, compact: bool = False) -> _Table:
    if compact:  # terminal: clean test error only, fewer columns
        header = ["Dataset / Model", "Learning", "vs", "n", "e vs e_base", "rel. %", "t-test p", "Holm p", "verdict"]
        rows = [[f"{_name('dataset', c.dataset)} / {_name('setup', c.setup)}", _name("strategy", c.strategy),
                 _name("strategy", c.baseline), str(len(c.folds)),
                 f"{_signed(c.mean, '.1f')} vs {_signed(c.baseline_mean, '.1f')}", _signed(c.relative),
                 _signed(c.p_t, ".3g"), _signed(c.p_t_holm, ".3g"), _verdict(c)]
                for c in summary.comparisons if c.metric == "test_error"]
        return _Table("Comparisons (paired across folds)", header, rows, [])
    header = ["Dataset", "Model", "Metric", "Learning", "vs", "n", "e_base", "e", "Δ pts", "Δ [95% CI], d_z", "rel. %",
              "paper rel. %", "t-test p", "Holm p", "Wilcoxon p", "verdict"]
    rows = [[
        _name("dataset", c.dataset), _name("setup", c.setup), c.metric, _name("strategy", c.strategy),
        _name("strategy", c.baseline), str(len(c.folds)), _signed(c.baseline_mean, ".1f"), _signed(c.mean, ".1f"),
        _signed(c.diff), effect_text(c), _signed(c.relative), _signed(c.published_relative), _signed(c.p_t, ".3g"),
        _signed(c.p_t_holm, ".3g"),
        _signed(c.p_wilcoxon, ".3g") if len(c.folds) >= WILCOXON_MIN_N else f"n/a (n<{WILCOXON_MIN_N})", _verdict(c),
    ] for c in summary.comparisons]
    called = [c.conclusion for c in summary.comparisons if c.significant]
    notes = [
        comparisons_statement(summary),
        "Δ pts = e_base − e and rel. % = 100 (e_base − e) / e_base on the folds both strategies completed;"
        " > 0 means fewer errors than the baseline. Δ [95% CI]: the t-based confidence interval of the mean paired"
        " difference (wide with few folds); d_z = mean / SD of the paired differences (Cohen's effect size for paired"
        " data). paper rel. %: the same from the paper's tables."
        " Metric: test_error (clean, last epoch), fgsm@ε (10-crop clip error under FGSM), fgsm_crop@ε (single crop);"
        " ε = 0 is not compared (no attack; Table 3 shows it).",
    ] + (called or ["No difference is called."])
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
REPORT_FILES |= {"summary.json", "learning_curves.png", "fold_curves.png", "fgsm.png", "fold_spread.png", "confusion.png",
                 "report.html"}
REPORT_HTML = "report.html"  # the one file to open: every table, note, figure and absent fold of the aggregation
CELL_FIELDS = ["dataset", "setup", "model", "strategy", "epsilon", "fgsm_kind", "n", "n_expected", "mean", "se",
               "folds_ok", "folds_failed", "folds_missing", "per_fold", "best_mean", "best_se", "best_per_fold",
               "best_every", "published", "published_se", "published_is", "diff", "diff_of"]
COMPARISON_FIELDS = ["dataset", "setup", "metric", "strategy", "baseline", "n", "folds", "baseline_mean", "mean",
                     "diff", "ci_low", "ci_high", "dz", "same_every_fold", "relative", "published_relative", "t", "p_t",
                     "wilcoxon", "p_wilcoxon", "p_t_holm", "p_wilcoxon_holm", "family", "significant", "conclusion"]


def _num(x: float | None) -> str:
    return "" if x is None else repr(round(x, 6))


def _cell_row(c: TableCell, delta: bool = True) -> dict[str, str]:
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
        "published": _num(c.published), "published_se": _num(c.published_se), "diff": _num(c.diff) if delta else "",
        "diff_of": (c.diff_of or "") if delta else "",
    }


def _comparison_row(c: Comparison) -> dict[str, str]:
    nums = ("baseline_mean", "mean", "diff", "ci_low", "ci_high", "dz", "relative", "published_relative", "t", "p_t",
            "wilcoxon", "p_wilcoxon", "p_t_holm", "p_wilcoxon_holm")
    return {k: _num(getattr(c, k)) for k in nums} | {
        "same_every_fold": str(c.same_every_fold).lower(),
        "dataset": c.dataset, "setup": c.setup, "metric": c.metric, "strategy": c.strategy, "baseline": c.baseline,
        "n": str(len(c.folds)), "folds": " ".join(map(str, c.folds)), "significant": str(c.significant).lower(),
        "family": str(c.family),
        "conclusion": c.conclusion,
    }


def _write_csv(path: Path, fields: list[str], rows: Iterable[dict[str, str]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


RerunCommand = Callable[[MissingFold], str]


def report_tables(summary: Summary) -> dict[str, tuple[_Table, list[str], list[dict[str, str]]]]:
    """The report's tables by file stem (table1, table2 if ablation results exist, table3 if FGSM, comparisons)."""
    delta = summary.paper_schedule  # measured − paper means something only on the paper's schedule
    t1_strategies = [s for s in paper_order({c.strategy for c in summary.cells}, STRATEGY_ORDER) if s not in ABLATION_ONLY]
    ablation_setups = {c.setup for c in summary.cells if c.strategy in ABLATION_ONLY}
    tables: dict[str, tuple[_Table, list[str], list[dict[str, str]]]] = {
        "table1": (_grid_table("Table 1: error rates (%)", summary, t1_strategies, pub.STRATEGY_NAMES, delta=delta),
                   CELL_FIELDS, [_cell_row(c, delta) for c in summary.cells if c.strategy in t1_strategies]),
    }
    if ablation_setups:
        abl = summary.model_copy(update={"cells": [c for c in summary.cells if c.setup in ablation_setups]})
        t2 = _grid_table("Table 2: ablation, error rates (%)", abl, ABLATION_ROWS, pub.ABLATION_NAMES, "Variant", delta)
        tables["table2"] = (t2, CELL_FIELDS, [_cell_row(c, delta) for c in abl.cells if c.strategy in ABLATION_ROWS])
    if summary.fgsm:
        tables["table3"] = (_table3(summary), CELL_FIELDS, [_cell_row(c) for c in summary.fgsm])
    tables["comparisons"] = (_comparisons_table(summary), COMPARISON_FIELDS,
                             [_comparison_row(c) for c in summary.comparisons])
    return tables


def write_reports(summary: Summary, out_dir: str | Path, results: list[FoldResult] | None = None, *,
                  title: str | None = None, rerun_command: RerunCommand | None = None) -> dict[str, Path]:
    """Write tables (.md/.csv/.tex), summary.json, PNG plots and report.html to out_dir; return file name -> path.

    `title` heads report.html (e.g. the grid id); `rerun_command` gives the command that reruns an absent fold.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = report_tables(summary)
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
        ("fold_spread.png", plots.plot_fold_spread(summary, out / "fold_spread.png")),
        ("learning_curves.png", plots.plot_learning_curves(chosen, out / "learning_curves.png")),
        ("fold_curves.png", plots.plot_fold_curves(chosen, out / "fold_curves.png")),
        ("fgsm.png", plots.plot_fgsm(summary, out / "fgsm.png")),
        ("confusion.png", plots.plot_confusions(chosen, out / "confusion.png")),
    ):
        if path is not None:
            written[name] = path
    (out / REPORT_HTML).write_text(_html_report(summary, tables, written, title, rerun_command))
    written[REPORT_HTML] = out / REPORT_HTML
    for name in REPORT_FILES - written.keys():  # drop what an earlier aggregation wrote and this one did not
        (out / name).unlink(missing_ok=True)
    return written


def install_reports(staging: str | Path, out_dir: str | Path) -> list[Path]:
    """Move the complete report files of `staging` into out_dir, each with one rename; drop report files it lacks."""
    src, out = Path(staging), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    moved = []
    for path in sorted(p for p in src.iterdir() if p.is_file()):
        os.replace(path, out / path.name)
        moved.append(out / path.name)
    for name in REPORT_FILES - {p.name for p in moved}:  # what an earlier aggregation wrote and this one did not
        (out / name).unlink(missing_ok=True)
    return moved


FIGURES = {  # file -> (section title, caption)
    "fold_spread.png": ("Per-fold test errors", "Each fold's last-epoch test error per strategy, fold numbers marked;"
                        " the paper's value as a red x; absent folds listed under each strategy."),
    "learning_curves.png": ("Learning curves", "Mean over folds with a ±1 SE band; test-fold error at every evaluated"
                            " epoch (markers)."),
    "fold_curves.png": ("Learning curves per fold", "Every fold on its own: test-fold error at each evaluated epoch"
                        " (markers) and the training error on the (mixed) labels (thin)."),
    "fgsm.png": ("FGSM", "Error vs epsilon (log scale), 10-crop clip (solid) and single crop (dotted), ±1 SE;"
                 " the paper's Table 3 dashed."),
    "confusion.png": ("Confusion matrices", "Rows: true class, columns: predicted class, counts of test clips summed"
                      " over each cell's folds (10-crop clip predictions after the last epoch)."),
}


def _html_report(summary: Summary, tables: dict[str, tuple[_Table, list[str], list[dict[str, str]]]],
                 files: dict[str, Path], title: str | None, rerun_command: RerunCommand | None) -> str:
    """report.html: what was aggregated, absent folds with their rerun commands, the tables, comparisons, figures."""
    folds = sorted({len(c.expected) for c in summary.cells})
    counted = sorted({c.n for c in summary.cells})
    head = [html.paragraph(
        f"Aggregated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from {summary.n_results} fold result(s)"
        f" ({summary.n_superseded} superseded by reruns); {len(summary.cells)} cell(s), each a mean over"
        f" {'/'.join(map(str, counted)) or 0} fold(s) of {'/'.join(map(str, folds)) or 0} expected.", "meta")]
    if not summary.paper_schedule:
        head.append(html.paragraph(SHORT_SCHEDULE_NOTE, "warn"))
    sections = ["".join(head)]
    nav = []
    if summary.provenance:
        sections.append(_provenance_section(summary, title))
        nav.append(("provenance", "Provenance"))
    absent = summary.missing
    if absent:
        items = []
        for m in absent:
            what = f"{m.dataset}/{m.setup}/{m.strategy} fold {m.fold}: " + (
                "no result yet" if m.reason == "missing" else f"failed: {first_line(m.error)}")
            items.append((what, rerun_command(m) if rerun_command else ""))
        sections.append('<section id="absent"><h2>Folds without a result</h2>'
                        + html.paragraph(f"{len(absent)} expected fold(s) are not in the tables; each line gives the"
                                         " command that trains it again (resuming from its stored checkpoint; on"
                                         " Kubeflow add --host URL and --cluster-options FILE).", "bad")
                        + html.commands(items) + "</section>")
        nav.append(("absent", "Absent folds"))
    for stem in ("table1", "table2", "table3"):
        if stem in tables:
            t = tables[stem][0]
            sections.append(html.table(stem, t.title, t.header, t.rows, t.notes))
            nav.append((stem, t.title.split(":")[0]))
    comp = tables["comparisons"][0]
    called = [c for c in summary.comparisons if c.significant]
    rows_called = [r for r, c in zip(comp.rows, summary.comparisons) if c.significant]
    body = html.paragraph(comparisons_statement(summary))
    if rows_called:
        body += html.table("called", "Called differences", comp.header, rows_called, [c.conclusion for c in called])
    body += ("<details><summary>All comparisons</summary>"
             + html.table("all-comparisons", "All comparisons", comp.header, comp.rows, comp.notes[1:2],
                          ["called" if c.significant else "" for c in summary.comparisons]) + "</details>")
    sections.append(f'<section id="comparisons"><h2>Comparisons</h2>{body}</section>')
    nav.append(("comparisons", "Comparisons"))
    for name, (section, caption) in FIGURES.items():
        if name in files:
            anchor = name.removesuffix(".png")
            sections.append(f'<section id="{anchor}"><h2>{html.esc(section)}</h2>'
                            f"{html.image(files[name], section, caption)}</section>")
            nav.append((anchor, section))
    return html.page(f"intermix report: {title}" if title else "intermix report", sections, nav)


def _distinct(values: Iterable[str | None]) -> str:
    """'a', or 'a (3 folds), b (1 fold)' when the folds differ; 'not recorded' for None."""
    counts: dict[str, int] = {}
    for v in values:  # read from results in a store: cut, never trusted to be short
        key = cut(v, 120) if v else "not recorded"
        counts[key] = counts.get(key, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{v} ({n} fold{'s' if n != 1 else ''})" for v, n in counts.items())


def _provenance_section(summary: Summary, title: str | None) -> str:
    """Where the tables come from: grid, commit(s), machine(s), device(s), torch; each fold's wall time; the configs."""
    prov = summary.provenance
    lines = [f"Grid: {title or 'results given as files (no grid)'}.",
             f"Code: commit {_distinct(p.git_commit for p in prov)}.",
             f"Machine: {_distinct(p.machine for p in prov)}.",
             f"Device: {_distinct(p.device for p in prov)}; torch {_distinct(p.torch for p in prov)}.",
             f"Training wall time: {duration(sum(p.train_seconds or 0.0 for p in prov))} over {len(prov)} fold(s)"
             " (FGSM and evaluation after the last epoch not included)."]
    rows = [[fold_label(p.dataset, p.setup, p.strategy, p.fold), str(p.epochs),
             duration(p.train_seconds) if p.train_seconds is not None else "—",
             (p.git_commit or "—")[:10], cut(p.device, 120) if p.device else "—"] for p in prov]
    configs = "".join(f"<details><summary>{html.esc(label)}</summary><pre>{html.esc(dump_yaml(cfg))}</pre></details>"
                      for label, cfg in summary.configs.items())
    return ('<section id="provenance"><h2>Provenance</h2>' + "".join(html.paragraph(x, "meta") for x in lines)
            + html.table("fold-provenance", "Each fold", ["fold", "epochs", "training wall time", "commit", "device"],
                         rows, [])
            + (f"<h3>Configuration of each cell (resolved; its folds share it)</h3>{configs}" if configs else "")
            + "</section>")


def format_terminal(summary: Summary) -> str:
    """Table 1 with its absent folds, then the test-error comparisons, as compact plain text for the CLI."""
    t1_strategies = [s for s in paper_order({c.strategy for c in summary.cells}, STRATEGY_ORDER) if s not in ABLATION_ONLY]
    parts = [] if summary.paper_schedule else [SHORT_SCHEDULE_NOTE + "\n"]
    parts.append(_plain(_grid_table("Table 1: error rates (%)", summary, t1_strategies, pub.STRATEGY_NAMES,
                                    delta=summary.paper_schedule, schedule_note=False)))
    if any(c.metric == "test_error" for c in summary.comparisons):
        parts.append(_plain(_comparisons_table(summary, compact=True)))
        parts.append(comparisons_statement(summary) + "\n")
        called = "".join(f"  - {c.conclusion}\n" for c in summary.comparisons if c.metric == "test_error" and c.significant)
        if called:
            parts.append(called)
    more = [name for name, there in (
        ("Table 2 (ablation)", any(c.strategy in ABLATION_ONLY for c in summary.cells)),
        ("Table 3 (FGSM)", bool(summary.fgsm)),
        (f"{sum(c.metric != 'test_error' for c in summary.comparisons)} FGSM comparison(s)",
         any(c.metric != "test_error" for c in summary.comparisons)),
    ) if there]
    parts.append(f"{', '.join(more + ['the figures'])}: in {REPORT_HTML}.\n")
    return "\n".join(parts)
