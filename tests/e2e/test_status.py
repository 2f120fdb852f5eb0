"""`intermix status`: every state of a fold, read from a real store and a real MLflow (sqlite, or a server + S3)."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from intermix_core.config.grid import expand, grid_id, load_grid
from intermix_core.records import CHECKPOINT, RESULT, EpochRecord, FoldResult, save_result
from intermix_core.run.status import FoldView, RunView, fold_state
from intermix_core.store.layout import cell_prefix
from intermix_core.store.storage import open_storage
from intermix_core.tracking.tracker import Tracker
from pipelines.cli import build_parser, main
from pipelines.commands import _load_grid, _rerun_cell

from kfp_api_double import kfp_api_double

GRID = load_grid("demo")
GID = grid_id(GRID)
CELLS = {c.key: c for c in expand(GRID)}


def _result(key: tuple, err: float | None, **kw: object) -> FoldResult:
    cfg = CELLS[key].config.resolved()
    history = [EpochRecord(epoch=e, lr=0.1, train_loss=2.0 / e, train_error=50.0, val_error=None)
               for e in range(1, cfg.optim.epochs + 1)]
    return FoldResult(dataset=key[0], setup=key[1], model="m18", strategy=key[2], fold=key[3], test_error=err,
                      status="ok" if err is not None else "failed", history=history if err is not None else [],
                      config=cfg.model_dump(mode="json"), **kw)


def _put(store_root: str, key: tuple, name: str, path: Path) -> None:
    open_storage(store_root).upload_file(path, f"{cell_prefix(GID, *key)}/{name}")


def make_grid_state(store_root: str, tracking_uri: str, tmp: Path) -> None:
    """The demo grid with a fold in each state: done x2 (one after a superseded attempt), running, failed, stopped,
    superseded, not started x2."""
    open_storage(store_root).upload_file(_spec(tmp), f"{GID}/grid.json")  # what `run` and `submit` leave there
    tracker = Tracker(tracking_uri)
    client = MlflowClient(tracking_uri)
    k = lambda strategy, fold: ("esc10", "m18", strategy, fold)  # noqa: E731
    # done: the demo's 18 epochs in 40 s of training at 40 samples/s -> 1,600 samples, 88.9 per epoch
    done = _result(k("standard", 1), 45.0, fgsm={"0.01": 70.0}, train_seconds=40.0, samples_per_second=40.0)
    save_result(done, tmp / "done.json")
    _put(store_root, k("standard", 1), RESULT, tmp / "done.json")
    run = tracker.start_fold(CELLS[k("standard", 1)].config, 1, GID)
    tracker.finish_fold(run, done)
    # running: epochs 1-3 logged 20 s apart, the last 20 s ago
    run = tracker.start_fold(CELLS[k("standard", 2)].config, 2, GID)
    now = int(time.time() * 1000)
    client.log_batch(run, metrics=[Metric("train_loss", 2.0 / e, now - (4 - e) * 20_000, e) for e in (1, 2, 3)])
    # failed: a failed result in the store and a FAILED run
    failed = _result(k("bc", 1), None, error="CUDA out of memory. Tried to allocate 2.00 GiB\nTraceback ...")
    save_result(failed, tmp / "failed.json")
    _put(store_root, k("bc", 1), RESULT, tmp / "failed.json")
    run = tracker.start_fold(CELLS[k("bc", 1)].config, 1, GID)
    tracker.finish_fold(run, failed)
    # stopped: a checkpoint, no result, nothing running
    (tmp / "ckpt").write_bytes(b"a checkpoint")
    _put(store_root, k("bc", 2), CHECKPOINT, tmp / "ckpt")
    # superseded: its only attempt was replaced by one that left nothing (deleted)
    first = tracker.start_fold(CELLS[k("speechmix", 1)].config, 1, GID)
    second = tracker.start_fold(CELLS[k("speechmix", 1)].config, 1, GID)
    client.delete_run(second)
    assert client.get_run(first).data.tags["intermix.superseded"] == "true"
    # done after a superseded attempt
    tracker.start_fold(CELLS[k("intermix", 1)].config, 1, GID)
    run = tracker.start_fold(CELLS[k("intermix", 1)].config, 1, GID)
    ok = _result(k("intermix", 1), 50.0, fgsm={"0.01": 72.0}, train_seconds=100.0, samples_per_second=32.0)
    tracker.finish_fold(run, ok)
    save_result(ok, tmp / "ok.json")
    _put(store_root, k("intermix", 1), RESULT, tmp / "ok.json")


EXPECTED = {
    "esc10/m18/standard/fold1": "done: 45.0 % error",
    "esc10/m18/standard/fold2": "running: epoch 3 of 18, last heartbeat",
    "esc10/m18/bc/fold1": "failed: CUDA out of memory. Tried to allocate 2.00 GiB",
    "esc10/m18/bc/fold2": "stopped: a checkpoint in the store",
    "esc10/m18/speechmix/fold1": "superseded",
    "esc10/m18/speechmix/fold2": "not started",
    "esc10/m18/intermix/fold1": "done: 50.0 % error (+1 superseded attempt)",
    "esc10/m18/intermix/fold2": "not started",
}


def check_status(argv: list[str], capsys: pytest.CaptureFixture, store_root: str) -> dict:
    """Run `intermix status` as text and as JSON; check every fold's state, the rates, the time left, the rerun line."""
    assert main(argv) == 0
    text = capsys.readouterr().out
    for label, state in EXPECTED.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(label + " "))
        assert state in line, (label, line)
    assert "4.4 samples/s" in text  # 1,600 samples over 18 epochs (the done sibling) / 20 s per epoch (the heartbeats)
    assert "2 done, 1 running, 1 failed, 1 stopped, 1 superseded, 2 not started" in text
    assert "time left: about" in text and "0.0" not in text.split("time left:")[1].splitlines()[0]
    rerun = next(line.strip() for line in text.splitlines() if line.strip().startswith("intermix rerun") and "bc --fold 1" in line)
    assert main(argv + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    states = {f["label"]: f["state"] for f in data["folds"]}
    assert states == {label: state.split(":")[0].split(" (")[0] for label, state in EXPECTED.items()}
    running = next(f for f in data["folds"] if f["state"] == "running")
    assert (running["epoch"], running["epochs"], running["seconds_per_epoch"]) == (3, 18, pytest.approx(20.0, abs=0.5))
    assert running["seconds_left"] == pytest.approx(15 * 20.0, abs=10)
    assert data["seconds_left"] > running["seconds_left"]  # the other unfinished folds at the measured rates
    # the printed rerun command is one the CLI takes, and it names the failed fold of this grid
    args = build_parser().parse_args(shlex.split(rerun)[1:])
    grid = _load_grid(args, store_root)
    assert grid_id(grid) == GID and _rerun_cell(args, grid).key == ("esc10", "m18", "bc", 1)
    return data


def test_status_on_the_embedded_default(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "intermix-work"
    store = str((work / "store").resolve())
    make_grid_state(store, f"sqlite:///{work / 'mlflow.db'}", tmp_path)
    check_status(["status"], capsys, store)
    # by grid id (read from the store), with the KFP run states of the grid's experiment
    with kfp_api_double() as api:
        assert main(["submit", "demo", "--host", api.url, "--store", "s3://x/y", "--skip-image-check"]) == 0
        api.set_state(f"{GID} esc10/m18", "RUNNING")
        capsys.readouterr()
        assert main(["status", GID, "--host", api.url]) == 0
        out = capsys.readouterr().out
    assert f"Kubeflow runs:\n  {GID} esc10/m18  RUNNING" in out


def _spec(tmp: Path) -> Path:
    path = tmp / "grid.json"
    path.write_text(json.dumps(GRID.model_dump(mode="json")))
    return path


def test_status_on_a_store_and_an_mlflow_server(tmp_path: Path, s3_server, mlflow_tracking, monkeypatch,
                                                capsys: pytest.CaptureFixture) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    root = f"s3://intermix-data/status-{tmp_path.name}"
    make_grid_state(root, mlflow_tracking.url, tmp_path)
    data = check_status(["status", "demo", "--store", root, "--tracking-uri", mlflow_tracking.url], capsys, root)
    assert data["tracking"].startswith("MLflow http://127.0.0.1")
    assert not (tmp_path / "intermix-work").exists()  # status reads, never writes


def test_status_says_when_mlflow_is_not_there_and_never_invents_a_rate(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = str(tmp_path / "store")
    open_storage(store).upload_file(_spec(tmp_path), f"{GID}/grid.json")  # what `run` leaves there first
    assert main(["status", "demo", "--workdir", str(tmp_path / "w"), "--store", store]) == 0
    out = capsys.readouterr().out
    assert "no MLflow store at sqlite:///" in out and "8 not started" in out
    assert "time left: unknown (no fold of these cells has a measured rate yet; 8 to train)" in out
    assert not (tmp_path / "w").exists()  # status reads; it creates nothing
    assert main(["status", "demo", "--store", store, "--tracking-uri", "http://127.0.0.1:9"]) == 0
    assert "MLflow at http://127.0.0.1:9 not readable (Connection refused): states from the store only" in \
        capsys.readouterr().out


def test_status_of_a_grid_that_never_ran_in_the_workdir_says_so(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["status", "demo", "--workdir", str(tmp_path / "w")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no list of 8 folds "not started"
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and f"grid {GID} has not run here: the work directory {tmp_path / 'w'}" in err[0], err
    assert "`intermix run demo` starts it, or give the --workdir" in err[0]
    assert not (tmp_path / "w").exists()  # status reads; it creates nothing


@pytest.mark.parametrize("view, state", [
    (FoldView(), "not started"),
    (FoldView(checkpoint=True), "stopped"),
    (FoldView(runs=[RunView("a", "KILLED", superseded=True)]), "superseded"),
    (FoldView(runs=[RunView("a", "RUNNING", superseded=False)], checkpoint=True), "running"),
    (FoldView(runs=[RunView("a", "FAILED", superseded=False, error="boom\nmore")]), "failed"),
])
def test_fold_state_table(view: FoldView, state: str) -> None:
    assert fold_state(view)[0] == state
