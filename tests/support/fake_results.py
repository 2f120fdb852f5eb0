"""Hand-made fold results and configurations for tests of statistics, reports and tracking."""

from __future__ import annotations

from intermix_core.config import ExperimentConfig, OptimConfig
from intermix_core.records import EpochRecord, FoldResult
from intermix_core.tracking.tracker import Tracker


def fr(
    strategy: str, fold: int, err: float | None, dataset: str = "esc10", setup: str = "envnet_v2", **kw: object
) -> FoldResult:
    """One synthetic fold result (status failed when err is None)."""
    status = "ok" if err is not None else "failed"
    return FoldResult(dataset=dataset, setup=setup, model="envnet_v2", strategy=strategy, fold=fold, test_error=err,
                      status=status, error=None if err is not None else "CUDA out of memory", **kw)


def grid(
    errors: dict[str, list[float]], dataset: str = "esc10", setup: str = "envnet_v2", **kw: object
) -> list[FoldResult]:
    """Fold results for each strategy, folds numbered from 1."""
    return [fr(s, i, e, dataset, setup, **kw) for s, errs in errors.items() for i, e in enumerate(errs, start=1)]


STD = [20.0, 22.0, 25.0, 21.0, 24.0]
MIX = [15.0, 18.0, 19.0, 17.0, 20.0]  # d = STD - MIX = [5, 4, 6, 4, 4]


TEST_ERROR = {("bc", 1): 12.5, ("bc", 2): 15.0, ("bc", 3): 10.0,
              ("intermix", 1): 9.5, ("intermix", 2): 11.25, ("intermix", 3): 8.0}


def cfg_for(strategy: str) -> ExperimentConfig:
    """A tiny esc10 / EnvNet-v2 configuration with 3 epochs."""
    return ExperimentConfig(dataset="esc10", model="envnet_v2", strategy=strategy, optim=OptimConfig(epochs=3))


def fgsm_for(test_error: float) -> dict[str, float]:
    """FGSM errors that grow with epsilon."""
    return {"0.01": test_error + 50.0, "0.001": test_error + 20.0, "1e-05": test_error + 1.0}


def fold_result(
    cfg: ExperimentConfig, fold: int, test_error: float | None, epochs: int = 3, **kw: object,
) -> FoldResult:
    """A FoldResult with a decreasing loss curve and a 10-class confusion matrix of 40 clips."""
    history = [EpochRecord(epoch=e, lr=0.01, train_loss=2.3 / e, train_error=90.0 / e,
                           val_error=test_error if e == epochs else None) for e in range(1, epochs + 1)]
    confusion = [[4 if i == j else 0 for j in range(10)] for i in range(10)]
    confusion[0][0], confusion[0][1] = 3, 1
    res = dict(dataset=cfg.dataset, setup=cfg.setup_name, model=cfg.model, strategy=cfg.strategy.name, fold=fold,
               test_error=test_error, history=history, confusion=confusion, train_seconds=12.5,
               samples_per_second=9.6, config=cfg.resolved().model_dump(mode="json"))
    return FoldResult(**{**res, **kw})


def run_fold(tracker: Tracker, strategy: str, fold: int, grid: str, test_error: float | None, **kw: object) -> str:
    """start_fold, one log_epoch per epoch, finish_fold: what the training loop does."""
    cfg = cfg_for(strategy)
    run_id = tracker.start_fold(cfg, fold, grid, tags={"intermix.demo": "tests"})
    result = fold_result(cfg, fold, test_error, **kw)
    for record in result.history:
        tracker.log_epoch(run_id, record)
    tracker.finish_fold(run_id, result)
    return run_id


def search(tracker: Tracker, filter_string: str) -> list:
    """All active runs of the tracker's experiment matching a filter."""
    return tracker.client.search_runs([tracker.experiment_id], filter_string)
