"""The MLflow UI compares one model's strategies: headless Chromium renders the parents' statistics."""

from __future__ import annotations

import json
import statistics
import urllib.parse
from pathlib import Path

import pytest

from intermix_core.tracking.tracker import Tracker

from fake_results import TEST_ERROR, run_fold
from servers import MlflowServer

pytestmark = pytest.mark.slow  # a browser against an MLflow server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "test-artifacts" / "mlflow_ui.png"
STRATEGIES = ("bc", "intermix")


def metric_row(page, name: str) -> list[float]:  # noqa: ANN001
    """Values shown in the compare page's metrics grid on the row of `name`, left to right (one per run)."""
    label = page.locator(f'a[title="Plot chart"]:text-is("{name}")')
    box = label.bounding_box()
    assert box is not None, f"metric {name} is not on the page"
    y = box["y"] + box["height"] / 2
    cells = []
    for span in page.locator("div.ReactVirtualized__Grid span").all():
        b = span.bounding_box()
        if b is not None and abs(b["y"] + b["height"] / 2 - y) < 8:
            cells.append((b["x"], float(span.inner_text())))
    return [v for _, v in sorted(cells)]


def test_compare_strategies_in_mlflow_ui(mlflow_tracking: MlflowServer) -> None:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: run .ci/install_browser.sh (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no `playwright install`)")

    tracker = Tracker(mlflow_tracking.url, experiment="esc10-envnet_v2-ui")
    for (strategy, fold), err in TEST_ERROR.items():
        # one epsilon keeps the parents' metrics within the compare page's 300 px metrics box (no scrolling)
        run_fold(tracker, strategy, fold, "grid-ui", err, fgsm={"0.01": err + 50.0})
    parents = [tracker.find_parent("grid-ui", "esc10", "envnet_v2", s) for s in STRATEGIES]
    means = [statistics.fmean(TEST_ERROR[(s, f)] for f in (1, 2, 3)) for s in STRATEGIES]

    query = urllib.parse.urlencode({
        "runs": json.dumps([p.info.run_id for p in parents]),
        "experiments": json.dumps([tracker.experiment_id]),
        "workflowType": "machine_learning",
    })
    url = f"{mlflow_tracking.url}/#/compare-runs?{query}"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(url)
            # the UI polls forever: wait for content, never for network idle
            page.wait_for_selector('a[title="Plot chart"]:text-is("test_error_mean")', timeout=60_000)
            page.get_by_role("button", name="Close").click(timeout=5_000)  # the assistant side panel
            page.get_by_text("Visualizations", exact=True).click()  # collapse the plots: the tables matter here
            page.get_by_role("switch", name="Parameters - Show diff only").click()
            page.wait_for_timeout(500)
            page.screenshot(path=str(SCREENSHOT))
            body = page.inner_text("body")
            shown_means = metric_row(page, "test_error_mean")
            shown_folds = metric_row(page, "n_folds")
        finally:
            browser.close()

    for strategy in STRATEGIES:
        assert f"esc10/envnet_v2/{strategy}" in body
    assert shown_means == pytest.approx(means, abs=0.01)  # the UI rounds to 3 decimals below 10
    assert shown_folds == [3.0, 3.0]
    assert SCREENSHOT.stat().st_size > 10_000
