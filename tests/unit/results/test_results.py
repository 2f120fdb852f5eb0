"""Aggregation, paired tests, published values, reports, plots and the MLflow summary run, on hand-made fold results."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import pytest
from scipy import stats

from intermix_core.records import EpochRecord, FoldResult, save_result
from intermix_core.results import paper as pub
from intermix_core.results.statistics import aggregate, collect_results, mean_se, paired_test
from intermix_core.results.tables import format_terminal, write_reports
from intermix_core.tracking.summary import log_summary_to_mlflow

from fake_results import MIX, STD, fr, grid

# ------------------------------------------------------------------ statistics


def test_mean_and_standard_error_by_hand() -> None:
    s = aggregate(grid({"intermix": [10.0, 12.0, 14.0, 16.0, 18.0]}))
    c = s.cell("esc10", "envnet_v2", "intermix")
    assert c is not None and c.n == 5 and c.missing == [] and c.failed == {}
    assert c.mean == pytest.approx(14.0)
    # sample SD = sqrt((16 + 4 + 0 + 4 + 16) / 4) = sqrt(10); SE = sqrt(10) / sqrt(5) = sqrt(2)
    assert c.se == pytest.approx(math.sqrt(2.0))
    assert c.text() == "14.0 ± 1.41"


def test_single_fold_has_no_standard_error() -> None:
    assert mean_se([7.5]) == (7.5, None)
    c = aggregate([fr("bc", 2, 7.5)]).cell("esc10", "envnet_v2", "bc")
    assert c.se is None and c.text().startswith("7.5 (n=1) (1/5 folds;")


def test_paired_t_test_by_hand() -> None:
    s = aggregate(grid({"standard": STD, "intermix": MIX}))
    (comp,) = [c for c in s.comparisons if c.metric == "test_error"]
    assert (comp.strategy, comp.baseline, comp.folds) == ("intermix", "standard", [1, 2, 3, 4, 5])
    d = [b - m for b, m in zip(STD, MIX)]
    n = len(d)
    mean_d = sum(d) / n  # 4.6
    sd_d = math.sqrt(sum((x - mean_d) ** 2 for x in d) / (n - 1))  # sqrt(0.8)
    t = mean_d / (sd_d / math.sqrt(n))
    assert t == pytest.approx(11.5)
    assert comp.t == pytest.approx(t)
    assert comp.p_t == pytest.approx(2 * stats.t.sf(t, n - 1))
    assert comp.p_t == pytest.approx(stats.ttest_rel(STD, MIX).pvalue)
    assert comp.diff == pytest.approx(4.6)
    assert comp.relative == pytest.approx(100 * (22.4 - 17.8) / 22.4)
    assert comp.p_wilcoxon is None  # 5 pairs: the exact test cannot reach p < 0.05
    assert comp.significant and "has lower error than Standard" in comp.conclusion
    assert comp.published_relative == pytest.approx(100 * (14.2 - 8.2) / 14.2)


def test_no_winner_without_significance() -> None:
    s = aggregate(grid({"standard": [10.0, 12.0, 11.0, 13.0, 12.0], "bc": [11.0, 11.0, 12.0, 12.0, 12.0]}))
    (comp,) = s.comparisons
    assert comp.t == pytest.approx(0.0) and comp.p_t == pytest.approx(1.0)
    assert not comp.significant
    assert "within fold-to-fold noise" in comp.conclusion
    assert "lower error" not in comp.conclusion and "higher error" not in comp.conclusion


def test_wilcoxon_with_ten_folds_and_disagreement() -> None:
    std = [30.0 + i for i in range(10)]
    better = [x - (1.0 + 0.1 * i) for i, x in enumerate(std)]  # every fold improves, all |d| distinct
    s = aggregate(grid({"standard": std, "intermix": better}, dataset="urbansound8k"))
    (comp,) = s.comparisons
    assert comp.wilcoxon == 0.0 and comp.p_wilcoxon == pytest.approx(2 / 2**10)  # exact: both all-sign patterns
    assert comp.significant
    # t-test significant, Wilcoxon not: no conclusion is drawn
    d = [3, 3, 3, 3, 3, 3, -0.1, -0.2, -0.3, -0.4]
    out = paired_test([50.0 + x for x in d], [50.0] * 10)
    assert out["p_t"] < 0.05 <= out["p_wilcoxon"]
    s = aggregate(grid({"standard": [50.0 + x for x in d], "bc": [50.0] * 10}, dataset="urbansound8k"))
    assert not s.comparisons[0].significant and "Wilcoxon is not" in s.comparisons[0].conclusion


# ------------------------------------------------------------------ missing, failed, reruns


def test_missing_and_failed_folds_are_shown_and_counted() -> None:
    results = [fr("intermix", 1, 10.0), fr("intermix", 2, 12.0), fr("intermix", 3, None), fr("intermix", 4, 14.0)]
    results += grid({"standard": STD})
    s = aggregate(results)
    c = s.cell("esc10", "envnet_v2", "intermix")
    assert c.n == 3 and sorted(c.values) == [1, 2, 4] and c.failed == {3: "CUDA out of memory"} and c.missing == [5]
    assert c.mean == pytest.approx(12.0) and c.se == pytest.approx(2.0 / math.sqrt(3))
    assert c.text() == "12.0 ± 1.15 (3/5 folds; fold 3 failed; fold 5 missing)"
    assert {(m.fold, m.reason) for m in s.missing} == {(3, "failed"), (5, "missing")}
    (comp,) = s.comparisons
    assert comp.folds == [1, 2, 4]  # paired on the folds both have
    assert comp.baseline_mean == pytest.approx((20.0 + 22.0 + 21.0) / 3)


def test_expected_folds_argument() -> None:
    s = aggregate([fr("bc", 1, 10.0), fr("bc", 2, 11.0)], expected_folds={"esc10": [1, 2]})
    c = s.cell("esc10", "envnet_v2", "bc")
    assert c.expected == [1, 2] and c.missing == [] and c.text() == "10.5 ± 0.50"


def test_rerun_ordering_later_wins_and_ok_beats_failed() -> None:
    s = aggregate([fr("bc", 1, None), fr("bc", 1, 12.0)])  # failed, then ok
    c = s.cell("esc10", "envnet_v2", "bc")
    assert c.n == 1 and c.values == {1: 12.0} and c.failed == {} and s.n_superseded == 1
    assert [m.fold for m in s.missing] == [2, 3, 4, 5]
    assert aggregate([fr("bc", 1, 10.0), fr("bc", 1, 12.0)]).cell("esc10", "envnet_v2", "bc").values == {1: 12.0}
    s = aggregate([fr("bc", 1, 10.0), fr("bc", 1, None)])  # a later failure does not erase a success
    assert s.cell("esc10", "envnet_v2", "bc").values == {1: 10.0}
    assert any("latest attempt failed" in n for n in s.notes)


def test_collect_results_orders_by_mtime(tmp_path: Path) -> None:
    newer, older = tmp_path / "a" / "fold1-a.json", tmp_path / "b" / "fold1-b.json"
    save_result(fr("bc", 1, 12.0), newer)  # sorts first by name, but is the newest file
    save_result(fr("bc", 1, 10.0), older)
    os.utime(older, (1_000_000, 1_000_000))
    os.utime(newer, (2_000_000, 2_000_000))
    (tmp_path / "notes.json").write_text(json.dumps({"something": "else"}))  # not a result: skipped
    results = collect_results(tmp_path)
    assert [r.test_error for r in results] == [10.0, 12.0]
    assert aggregate(results).cell("esc10", "envnet_v2", "bc").values == {1: 12.0}
    (tmp_path / "broken.json").write_text(json.dumps({"dataset": "esc10", "strategy": "bc", "fold": "x"}))
    with pytest.raises(ValueError, match="broken.json"):
        collect_results(tmp_path)
    with pytest.raises(FileNotFoundError):
        collect_results(tmp_path / "nope")


# ------------------------------------------------------------------ published values


def test_published_column_and_difference() -> None:
    s = aggregate(grid({"intermix": [8.0, 9.0, 8.5, 9.5, 8.0]}) + [fr("intermix", 1, 22.0, "urbansound8k")])
    c = s.cell("esc10", "envnet_v2", "intermix")
    assert (c.published, c.published_se) == (8.2, 0.4)
    assert c.published_text() == "8.2 ± 0.4"
    assert c.diff_of == "best" and c.diff is None  # InterMix was published as the best epoch: none was recorded here
    u = s.cell("urbansound8k", "envnet_v2", "intermix")
    assert (u.published, u.published_se, u.published_text()) == (21.4, None, "21.4")
    assert pub.published_error("esc50", "envnet_v2_aug", "intermix_vanilla").mean == 13.6
    assert pub.published_error("esc50", "envnet_v2", "intermix_vanilla") is None
    assert pub.published_fgsm("esc10", "standard", 0.01) == 64.5 and pub.published_fgsm("esc50", "bc", 0.01) is None
    assert pub.HUMAN == {"esc50": 18.7, "esc10": 4.3}


def test_paper_relative_improvements_follow_from_its_table() -> None:
    for (dataset, setup, baseline), printed in pub.RELATIVE_IMPROVEMENTS.items():
        rel = pub.relative_improvement(pub.TABLE1[(dataset, setup, baseline)].mean,
                                       pub.TABLE1[(dataset, setup, "intermix")].mean)
        assert abs(rel - printed) <= 0.1, (dataset, setup, baseline, rel, printed)
    assert len(pub.TABLE1) == 6 * 4 * 3


# ------------------------------------------------------------------ reports and plots


def _history(final: float, epochs: int = 6) -> list[EpochRecord]:
    return [EpochRecord(epoch=e, lr=0.1, train_loss=2.0 / e, train_error=50.0 / e,
                        val_error=final + 20.0 / e if e % 2 == 0 else None) for e in range(1, epochs + 1)]


def full_grid() -> list[FoldResult]:
    """Two setups x five strategies x five ESC-10 folds with histories and FGSM; one fold absent, one failed rerun."""
    fgsm = lambda e: {"0.01": e + 30, "0.001": e + 10, "0.0001": e + 2, "1e-05": e + 1}  # noqa: E731
    out = []
    for setup in ("envnet_v2", "envnet_v2_aug"):
        for strategy, base in (("standard", STD), ("bc", MIX), ("intermix", [x - 1 for x in MIX]),
                               ("intermix_vanilla", MIX), ("intermix_hidden", MIX)):
            for fold, e in enumerate(base, start=1):
                out.append(fr(strategy, fold, e, setup=setup, history=_history(e), fgsm=fgsm(e)))
    out.append(fr("bc", 3, None, setup="envnet_v2"))  # a failed rerun after a success: ignored, noted
    return [r for r in out if not (r.setup == "envnet_v2_aug" and r.strategy == "bc" and r.fold == 5)]


def test_reports_written_and_parseable(tmp_path: Path) -> None:
    results = full_grid()
    s = aggregate(results)
    files = write_reports(s, tmp_path / "report", results)
    for stem in ("table1", "table2", "table3", "comparisons"):
        for ext in ("md", "csv", "tex"):
            assert files[f"{stem}.{ext}"].is_file() and files[f"{stem}.{ext}"].stat().st_size > 0
    rows = list(csv.DictReader(files["table1.csv"].open(newline="")))
    assert {r["strategy"] for r in rows} == {"standard", "bc", "intermix"}
    row = next(r for r in rows if (r["setup"], r["strategy"]) == ("envnet_v2", "intermix"))
    assert float(row["mean"]) == pytest.approx(sum(MIX) / 5 - 1) and float(row["published"]) == 8.2
    assert (row["diff"], row["diff_of"], row["n"]) == ("", "best", "5")  # no best epoch recorded: no Δ, not the last's
    std = next(r for r in rows if (r["setup"], r["strategy"]) == ("envnet_v2", "standard"))
    assert float(std["diff"]) == pytest.approx(float(std["mean"]) - 14.2) and std["diff_of"] == "last"
    aug_bc = next(r for r in rows if (r["setup"], r["strategy"]) == ("envnet_v2_aug", "bc"))
    assert (aug_bc["n"], aug_bc["n_expected"], aug_bc["folds_missing"]) == ("4", "5", "5")
    assert {r["strategy"] for r in csv.DictReader(files["table2.csv"].open(newline=""))} == {
        "intermix_vanilla", "intermix_hidden", "intermix"}
    t3 = list(csv.DictReader(files["table3.csv"].open(newline="")))
    assert {float(r["epsilon"]) for r in t3} == {1e-2, 1e-3, 1e-4, 1e-5}
    std01 = next(r for r in t3 if (r["setup"], r["strategy"], float(r["epsilon"])) == ("envnet_v2", "standard", 0.01))
    assert float(std01["mean"]) == pytest.approx(sum(STD) / 5 + 30) and float(std01["published"]) == 64.5
    comps = list(csv.DictReader(files["comparisons.csv"].open(newline="")))
    assert {"relative", "p_t", "p_wilcoxon", "significant", "conclusion"} <= set(comps[0])
    for stem in ("table1", "table2", "table3", "comparisons"):
        md = files[f"{stem}.md"].read_text().splitlines()
        table = [line for line in md if line.startswith("|")]
        assert len({line.count(" | ") for line in table if not line.startswith("|---")}) == 1
        tex = files[f"{stem}.tex"].read_text()
        assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
        ncols = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1))
        body = [line for line in tex.splitlines() if line.endswith(r"\\")]
        assert body and all(len(re.findall(r"(?<!\\)&", line)) == ncols - 1 for line in body)
    t1 = files["table1.md"].read_text()
    assert "(4/5 folds; fold 5 missing)" in t1 and "latest attempt failed" in t1
    assert json.loads(files["summary.json"].read_text())["n_results"] == len(results)


def test_tables_2_and_3_only_when_present(tmp_path: Path) -> None:
    results = full_grid()
    write_reports(aggregate(results), tmp_path, results)
    assert (tmp_path / "table2.md").is_file() and (tmp_path / "fgsm.png").is_file()
    files = write_reports(aggregate(grid({"standard": STD, "bc": MIX})), tmp_path)  # same directory, smaller grid
    assert "table1.md" in files and "table2.md" not in files and "table3.md" not in files
    assert "learning_curves.png" not in files and "fgsm.png" not in files  # no histories, no FGSM
    assert not (tmp_path / "table2.md").exists() and not (tmp_path / "fgsm.png").exists()  # stale outputs removed


def test_plots_are_png(tmp_path: Path) -> None:
    results = full_grid()
    files = write_reports(aggregate(results), tmp_path, results)
    for name in ("learning_curves.png", "fgsm.png", "fold_spread.png"):
        data = files[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_terminal_output() -> None:
    text = format_terminal(aggregate(full_grid()))
    assert text.startswith("Table 1: error rates (%)")
    assert "EnvNet-v2 + aug" in text and "8.2 ± 0.4" in text and "(4/5 folds; fold 5 missing)" in text
    assert "Comparisons (paired across folds)" in text and "has lower error than Standard" in text


# ------------------------------------------------------------------ MLflow


def test_mlflow_summary_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)  # the SQLite store's default artifact root is relative to the working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    out = tmp_path / "report"
    write_reports(aggregate(grid({"standard": STD, "intermix": MIX})), out)
    mlflow.set_tracking_uri(uri)
    try:
        run_id = log_summary_to_mlflow(out, grid_id="paper-0123456789")
    finally:
        mlflow.set_tracking_uri(None)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.tags["intermix.kind"] == "summary" and run.data.tags["intermix.grid_id"] == "paper-0123456789"
    assert run.data.metrics["test_error/esc10/envnet_v2/intermix"] == pytest.approx(sum(MIX) / 5)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"table1.md", "table1.csv", "table1.tex", "comparisons.md", "fold_spread.png", "report.html"} <= artifacts
    # a rerun of the aggregation updates the same summary run
    assert log_summary_to_mlflow(out, tracking_uri=uri, grid_id="paper-0123456789") == run_id
    assert client.get_run(run_id).data.tags["intermix.summary_revision"] == "1"
    with pytest.raises(FileNotFoundError, match="write_reports"):
        log_summary_to_mlflow(tmp_path / "empty", tracking_uri=uri, grid_id="x")


def test_best_epoch_column_beside_the_last_epoch(tmp_path: Path) -> None:
    """Table 1 carries the authors' best-epoch error (optimistic) beside the last-epoch error, mean ± SE by hand."""
    results = [fr("intermix", f, last, best_val_error=best, best_epoch=10 * f)
               for f, (last, best) in enumerate([(12.0, 10.0), (14.0, 11.0), (16.0, 15.0)], start=1)]
    s = aggregate(results, {"esc10": [1, 2, 3]})
    c = s.cell("esc10", "envnet_v2", "intermix")
    assert c.best_values == {1: 10.0, 2: 11.0, 3: 15.0} and c.best_mean == pytest.approx(12.0)
    assert c.best_se == pytest.approx(math.sqrt(((10 - 12) ** 2 + (11 - 12) ** 2 + (15 - 12) ** 2) / 2 / 3))
    files = write_reports(s, tmp_path)
    row = next(csv.DictReader(files["table1.csv"].open(newline="")))
    assert float(row["best_mean"]) == pytest.approx(12.0) and row["best_per_fold"] == "1:10.0 2:11.0 3:15.0"
    md = files["table1.md"].read_text()
    assert "best† (the evaluated epochs; optimistic)" in md and "| 14.0 ± 1.15 | 12.0 ± 1.53 | 8.2 ± 0.4 |" in md
    assert "selects the epoch on the test fold" in md


@pytest.mark.parametrize(("everies", "label"), [
    ([1, 1, 1], "best† (every epoch, the authors' protocol; optimistic)"),
    ([10, 10, 10], "best† (every 10 epochs and the last; optimistic)"),
    ([1, 10, 10], "best† (every 1 or 10 epochs and the last (per fold); optimistic)"),
])
def test_best_epoch_column_says_the_cadence_it_was_evaluated_at(tmp_path: Path, everies, label) -> None:
    """Only a best over every epoch is the authors' protocol; a best of every 10th epoch is labelled as such."""
    results = [fr("intermix", f, 12.0, best_val_error=10.0, best_epoch=every, config={"optim": {"eval_every": every}})
               for f, every in enumerate(everies, start=1)]
    s = aggregate(results, {"esc10": [1, 2, 3]})
    assert s.cell("esc10", "envnet_v2", "intermix").best_every == sorted(set(everies))
    files = write_reports(s, tmp_path)
    assert files["table1.md"].read_text().splitlines()[2].count(label) == 1
    row = next(csv.DictReader(files["table1.csv"].open(newline="")))
    assert row["best_every"] == " ".join(map(str, sorted(set(everies))))
    assert "authors' protocol" not in label or everies == [1, 1, 1]


def test_each_row_says_which_column_to_hold_against_the_paper(tmp_path: Path) -> None:
    """Standard and BC rows are BC learning's (no best epoch kept): the last-epoch column; InterMix and the
    ablation rows the authors' main.py (best of all epochs): best†; Speechmix its own code's main.py: best† too."""
    strategies = ("standard", "bc", "speechmix", "intermix", "intermix_official")
    s = aggregate(grid({st: [10.0, 11.0, 12.0] for st in strategies}, setup="envnet_v2_aug")
                  + grid({st: [9.0, 10.0, 11.0] for st in ("intermix_vanilla", "intermix_hidden")}, setup="envnet_v2_aug"),
                  {"esc10": [1, 2, 3]})
    assert {c.strategy: c.published_is for c in s.cells} == {
        "standard": "last", "bc": "last", "speechmix": "best", "intermix": "best", "intermix_official": None,
        "intermix_vanilla": "best", "intermix_hidden": "best"}
    files = write_reports(s, tmp_path)
    t1, t2 = files["table1.md"].read_text(), files["table2.md"].read_text()
    assert re.search(r"- Standard, BC Learning: hold the paper's number against the last-epoch column: BC learning's", t1)
    assert re.search(r"- InterMix: hold the paper's number against the best† column .*: the authors' InterMix main.py", t1)
    assert re.search(r"- Speechmix: hold the paper's number against the best† column .*midas-research/speechmix", t1)
    assert "InterMix (authors' code): hold" not in t1  # no published number, no note
    assert re.search(r"- Vanilla InterMix, \+Hidden Mixup, InterMix: hold the paper's number against the best† column", t2)
    assert "Standard" not in t2
    rows = {r["strategy"]: r["published_is"] for r in csv.DictReader(files["table1.csv"].open(newline=""))}
    assert rows == {"standard": "last", "bc": "last", "speechmix": "best", "intermix": "best", "intermix_official": ""}


def test_difference_is_taken_from_the_column_each_rows_protocol_names(tmp_path: Path) -> None:
    """Δ = best† − paper for rows published as the best epoch (InterMix, Speechmix, Table 2), last − paper otherwise."""
    last, best = [10.0, 11.0, 12.0], [7.0, 8.0, 9.0]
    results = [fr(st, f, e, setup="envnet_v2_aug", best_val_error=b, best_epoch=5, config={"optim": {"eval_every": 1}})
               for st in ("standard", "bc", "speechmix", "intermix", "intermix_vanilla", "intermix_detached")
               for f, e, b in zip((1, 2, 3), last, best, strict=True)]
    s = aggregate(results, {"esc10": [1, 2, 3]})
    got = {c.strategy: (c.diff_of, c.diff) for c in s.cells}
    assert got["standard"] == ("last", pytest.approx(11.0 - 10.9))
    assert got["bc"] == ("last", pytest.approx(11.0 - 8.6))
    assert got["speechmix"] == ("best", pytest.approx(8.0 - 7.1))
    assert got["intermix"] == ("best", pytest.approx(8.0 - 7.2))
    assert got["intermix_vanilla"] == ("best", pytest.approx(8.0 - 7.9))
    assert got["intermix_detached"] == ("best", pytest.approx(8.0 - 7.2))  # another reading of InterMix's row
    files = write_reports(s, tmp_path)
    rows = {r["strategy"]: r for r in csv.DictReader(files["table1.csv"].open(newline=""))}
    assert float(rows["speechmix"]["diff"]) == pytest.approx(0.9) and rows["speechmix"]["diff_of"] == "best"
    assert float(rows["bc"]["diff"]) == pytest.approx(2.4) and rows["bc"]["diff_of"] == "last"
    t1 = files["table1.md"].read_text()
    assert "from the column the row's published protocol names" in t1
    row = next(line for line in t1.splitlines() if line.startswith("|  | Speechmix |"))
    assert row.rstrip(" |").endswith("+0.9")


def test_sensitivity_cells_sit_in_table_2_beside_the_row_they_read_and_are_compared_with_it(tmp_path: Path) -> None:
    """Each one-knob cell: in Table 2 after the preset it changes, the paper's number of that row beside it, and a
    paired comparison against that preset."""
    strategies = ("intermix_vanilla", "intermix_vanilla_signed", "intermix_hidden", "intermix_hidden_linear", "intermix",
                  "intermix_detached")
    s = aggregate(grid({st: [9.0 + i, 10.0 + i, 11.5 + i] for i, st in enumerate(strategies)}, setup="envnet_v2_aug"),
                  {"esc10": [1, 2, 3]})
    assert s.cell("esc10", "envnet_v2_aug", "intermix_hidden_linear").published == 7.7  # Table 2's "+Hidden Mixup"
    assert s.cell("esc10", "envnet_v2_aug", "intermix_vanilla_signed").published == 7.9
    pairs = {(c.strategy, c.baseline) for c in s.comparisons}
    assert {("intermix_detached", "intermix"), ("intermix_vanilla_signed", "intermix_vanilla"),
            ("intermix_hidden_linear", "intermix_hidden")} <= pairs
    files = write_reports(s, tmp_path)
    assert [r["strategy"] for r in csv.DictReader(files["table2.csv"].open(newline=""))] == list(strategies)
    t1 = {r["strategy"] for r in csv.DictReader(files["table1.csv"].open(newline=""))}
    assert t1 == {"intermix", "intermix_detached"}  # the input-space and hidden-space readings stay in Table 2


def test_rows_of_models_trained_on_this_projects_settings_are_labelled(tmp_path: Path) -> None:
    """Standard/BC rows of M18, SoundNet5, PiczakCNN come from BC learning's own experiments: the report says so."""
    results = grid({"standard": [30.0, 31.0], "bc": [25.0, 26.0], "intermix": [24.0, 25.0]}, dataset="esc50",
                   setup="piczak_cnn") + grid({"standard": [30.0, 31.0]}, dataset="esc50", setup="envnet")
    t1 = write_reports(aggregate(results, {"esc50": [1, 2]}), tmp_path)["table1.md"].read_text()
    note = next(line for line in t1.splitlines() if line.startswith("- Standard, BC Learning rows of PiczakCNN:"))
    assert "this project's settings" in note and "LR 0.002" in note and "Logmel-CNN + BN" in note
    only_envnet = write_reports(aggregate(grid({"standard": [30.0, 31.0]}, dataset="esc50", setup="envnet"),
                                          {"esc50": [1, 2]}), tmp_path / "e")["table1.md"].read_text()
    assert "this project's settings" not in only_envnet


def test_fgsm_table_has_clip_and_single_crop_errors_with_eps_zero_first(tmp_path: Path) -> None:
    results = [fr("standard", f, 10.0 + f, fgsm={"0.0": 10.0 + f, "0.01": 50.0 + f},
                  fgsm_crop={"0.0": 20.0 + f, "0.01": 60.0 + f}) for f in (1, 2, 3)]
    s = aggregate(results, {"esc10": [1, 2, 3]})
    assert s.cell("esc10", "envnet_v2", "standard", 0.01, "crop").mean == pytest.approx(62.0)
    assert s.cell("esc10", "envnet_v2", "standard", 0.01, "clip").mean == pytest.approx(52.0)
    assert s.cell("esc10", "envnet_v2", "standard", 0.0, "crop").mean == pytest.approx(22.0)
    assert s.cell("esc10", "envnet_v2", "standard", 0.01, "crop").published == 64.5
    files = write_reports(s, tmp_path)
    header = files["table3.md"].read_text().splitlines()[2]
    assert header.index("ε=0 clip") < header.index("ε=0 crop") < header.index("ε=0.01 clip") < header.index("ε=0.01 crop")
    kinds = {(r["fgsm_kind"], float(r["epsilon"])) for r in csv.DictReader(files["table3.csv"].open(newline=""))}
    assert kinds == {("clip", 0.0), ("clip", 0.01), ("crop", 0.0), ("crop", 0.01)}


def test_terminal_table_of_a_short_schedule_says_so_first_and_drops_the_delta_column() -> None:
    """A demo-like grid (3 epochs) leads with what it cannot show and has no Δ; the paper's schedule keeps Δ."""
    from intermix_core.config import parse_config

    def results(optim: dict) -> list[FoldResult]:
        out = []
        for strategy, errs in (("standard", STD), ("bc", MIX)):
            cfg = parse_config({"dataset": "esc10", "model": "envnet_v2", "strategy": strategy, "optim": optim})
            out += grid({strategy: errs}, config=cfg.resolved().model_dump(mode="json"))
        return out

    short = aggregate(results({"epochs": 3}))
    assert not short.paper_schedule
    text = format_terminal(short)
    assert text.splitlines()[0].startswith("Not the paper's schedule") and "Δ" not in text
    assert "paper" in text.splitlines()[3]  # the paper's column stays
    full = aggregate(results({}))
    assert full.paper_schedule and "Δ" in format_terminal(full)


# ------------------------------------------------------------------ multiple comparisons, report.html, figures


def test_holm_adjustment_by_hand_and_in_the_calls() -> None:
    from intermix_core.results.statistics import holm_adjust

    # sorted 0.01, 0.02, 0.04 (m = 3): 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, then max(0.04, 1 x 0.04) = 0.04
    assert holm_adjust([0.04, None, 0.01, 0.02]) == pytest.approx([0.04, None, 0.03, 0.04], nan_ok=False)
    assert holm_adjust([0.5, 0.6]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1, monotone
    # three strategies against Standard (and BC): a family of 3 clean-error comparisons
    s = aggregate(grid({"standard": STD, "bc": MIX, "intermix": [14.0, 16.0, 18.5, 16.0, 18.0]}))
    clean = [c for c in s.comparisons if c.metric == "test_error"]
    assert len(clean) == 3 and all(c.family == 3 for c in clean)
    raw = [c.p_t for c in clean]
    assert [c.p_t_holm for c in clean] == pytest.approx(holm_adjust(raw))
    for c in clean:
        assert c.significant == (c.p_t_holm < 0.05)
        assert f"n={len(c.folds)} folds" in c.conclusion


def test_fgsm_at_eps_zero_is_not_compared_and_comparisons_md_lists_only_the_calls(tmp_path: Path) -> None:
    results = full_grid()
    s = aggregate(results)
    assert s.comparisons and not any(c.metric.endswith("@0") for c in s.comparisons)
    assert any(c.metric == "fgsm@0.01" for c in s.comparisons)
    md = write_reports(s, tmp_path, results)["comparisons.md"].read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "Dataset" not in line]
    bullets = [line for line in md.splitlines() if line.startswith("- ")]
    assert len(rows) == len(s.comparisons)
    called = [c for c in s.comparisons if c.significant]
    assert len(bullets) == 2 + len(called)  # the statement, the legend, then one line per called difference
    assert "Holm-adjusted" in bullets[0] and "n = 4 to 5 paired folds" in bullets[0]


def test_off_schedule_tables_carry_the_note_and_no_delta(tmp_path: Path) -> None:
    from intermix_core.config import parse_config

    cfg = parse_config({"dataset": "esc10", "model": "envnet_v2", "strategy": "bc", "optim": {"epochs": 3}})
    results = grid({"standard": STD, "bc": MIX}, config=cfg.resolved().model_dump(mode="json"))
    files = write_reports(aggregate(results), tmp_path, results)
    for name in ("table1.md", "table1.tex", "report.html"):
        text = files[name].read_text()
        assert "Not the paper" in text, name
        assert "measured − paper" not in text and "<th>Δ</th>" not in text, name
    assert "| Δ |" not in files["table1.md"].read_text() and r"$\Delta$" not in files["table1.tex"].read_text()
    assert {r["diff"] for r in csv.DictReader(files["table1.csv"].open(newline=""))} == {""}


def test_terminal_names_only_the_tables_there_are() -> None:
    no_ablation = [r for r in full_grid() if r.strategy not in ("intermix_vanilla", "intermix_hidden")]
    text = format_terminal(aggregate(no_ablation))
    assert "Table 2" not in text and "Tables 2-3" not in text and "Table 3 (FGSM)" in text and "report.html" in text
    assert "Table 2 (ablation)" in format_terminal(aggregate(full_grid()))


def test_report_html_is_one_self_contained_file(tmp_path: Path) -> None:
    results = full_grid() + [fr("intermix", 3, None, setup="envnet_v2_aug")]
    s = aggregate([r for r in results if not (r.setup == "envnet_v2_aug" and r.strategy == "intermix" and r.fold == 3
                                              and r.status == "ok")])
    files = write_reports(s, tmp_path, results, title="paper-0123456789",
                          rerun_command=lambda m: f"intermix rerun paper-0123456789 --fold {m.fold} --strategy {m.strategy}")
    page = files["report.html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "intermix report: paper-0123456789" in page
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)  # nothing outside the file
    assert page.count("<img ") == 4 and page.count('src="data:image/png;base64,') == 4
    for title in ("Table 1", "Table 2", "Table 3", "Comparisons", "Learning curves per fold"):
        assert title in page
    assert "intermix rerun paper-0123456789 --fold 5 --strategy bc" in page  # the missing fold
    assert "intermix rerun paper-0123456789 --fold 3 --strategy intermix" in page  # the failed one
    assert "failed: CUDA out of memory" in page and "Holm-adjusted" in page


def test_legends_sit_outside_the_data_and_confusion_names_every_class(tmp_path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from intermix_core.results.plots import confusion_figure, fgsm_figure, learning_curves_figure

    results = full_grid()
    for fig in (fgsm_figure(aggregate(results)), learning_curves_figure(results)):
        FigureCanvasAgg(fig).draw()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is not None:
                box, frame = legend.get_window_extent(), ax.get_window_extent()
                assert box.x0 >= frame.x1 - 1, "the legend overlaps the plotting area"
    names = ["dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing", "clock_tick",
             "helicopter", "chainsaw"]
    fig = confusion_figure([[4 if i == j else 0 for j in range(10)] for i in range(10)], names, "esc10/m18/bc/fold1")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{i} {n}" for i, n in enumerate(names)]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{i} {n}" for i, n in enumerate(names)]
    assert ax.get_title().startswith("esc10/m18/bc/fold1") and "40/40 correct" in ax.get_title()


def test_each_comparison_carries_its_effect_size_with_a_confidence_interval() -> None:
    s = aggregate(grid({"standard": STD, "intermix": MIX}))
    (comp,) = [c for c in s.comparisons if c.metric == "test_error"]
    ci = stats.ttest_rel(STD, MIX).confidence_interval(0.95)  # scipy's own interval of the mean paired difference
    assert (comp.ci_low, comp.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert comp.dz == pytest.approx(4.6 / math.sqrt(0.8))  # mean / SD of d = [5, 4, 6, 4, 4]
    assert f"difference +4.6 [{ci.low:+.1f}, {ci.high:+.1f}], d_z {4.6 / math.sqrt(0.8):.2f} points (95 % CI)" \
        in comp.conclusion


@pytest.mark.parametrize("base, other, sign_p", [([50.0, 45.0], [45.0, 40.0], 0.5), ([50.0, 45.0], [50.0, 45.0], None)])
def test_a_difference_identical_on_every_fold_is_explained(base, other, sign_p, tmp_path: Path) -> None:
    results = grid({"standard": base, "bc": other})
    s = aggregate(results)
    (comp,) = s.comparisons
    assert comp.same_every_fold and comp.p_t is None and not comp.significant
    assert comp.ci_low == comp.ci_high == comp.diff and comp.dz is None
    assert f"the difference is the same on all 2 folds ({comp.diff:+.2f} points on each)" in comp.conclusion
    assert "a paired t-test has no p-value (its standard error is 0)" in comp.conclusion
    if sign_p:
        assert f"sign test of 2 folds all one way gives two-sided p = {sign_p}" in comp.conclusion
    html = write_reports(s, tmp_path, results)["report.html"].read_text()
    assert "same difference on every fold: no t-test" in html and "untestable" not in html


def test_report_html_carries_the_provenance_of_every_fold(tmp_path: Path) -> None:
    prov = dict(git_commit="0123456789abcdef", machine="AMD EPYC 7B13, 2 cores, Linux x86_64",
                device="cpu: AMD EPYC 7B13, 2 threads", torch="2.11.0", train_seconds=125.0,
                config={"dataset": "esc10", "model": "envnet_v2", "optim": {"epochs": 6}})
    results = [fr(s, f, e, history=_history(e), **prov) for s, errs in (("standard", STD), ("intermix", MIX))
               for f, e in enumerate(errs, start=1)]
    results[0] = results[0].model_copy(update={"machine": None, "train_seconds": 4000.0})  # an older result
    s = aggregate(results)
    assert len(s.provenance) == 10 and set(s.configs) == {"esc10/envnet_v2/standard", "esc10/envnet_v2/intermix"}
    page = write_reports(s, tmp_path, results, title="demo-0123456789")["report.html"].read_text()
    section = page[page.index('<section id="provenance">'):page.index('<section id="table1">')]
    assert "Grid: demo-0123456789." in section and "Code: commit 0123456789abcdef." in section
    assert "Machine: not recorded (1 fold), AMD EPYC 7B13, 2 cores, Linux x86_64 (9 folds)." in section
    assert "Device: cpu: AMD EPYC 7B13, 2 threads; torch 2.11.0." in section
    assert "<td>esc10/envnet_v2/standard/fold1</td><td>6</td><td>67 min</td><td>0123456789</td>" in section
    assert "<td>esc10/envnet_v2/intermix/fold5</td><td>6</td><td>2 min</td>" in section
    assert "<summary>esc10/envnet_v2/intermix</summary><pre>dataset: esc10" in section
    comparisons = page[page.index('<section id="comparisons">'):]
    assert "Δ [95% CI], d_z" in comparisons and "t-test p" in comparisons


def test_a_trained_fold_records_where_it_comes_from() -> None:
    """FoldResult's provenance fields, as the training loop fills them (intermix_core/method/train.py)."""
    from intermix_core.common.provenance import git_commit, machine

    assert machine().count(",") == 2 and "cores" in machine()
    commit = git_commit()
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
    r = fr("bc", 1, 10.0, git_commit=commit, machine=machine(), device="cpu: x, 1 threads", torch="2.11.0")
    assert FoldResult.model_validate_json(r.model_dump_json()) == r
