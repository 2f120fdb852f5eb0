"""report.html in a real browser: headless Chromium, no network, every table and figure of the page rendered."""

from __future__ import annotations

from pathlib import Path

import pytest

from intermix_core.records import EpochRecord
from intermix_core.results.statistics import aggregate
from intermix_core.results.tables import write_reports
from intermix_core.run.status import rerun_command

from fake_results import MIX, STD, fr

pytestmark = pytest.mark.slow  # a browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-artifacts" / "report_html.png"
CLASSES = ["dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby", "sneezing", "clock_tick", "helicopter",
           "chainsaw"]


def _results() -> list:
    """Three strategies x five ESC-10 folds with histories and FGSM; Table 2 rows; one fold failed, one missing."""
    out = []
    for strategy, base in (("standard", STD), ("bc", MIX), ("intermix_vanilla", MIX), ("intermix_hidden", MIX),
                           ("intermix", [x - 1.0 for x in MIX])):
        for fold, err in enumerate(base, start=1):
            history = [EpochRecord(epoch=e, lr=0.1, train_loss=2.0 / e, train_error=60.0 / e,
                                   val_error=err + 12.0 / e if e % 5 == 0 else None) for e in range(1, 21)]
            fgsm = {"0.0": err, "0.01": err + 30, "0.001": err + 8, "0.0001": err + 1}
            confusion = [[3 if i == j else (1 if j == (i + fold) % 10 else 0) for j in range(10)] for i in range(10)]
            out.append(fr(strategy, fold, err, setup="envnet_v2_aug", history=history, fgsm=fgsm,
                          fgsm_crop={k: v + 10 for k, v in fgsm.items()}, confusion=confusion, classes=CLASSES))
    out = [r for r in out if (r.strategy, r.fold) != ("bc", 5)]  # missing
    return [r for r in out if (r.strategy, r.fold) != ("intermix", 2)] + [fr("intermix", 2, None, setup="envnet_v2_aug")]


def test_report_html_renders_offline_in_chromium(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: run .ci/install_browser.sh (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no `playwright install`)")
    results = _results()
    summary = aggregate(results)
    gid, store = "paper-0123456789", str(tmp_path / "work" / "store")
    files = write_reports(summary, tmp_path / "report", results, title=gid,
                          rerun_command=lambda m: rerun_command(gid, m.dataset, m.setup, m.strategy, m.fold, store))
    page_file = files["report.html"]
    assert sorted(p.name for p in page_file.parent.iterdir() if p.suffix == ".png") == [
        "confusion.png", "fgsm.png", "fold_curves.png", "fold_spread.png", "learning_curves.png"]

    outside: list[str] = []
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1400, "height": 1200})

            def block(route) -> None:  # noqa: ANN001 - only the file itself and its data: URIs may load
                if not route.request.url.startswith(("file://", "data:")):
                    outside.append(route.request.url)
                    route.abort()
                else:
                    route.continue_()

            context.route("**/*", block)
            page = context.new_page()
            page.goto(page_file.resolve().as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight, i.src.slice(0, 22)])")
            tables = page.eval_on_selector_all("section[id^=table] table", "ts => ts.map(t => t.rows.length)")
            headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.innerText)")
            commands = page.eval_on_selector_all("#absent pre", "ps => ps.map(p => p.innerText)")
            page.click("text=All comparisons")  # the collapsed full list opens
            all_rows = page.eval_on_selector_all("#all-comparisons tbody tr", "rs => rs.length")
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()

    assert outside == []
    assert [alt for alt, *_ in images] == ["Per-fold test errors", "Learning curves", "Learning curves per fold", "FGSM",
                                           "Confusion matrices"]
    for alt, complete, width, height, src in images:
        assert complete and width > 300 and height > 200, alt
        assert src == "data:image/png;base64,"
    assert tables == [1 + 3, 1 + 3, 1 + 5]  # header + rows: Table 1 (3 strategies), Table 2 (3 variants), Table 3 (5)
    assert [h for h in headings if h.startswith("Table")] == [
        "Table 1: error rates (%)", "Table 2: ablation, error rates (%)", "Table 3: FGSM error rates (%)"]
    assert "Folds without a result" in headings and "Learning curves per fold" in headings
    assert commands == [
        f"intermix rerun {gid} --dataset esc10 --setup envnet_v2_aug --strategy bc --fold 5 --workdir {tmp_path}/work",
        f"intermix rerun {gid} --dataset esc10 --setup envnet_v2_aug --strategy intermix --fold 2 --workdir {tmp_path}/work",
    ]
    assert all_rows == len(summary.comparisons)
    assert SCREENSHOT.stat().st_size > 50_000
