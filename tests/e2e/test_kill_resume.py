"""A fold whose process is killed and whose node is lost resumes from its S3 checkpoint.

Real parts only: the training runs as a separate process (`intermix_core.steps.train_step`) against
SeaweedFS (checkpoints) and an MLflow server; the process gets SIGKILL mid-training and its local
folder is deleted (a lost node). The restarted fold must end with the result of an uninterrupted
run with the same seed, in the same MLflow run, with every epoch's metrics logged exactly once.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from intermix_core.data import demo_data_dir, prepare_dataset
from intermix_core.records import FoldResult
from intermix_core.store.storage import open_storage

CHILD = (
    "import sys; from intermix_core.run.steps import train_step; "
    "train_step(sys.argv[1], sys.argv[2], 1, sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sync_seconds=0.3)"
)
EPOCHS = 4
CONFIG = {
    "dataset": "esc10", "model": "soundnet5", "strategy": "intermix", "seed": 1, "input_length": 60000,
    "num_crops": 3, "optim": {"epochs": EPOCHS, "batch_size": 16, "eval_every": 2, "checkpoint_every": 1},
}
STORE = "s3://intermix-data/kill-resume"
pytestmark = pytest.mark.slow  # subprocess training against real servers


def fold_runs(client: MlflowClient, grid_id: str) -> list:
    """The MLflow fold runs of one grid id."""
    exp = client.get_experiment_by_name("intermix")
    if exp is None:
        return []
    return client.search_runs(
        [exp.experiment_id], f"tags.`intermix.grid_id` = '{grid_id}' and tags.`intermix.kind` = 'fold'"
    )


# checkpoints by epoch, or by wall time (the default cadence, made short enough to fall within this tiny fold)
CADENCES = {"epochs": {"checkpoint_every": 1}, "seconds": {"checkpoint_every_s": 0.5}}


@pytest.mark.parametrize("cadence", list(CADENCES))
def test_killed_fold_resumes_from_the_store(cadence: str, tmp_path: Path, s3_server, mlflow_tracking, monkeypatch):
    data = tmp_path / "prepared"
    prepare_dataset(demo_data_dir(), "esc10", data, 22050, progress=False)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    client = MlflowClient(mlflow_tracking.url)

    optim = {k: v for k, v in CONFIG["optim"].items() if k != "checkpoint_every"} | CADENCES[cadence]
    config = json.dumps({**CONFIG, "optim": optim})

    def start(grid_id: str, out: Path) -> subprocess.Popen:
        argv = [sys.executable, "-c", CHILD, config, str(data), str(out), f"{grid_id}-{cadence}", mlflow_tracking.url,
                STORE]
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    whole = start("uninterrupted", tmp_path / "a")
    assert whole.wait(timeout=600) == 0, whole.stderr.read()

    store = open_storage(STORE)
    ckpt = f"killed-{cadence}/esc10/soundnet5/intermix/fold1/checkpoint.pt"
    victim = start("killed", tmp_path / "b")
    deadline = time.monotonic() + 600
    while True:  # wait until two epochs are logged and a checkpoint has reached the store
        runs = fold_runs(client, f"killed-{cadence}")
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train_loss")) >= 2 and store.exists(ckpt):
            break
        assert victim.poll() is None and time.monotonic() < deadline, "training ended before it could be killed"
        time.sleep(0.2)
    victim.kill()
    victim.wait()
    subprocess.run(["rm", "-rf", str(tmp_path / "b")], check=True)  # the node and its disk are gone

    assert not store.exists(f"killed-{cadence}/esc10/soundnet5/intermix/fold1/result.json")
    again = start("killed", tmp_path / "b-elsewhere")
    assert again.wait(timeout=600) == 0, again.stderr.read()

    def stored(grid_id: str) -> FoldResult:
        key = f"{grid_id}-{cadence}/esc10/soundnet5/intermix/fold1/result.json"
        path = store.download_file(key, tmp_path / f"{grid_id}.json")
        return FoldResult.model_validate_json(path.read_text())

    a, b = stored("uninterrupted"), stored("killed")
    assert [h.model_dump() for h in b.history] == [h.model_dump() for h in a.history]
    assert b.test_error == a.test_error and b.confusion == a.confusion

    runs = fold_runs(client, f"killed-{cadence}")
    assert len(runs) == 1, "the resumed fold must continue its MLflow run, not open another"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), f"epoch metrics duplicated or missing: {steps}"
    assert runs[0].data.metrics["test_error"] == pytest.approx(a.test_error)


def test_a_checkpoint_whose_upload_did_not_finish_is_not_resumed_from(tmp_path: Path, capfd):
    """Killed between a checkpoint's upload and its checksum marker's: the fold starts again, same result."""
    from intermix_core.run.steps import train_step

    data = tmp_path / "prepared"
    prepare_dataset(demo_data_dir(), "esc10", data, 22050, progress=False)
    cfg = json.dumps({**CONFIG, "optim": {**CONFIG["optim"], "epochs": 1}})
    root = tmp_path / "store"
    first = train_step(cfg, data, 1, tmp_path / "a", "g", None, str(root))
    prefix = "g/esc10/soundnet5/intermix/fold1"
    (root / prefix / "result.json").unlink()
    with open(root / prefix / "checkpoint.pt", "ab") as f:  # new bytes, old marker
        f.write(b"a newer checkpoint, half written")
    again = train_step(cfg, data, 1, tmp_path / "b", "g", None, str(root))
    assert "stored checkpoint unusable" in capfd.readouterr().err
    assert again.history == first.history and again.test_error == first.test_error
