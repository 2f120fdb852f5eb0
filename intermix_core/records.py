"""What one fold produces: the record that training, attack, tracking and aggregation share."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# the two files a trained fold leaves in its folder (and under its store prefix)
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"


def fold_label(dataset: str, setup: str, strategy: str, fold: int) -> str:
    """'esc10/envnet_v2/intermix/fold3': how one fold is named in logs, task names, MLflow run names and store keys."""
    return f"{dataset}/{setup}/{strategy}/fold{fold}"


class EpochRecord(BaseModel):
    """One epoch of training: loss and error on the (mixed) training batches, and the test-fold error if evaluated."""

    model_config = ConfigDict(extra="forbid")
    epoch: int
    lr: float
    train_loss: float
    train_error: float  # % of training samples whose argmax differs from the argmax of the (mixed) label
    val_error: float | None = None  # % 10-crop error on the held-out fold (the reference code's practice)


class FoldResult(BaseModel):
    """One dataset x setup x strategy x fold: final 10-crop test error and FGSM errors, in percent."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    setup: str  # model configuration label, e.g. "envnet_v2" or "envnet_v2_aug"
    model: str
    strategy: str
    fold: int
    # the grid the fold was trained for (its store prefix and MLflow runs); None in results from before it was kept
    grid_id: str | None = None
    seed: int = 0
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None  # failure message when status == "failed"
    test_error: float | None = None  # 10-crop error after the last epoch: the project's number
    # lowest 10-crop error over the evaluated epochs (every optim.eval_every): the authors' main.py reports
    # this "best" number; it selects on the test fold, so it is optimistic
    best_val_error: float | None = None
    best_epoch: int | None = None
    fgsm: dict[str, float] = Field(default_factory=dict)  # str(epsilon) -> 10-crop clip error %, "0.0" (the clean error) included
    fgsm_crop: dict[str, float] = Field(default_factory=dict)  # str(epsilon) -> single-crop error %
    history: list[EpochRecord] = Field(default_factory=list)
    confusion: list[list[int]] | None = None  # rows: true class, cols: predicted
    classes: list[str | None] | None = None  # class name of each label, from the prepared data's manifest
    train_seconds: float | None = None
    samples_per_second: float | None = None
    config: dict[str, Any] = Field(default_factory=dict)  # the resolved ExperimentConfig
    # provenance (None in results written before it was recorded): the code's commit, the machine (no host name),
    # the device it trained on, and torch's version
    git_commit: str | None = None
    machine: str | None = None
    device: str | None = None
    torch: str | None = None
    # the prepared data the fold was trained on (data.Manifest.data_fingerprint); None in older results
    data_fingerprint: str | None = None
    # SHA-256 of the final checkpoint the result came from, which the store holds beside it: a reader refuses a
    # result whose checkpoint there is another (an older result put back, intermix_core.store.grid_store)
    checkpoint_sha256: str | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        """(dataset, setup, strategy, fold): the cell this result fills."""
        return (self.dataset, self.setup, self.strategy, self.fold)

    @property
    def label(self) -> str:
        """'esc10/envnet_v2/intermix/fold3' (records.fold_label)."""
        return fold_label(self.dataset, self.setup, self.strategy, self.fold)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON through a private temporary file and rename, so readers never see half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # unique per writer
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def save_result(result: FoldResult, path: str | Path) -> None:
    """Save a FoldResult as JSON (atomically)."""
    write_json_atomic(path, result.model_dump(mode="json"))


def load_result(path: str | Path) -> FoldResult:
    """Load a FoldResult written by `save_result`, naming the file if it is not one."""
    p = Path(path)
    try:
        return FoldResult.model_validate_json(p.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{p}: not a fold result ({err})") from None
