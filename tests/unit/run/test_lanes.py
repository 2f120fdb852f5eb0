"""A run's lane gate and the marker its end writes (pipelines/gpu_budget.py lanes), on a real local store."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from intermix_core.config.grid import load_grid
from intermix_core.run.aggregate import NoResults
from intermix_core.run.steps import lane_done_step, lane_wait_step
from intermix_core.store.layout import lane_marker_key
from intermix_core.store.storage import open_storage


def test_the_gate_opens_when_the_run_before_it_ends(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    key = lane_marker_key("g", "esc10", "m18", "tok")
    root = str(tmp_path / "store")
    threading.Timer(0.5, lambda: lane_done_step(root, key)).start()
    t0 = time.monotonic()
    assert lane_wait_step(root, key, max_wait_s=30, poll_s=0.1)
    assert 0.4 < time.monotonic() - t0 < 10
    assert "has ended" in capsys.readouterr().out
    assert lane_wait_step(root, "", max_wait_s=0)  # a lane's first run waits for nothing


def test_a_marker_that_never_comes_lets_the_run_start_after_its_wait_saying_so(tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture) -> None:
    t0 = time.monotonic()
    assert not lane_wait_step(str(tmp_path / "store"), lane_marker_key("g", "esc10", "m18", "x"), max_wait_s=0.3,
                              poll_s=0.1)
    assert time.monotonic() - t0 < 5
    assert "starting anyway, so more GPU tasks than max_gpus may run for a while" in capsys.readouterr().out


def test_a_run_whose_aggregation_fails_still_opens_the_next_gate(tmp_path: Path) -> None:
    """The aggregate component writes its run's lane marker however the aggregation ends (here: no result at all)."""
    from components.aggregate import aggregate

    root = str(tmp_path / "store")
    key = lane_marker_key("g", "esc10", "m18", "done-anyway")
    out = SimpleNamespace(path=str(tmp_path / "reports"), metadata={})
    with pytest.raises(NoResults):
        aggregate(load_grid("demo").model_dump_json(), root, "", out, SimpleNamespace(path=str(tmp_path / "t.md")),
                  lane_done=key)
    assert open_storage(root).get_sealed(key) is not None
