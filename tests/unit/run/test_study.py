"""The one-call study on CPU with a tiny budget: concurrent folds, a clean stop at the budget, resume, outputs."""

import json
from pathlib import Path

import pytest

from intermix_core.config.grid import grid_id, parse_grid
from intermix_core.data import prepare_dataset
from intermix_core.method.checkpoint import load_checkpoint
from intermix_core.run.study import EpochClock, estimate_seconds, run_study, worker_threads
from intermix_core.testing import demo_subset
from pipelines.cli import main

GRID = {
    "name": "tiny-study", "datasets": ["esc10"], "setups": ["piczak_cnn"], "strategies": ["standard", "bc"],
    "folds": [1, 2], "overrides": {"optim": {"epochs": 3, "batch_size": 8, "eval_every": 3},
                                   "attack": {"epsilons": [0.01]}, "num_crops": 2},
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    src = demo_subset(root / "src", per_class_per_fold=1, folds=(1, 2, 3), seconds=1.5)
    prepare_dataset(src, "esc10", root / "prepared", 22050, progress=False)
    return root / "prepared"


def test_estimate_brackets_perfect_and_no_sharing():
    assert estimate_seconds(6000, 100.0, 3) == (20.0, 60.0)


@pytest.mark.slow
def test_study_stops_at_its_budget_keeps_what_finished_and_resumes(prepared, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTERMIX_WORKER_THREADS", "1")
    grid = parse_grid(GRID)
    out = tmp_path / "study"
    first = run_study(grid, prepared, out, budget_seconds=0.5, concurrency=2, device="cpu", samples_per_s=50.0)
    printed = capsys.readouterr().out
    assert "estimate from 50 samples/s per process" in printed and "4 folds" in printed
    statuses = sorted(f.status for f in first.folds)
    assert statuses == ["not started", "not started", "stopped", "stopped"]  # two ran one epoch, two never started
    data = json.loads((out / "study.json").read_text())
    assert data["finished"] == 0 and data["concurrency"] == 2 and data["device"] == "cpu"
    assert all((out / f.label / "checkpoint.pt").is_file() for f in first.folds if f.status == "stopped")

    second = run_study(grid, prepared, out, budget_seconds=600, concurrency=2, device="cpu")
    assert second.finished == 4 and all(f.status == "finished" for f in second.folds)
    resumed = [f for f in second.folds if f.label in {g.label for g in first.folds if g.status == "stopped"}]
    assert resumed and all(f.epochs_done == 3 for f in resumed)
    table = (out / "reports" / "table1.md").read_text()
    assert "PiczakCNN" in table and "(2/2 folds" not in table  # every fold present
    assert (out / "reports" / "table3.csv").is_file()
    data = json.loads((out / "study.json").read_text())
    assert all(f["threads"] == 1 and f["warmup_seconds"] >= 0.0 for f in data["folds"] if f["seconds"] > 0)
    assert 0.0 <= data["warmup_seconds"]["median"] <= data["warmup_seconds"]["max"]
    assert "warm-up per worker" in capsys.readouterr().out


def test_worker_threads_one_per_gpu_worker_cores_shared_on_a_cpu(monkeypatch):
    monkeypatch.delenv("INTERMIX_WORKER_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert worker_threads("cuda", 6) == 1 and worker_threads("cuda:0", 1) == 1
    assert worker_threads("cpu", 4) == 4 and worker_threads("cpu", 32) == 1
    monkeypatch.setenv("INTERMIX_WORKER_THREADS", "3")
    assert worker_threads("cuda", 6) == 3


def test_epoch_clock_measures_the_warmup_beyond_a_typical_epoch():
    now = iter([100.0, 130.0, 131.0, 132.0, 133.5])  # start, then epochs end 30 s, then 1 s, 1 s, 1.5 s apart
    clock = EpochClock(lambda: next(now))
    assert clock.warmup_seconds() is None
    for _ in range(4):
        clock.log_epoch("study", None)
    assert clock.warmup_seconds() == 29.0  # 30 s to the first end, less the median epoch (1 s)


def test_study_refuses_a_grid_of_two_shards_and_bad_arguments(prepared, tmp_path, capsys):
    two = parse_grid({**GRID, "setups": ["piczak_cnn", "m18"]})
    with pytest.raises(ValueError, match="a study runs one dataset x setup"):
        run_study(two, prepared, tmp_path, budget_seconds=10, concurrency=1, device="cpu")
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(json.dumps({**GRID, "folds": [1, 2]}))
    assert main(["study", str(grid_file), "--data", str(prepared), "--concurrency", "0"]) == 2
    assert "--concurrency must be >= 1" in capsys.readouterr().err
    assert main(["study", str(grid_file), "--data", str(tmp_path / "none"), "--budget", "5"]) == 2
    assert "no finished preparation" in capsys.readouterr().err


def test_study_set_reaches_every_cell_and_study_json(prepared, tmp_path, capsys):
    """`intermix study GRID --set optim.KEY=VALUE` (what scripts/gpu_study.sh passes after tuning); a budget that
    has passed before any fold starts still writes study.json, with the options the cells were given."""
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(json.dumps(GRID))
    out = tmp_path / "study"
    assert main(["study", str(grid_file), "--data", str(prepared), "--out", str(out), "--budget", "0.001",
                 "--device", "cpu", "--set", "optim.cudnn_benchmark=true", "--set", "optim.channels_last=yes"]) == 1
    printed = capsys.readouterr().out
    assert "speed options: precision fp32, channels_last True, compile False, cudnn_benchmark True" in printed
    data = json.loads((out / "study.json").read_text())
    assert data["speed_options"] == {"precision": "fp32", "channels_last": True, "compile": False,
                                     "cudnn_benchmark": True}
    # the budget has passed before any fold could start, unless the clock is coarser than a millisecond: then a
    # fold trains one epoch and stops, with the options in its checkpoint
    assert data["finished"] == 0 and {f["status"] for f in data["folds"]} <= {"not started", "stopped"}
    for f in data["folds"]:
        if f["status"] == "stopped":
            optim = load_checkpoint(out / f["label"] / "checkpoint.pt")["config"]["optim"]
            assert optim["cudnn_benchmark"] is True and optim["channels_last"] is True
    assert data["grid_id"] != grid_id(parse_grid(GRID))
    assert main(["study", str(grid_file), "--data", str(prepared), "--set", "optim.cudnn_benchmark"]) == 2
    assert "--set 'optim.cudnn_benchmark': expected KEY=VALUE" in capsys.readouterr().err
    assert main(["study", str(grid_file), "--data", str(prepared), "--set", "optim.cudnn=true"]) == 2
    assert "optim.cudnn: unknown key" in capsys.readouterr().err


@pytest.mark.slow
def test_study_trains_packs_of_a_cells_folds(prepared, tmp_path, monkeypatch, capsys):
    """`pack=2`: one worker per cell trains its two folds as one pack, then each fold's FGSM; every fold finishes in
    its own folder, and study.json says the pack size."""
    monkeypatch.setenv("INTERMIX_WORKER_THREADS", "1")
    out = tmp_path / "study"
    report = run_study(parse_grid(GRID), prepared, out, budget_seconds=600, concurrency=2, device="cpu", pack=2)
    printed = capsys.readouterr().out
    assert "2 packs of up to 2 folds at a time" in printed
    assert printed.count("  started esc10/piczak_cnn/") == 2 and "fold1, esc10/piczak_cnn/" in printed
    assert report.finished == 4 and all(f.status == "finished" and f.epochs_done == 3 for f in report.folds)
    assert json.loads((out / "study.json").read_text())["pack"] == 2
    for f in report.folds:
        result = json.loads((out / f.label / "result.json").read_text())
        assert result["fgsm"] and f.label.endswith(f"fold{result['fold']}")
