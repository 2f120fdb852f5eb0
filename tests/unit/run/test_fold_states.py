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
