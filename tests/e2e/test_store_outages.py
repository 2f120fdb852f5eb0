"""The store and the tracker through an outage and through a second attempt at a running fold.

Real parts only: each fold trains in its own process (`intermix_core.steps.train_step`, what the KFP
train component runs) against SeaweedFS and an MLflow server.

- SeaweedFS stopped after a fold's first stored checkpoint and started again while the fold still
  runs: the fold ends with its final checkpoint and its result both in the store.
- A second attempt at a fold that is still training elsewhere (a KFP retry while the first pod is
  still dying; or two submissions at once): the later attempt takes the fold over, the earlier one
  stops at its next epoch with one line, and MLflow ends with one finished run whose epochs are
  logged exactly once and a parent with exact statistics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
from mlflow.tracking import MlflowClient

from intermix_core.data import demo_data_dir, prepare_dataset
from intermix_core.records import load_result
from intermix_core.store.storage import open_storage
from intermix_core.tracking.tracker import ATTEMPT, SUPERSEDED, Tracker

from servers import MlflowServer, S3Server, seaweedfs

pytestmark = pytest.mark.slow  # subprocess training against real servers

CHILD = (
    "import sys; from intermix_core.run.steps import train_step; "
    "train_step(sys.argv[1], sys.argv[2], 1, sys.argv[3], sys.argv[4], sys.argv[5] or None, sys.argv[6], "
    "sync_seconds=0.2)"
)
EPOCHS = 6
CONFIG = {
    "dataset": "esc10", "model": "soundnet5", "strategy": "standard", "seed": 3, "input_length": 60000,
    "num_crops": 2, "optim": {"epochs": EPOCHS, "batch_size": 16, "eval_every": 3, "checkpoint_every": 1},
}
CELL = "esc10/soundnet5/standard/fold1"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped demo clips prepared at SoundNet5's rate."""
    out = tmp_path_factory.mktemp("prepared") / "esc10"
    prepare_dataset(demo_data_dir(), "esc10", out, 22050, progress=False)
    return out


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS of this module's own, so stopping it disturbs no other test."""
    with seaweedfs(tmp_path_factory.mktemp("own-s3"), buckets=("outage",)) as server:
        yield server


def start(prepared: Path, out: Path, grid: str, store: str, s3: S3Server, tracking: str = "",
          log: Path | None = None) -> subprocess.Popen:
    """train_step of fold 1 in a child process; stderr to `log` (or a pipe)."""
    env = {**os.environ, **s3.env(), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", CHILD, json.dumps(CONFIG), str(prepared), str(out), grid, tracking, store]
    err = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - the child owns it
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300.0) -> None:  # noqa: ANN001
    """Poll `condition` while `proc` runs; fail naming `what` if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the fold ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.1)


def stored_epoch(store, key: str, dest: Path) -> int:  # noqa: ANN001
    """The epoch of a checkpoint in the store (loaded as the product loads it: tensors only)."""
    path = store.download_file(key, dest)
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def test_seaweedfs_stopped_and_restarted_mid_fold(own_s3: S3Server, prepared: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The store goes away after the first stored checkpoint and comes back: checkpoint and result both land."""
    for key, value in own_s3.env().items():
        monkeypatch.setenv(key, value)
    store = open_storage("s3://outage/grids")
    ckpt, result = f"g/{CELL}/checkpoint.pt", f"g/{CELL}/result.json"
    log = tmp_path / "child.err"
    child = start(prepared, tmp_path / "out", "g", "s3://outage/grids", own_s3, log=log)
    try:
        wait_for(lambda: store.exists(ckpt), child, "a stored checkpoint")
        own_s3.stop()
        assert child.poll() is None and not (tmp_path / "out" / "result.json").exists(), "the outage must be mid-fold"
        wait_for(lambda: "failed" in log.read_text(), child, "a failed upload", timeout=120)
        time.sleep(3.0)
        own_s3.start()
        assert child.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if child.poll() is None:
            child.kill()
        own_s3.start()
    err = log.read_text()
    assert "Traceback" not in err and "warning:" in err
    assert load_result(store.download_file(result, tmp_path / "r.json")).status == "ok"
    assert stored_epoch(store, ckpt, tmp_path / "c.pt") == EPOCHS
    assert store.download_file(ckpt, tmp_path / "c2.pt").read_bytes() == (tmp_path / "out" / "checkpoint.pt").read_bytes()


@pytest.mark.parametrize("when", ["resumed", "at-once"])
def test_a_second_attempt_takes_a_running_fold_over(when: str, s3_server: S3Server, mlflow_tracking: MlflowServer,
                                                    prepared: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`resumed`: a KFP retry while the first pod still trains; `at-once`: two attempts start together.

    Each attempt has its own out dir (another node) and shares the store and MLflow.
    """
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    grid, root = f"twins-{when}", "s3://intermix-data/twins"
    store, client = open_storage(root), MlflowClient(mlflow_tracking.url)
    tracker = Tracker(mlflow_tracking.url)
    first = start(prepared, tmp_path / "a", grid, root, s3_server, mlflow_tracking.url)
    procs = [first]
    try:
        if when == "resumed":
            def logged_two_epochs() -> bool:
                runs = tracker.fold_runs(grid, "esc10", "soundnet5", "standard", fold=1)
                return bool(runs) and len(client.get_metric_history(runs[0].info.run_id, "train_loss")) >= 2

            wait_for(lambda: store.exists(f"{grid}/{CELL}/checkpoint.pt") and logged_two_epochs(), first,
                     "a stored checkpoint and two logged epochs")
        second = start(prepared, tmp_path / "b", grid, root, s3_server, mlflow_tracking.url)
        procs.append(second)
        outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    winners = [err for code, err in outcomes if code == 0]
    losers = [err for code, err in outcomes if code != 0]
    assert len(winners) == 1 and len(losers) == 1, [err[-2000:] for _, err in outcomes]
    assert "FoldSuperseded" in losers[0] and "this attempt stops" in losers[0]
    assert ("was reopened by another attempt" if when == "resumed" else "was superseded by run") in losers[0]
    if when == "resumed":
        assert outcomes[1][0] == 0, "the retry, which reopened the run, is the attempt that goes on"

    runs = tracker.fold_runs(grid, "esc10", "soundnet5", "standard", fold=1)
    current = [r for r in runs if r.data.tags.get(SUPERSEDED) != "true"]
    assert len(current) == 1 and current[0].info.status == "FINISHED"
    assert len(runs) == (1 if when == "resumed" else 2)
    assert all(r.info.status == "KILLED" for r in runs if r.data.tags.get(SUPERSEDED) == "true")
    run_id = current[0].info.run_id
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), f"epochs duplicated or missing: {steps}"
    assert current[0].data.tags[ATTEMPT]
    parent = tracker.find_parent(grid, "esc10", "soundnet5", "standard")
    assert parent.data.metrics["n_folds"] == 1
    stored = load_result(store.download_file(f"{grid}/{CELL}/result.json", tmp_path / "r.json"))
    assert stored.status == "ok" and parent.data.metrics["test_error_mean"] == pytest.approx(stored.test_error)
    assert stored_epoch(store, f"{grid}/{CELL}/checkpoint.pt", tmp_path / "c.pt") == EPOCHS


class _Exploit:
    """A pickle whose loading runs a command: what a crafted checkpoint.pt in a bucket would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_in_the_bucket_runs_nothing(s3_server: S3Server, prepared: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Put into the bucket with plain boto3, a valid .sha256 marker beside it: `train --store` and `attack --store`
    refuse it in one line and its code never runs."""
    from intermix_core.method.train import CHECKPOINT_FORMAT
    from intermix_core.store.storage import SIDECAR, sha256_file
    from pipelines.cli import main

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    marker = tmp_path / "pwned"
    crafted = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": 3, "config": {}, "payload": _Exploit(marker)}, crafted)
    key = f"crafted/{CELL}/checkpoint.pt"
    s3 = s3_server.client()
    s3.upload_file(str(crafted), "intermix-data", key, ExtraArgs={"Metadata": {"sha256": sha256_file(crafted)}})
    s3.put_object(Bucket="intermix-data", Key=key + SIDECAR, Body=sha256_file(crafted).encode())
    common = ["--data", str(prepared), "--fold", "1", "--grid-id", "crafted", "--store", "s3://intermix-data"]

    train = ["train", "--config", str(_config_file(tmp_path)), "--out", str(tmp_path / "t"), *common]
    assert main(train) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"s3://intermix-data/{key}: " in line and "refused" in line

    trained = tmp_path / "trained"  # a finished fold's result.json, its checkpoint only in the store
    trained.mkdir()
    (trained / "result.json").write_text(json.dumps({
        "dataset": "esc10", "setup": "soundnet5", "model": "soundnet5", "strategy": "standard", "fold": 1,
        "seed": 3, "status": "ok", "test_error": 50.0, "config": CONFIG}))
    assert main(["attack", "--trained", str(trained), *common]) == 2
    assert "refused" in _error_line(capsys.readouterr().err)
    assert not marker.exists()


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(CONFIG))
    return path


def _error_line(err: str) -> str:
    """The one `intermix: error:` line, which must be the last thing printed (no traceback after it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("intermix: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-2000:]
    return errors[0]
