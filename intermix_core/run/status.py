"""The state of a grid, fold by fold: done, running, failed, stopped, superseded or not started; and how to rerun a fold.

Read from what a grid leaves behind: each fold's `result.json` and checkpoint in the store, and its
MLflow fold runs (status, tags, the newest epoch metric as the heartbeat). `fold_state` is the one
place that turns these into a state.
"""

from __future__ import annotations

import shlex
from pathlib import PurePath

from intermix_core.records import fold_label


def rerun_command(grid_id: str, dataset: str, setup: str, strategy: str, fold: int, store_root: str | None = None) -> str:
    """The `intermix rerun` command line that trains one fold of a grid again (resuming from its stored checkpoint).

    A local store `<workdir>/store` becomes `--workdir <workdir>` (its MLflow is there too); any other
    store is given as `--store`. On Kubeflow, add `--host` (and `--cluster-options`).
    """
    words = ["intermix", "rerun", grid_id, "--dataset", dataset, "--setup", setup, "--strategy", strategy,
             "--fold", str(fold)]
    if store_root:
        if "://" not in store_root and PurePath(store_root).name == "store":
            words += ["--workdir", str(PurePath(store_root).parent)]
        else:
            words += ["--store", store_root]
    return " ".join(shlex.quote(w) for w in words)


__all__ = ["fold_label", "rerun_command"]
