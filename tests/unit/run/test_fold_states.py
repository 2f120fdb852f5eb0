"""How `intermix status` names a fold from what the store and MLflow hold (run.status.fold_state)."""

from __future__ import annotations

import time

from intermix_core.run.status import FoldView, RunView, fold_state
from intermix_core.tracking.tags import STALE_AFTER


def test_a_running_attempt_without_a_heartbeat_is_killed_and_one_stopped_by_a_signal_is_stopped():
    now = time.time()
    alive = RunView("r1", "RUNNING", superseded=False, started=now - 3600, heartbeat=now - 30)
    assert fold_state(FoldView(checkpoint=True, runs=[alive]), now) == ("running", None)
    gone = RunView("r1", "RUNNING", superseded=False, started=now - 7200, heartbeat=now - STALE_AFTER - 600)
    state, why = fold_state(FoldView(checkpoint=True, runs=[gone]), now)
    assert state == "killed" and why.startswith("its MLflow run has been RUNNING with no heartbeat for 25 min")
    signalled = RunView("r1", "KILLED", superseded=False, error="esc10/m18/bc/fold1: stopped by SIGTERM after epoch 3")
    assert fold_state(FoldView(checkpoint=True, runs=[signalled]), now) == (
        "stopped", "esc10/m18/bc/fold1: stopped by SIGTERM after epoch 3")
    failed = RunView("r1", "FAILED", superseded=False, error="TrainingDiverged: the training loss became nan")
    assert fold_state(FoldView(runs=[failed]), now) == ("failed", "TrainingDiverged: the training loss became nan")
    superseded = RunView("r0", "KILLED", superseded=True)
    assert fold_state(FoldView(runs=[superseded, alive]), now) == ("running", None)


def test_status_promises_only_what_is_there(tmp_path):
    """A killed fold without a stored checkpoint is not 'resumed from its stored checkpoint'; a FINISHED run whose
    result the store lacks is not 'not started' and gets a rerun line; a store that does not exist is said so."""
    from intermix_core.config.grid import parse_grid
    from intermix_core.run.status import FoldStatus, describe_fold, format_status, grid_status

    now = time.time()
    gone = RunView("r1", "RUNNING", superseded=False, started=now - 7200, heartbeat=now - STALE_AFTER - 600)
    assert fold_state(FoldView(checkpoint=False, runs=[gone]), now)[0] == "killed"
    killed = FoldStatus("esc10", "m18", "bc", 1, state="killed", epochs=40, error="no heartbeat", checkpoint=False)
    assert describe_fold(killed, now).endswith("no checkpoint reached the store: rerun trains it from its first epoch")
    killed.checkpoint = True
    assert describe_fold(killed, now).endswith("rerun resumes it from its stored checkpoint")
    finished = RunView("r2", "FINISHED", superseded=False)
    assert fold_state(FoldView(runs=[finished]), now) == (
        "failed", "its MLflow run is FINISHED, but the store holds no result for it (not stored, or removed)")

    grid = parse_grid({"datasets": ["esc10"], "setups": ["m18"], "strategies": ["bc"], "folds": [1]}, source="t")
    text = format_status(grid_status(grid, str(tmp_path / "nonexistent")))
    assert "not started" in text and f"note: the store {tmp_path / 'nonexistent'} does not exist" in text
    (tmp_path / "empty").mkdir()
    assert "note: the store holds nothing of grid" in format_status(grid_status(grid, str(tmp_path / "empty")))
